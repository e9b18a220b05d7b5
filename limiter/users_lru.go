package limiter

// The tables of Users: an LRU map, and the helpers on the entries they hold.

import (
	"time"

	"golang.org/x/time/rate"
)

// uadapt applies the limits of s (after a Reload) to lim, keeping its tokens
// (capped at the new burst).
func uadapt(lim *rate.Limiter, s *userSettings, now time.Time) {
	if lim.Limit() != s.limit {
		lim.SetLimitAt(now, s.limit)
	}
	if lim.Burst() != s.Failures {
		lim.SetBurstAt(now, s.Failures)
	}
}

// oldestSeen returns the index of the name tried longest ago in seen.
func oldestSeen(seen []useen) int {
	j := 0
	for i := range seen {
		if seen[i].at < seen[j].at {
			j = i
		}
	}
	return j
}

// countSince counts the names of seen tried after cutoff.
func countSince(seen []useen, cutoff int64) int {
	n := 0
	for _, x := range seen {
		if x.at > cutoff {
			n++
		}
	}
	return n
}

// ulru is a map whose entries are also kept in a doubly linked list by use,
// most recent first. The entry last removed is kept for the next add, so a
// full table that evicts one entry per add does not allocate. Not safe for
// concurrent use.
type ulru[K comparable, V any] struct {
	m     map[K]*uentry[K, V]
	root  uentry[K, V] // sentinel: root.next is the most recently used, root.prev the least
	spare *uentry[K, V]
}

type uentry[K comparable, V any] struct {
	key        K
	val        V
	prev, next *uentry[K, V]
}

func (l *ulru[K, V]) init() {
	l.m = make(map[K]*uentry[K, V])
	l.root.prev, l.root.next = &l.root, &l.root
}

func (l *ulru[K, V]) len() int { return len(l.m) }

// get returns the entry of k, or nil. It does not mark it used.
func (l *ulru[K, V]) get(k K) *uentry[K, V] { return l.m[k] }

// oldest returns the least recently used entry, or nil.
func (l *ulru[K, V]) oldest() *uentry[K, V] {
	if l.root.prev == &l.root {
		return nil
	}
	return l.root.prev
}

// add inserts k (which must not be present) as the most recently used and
// returns its entry. The entry's val may hold a removed entry's value: the
// caller sets it.
func (l *ulru[K, V]) add(k K) *uentry[K, V] {
	e := l.spare
	if e != nil {
		l.spare = nil
	} else {
		e = new(uentry[K, V])
	}
	e.key = k
	l.m[k] = e
	l.pushFront(e)
	return e
}

// remove drops e, which must be in l.
func (l *ulru[K, V]) remove(e *uentry[K, V]) {
	delete(l.m, e.key)
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	l.spare = e
}

// touch marks e the most recently used.
func (l *ulru[K, V]) touch(e *uentry[K, V]) {
	if l.root.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	l.pushFront(e)
}

func (l *ulru[K, V]) pushFront(e *uentry[K, V]) {
	e.prev, e.next = &l.root, l.root.next
	l.root.next.prev = e
	l.root.next = e
}
