package limiter

// The queue of guesses waiting for a place in a key's budget: many correct
// logins at once from one address (an office behind NAT, a backup job, an
// FTP client's parallel sessions) wait for an attempt in flight to settle
// instead of being refused (docs/design.md rule 3). The limiter never
// sleeps: it keeps the queue and signals it; the caller waits.

import (
	"net/netip"
	"time"
)

// DefaultMaxLoginWaiters is the default of Config.MaxLoginWaiters.
const DefaultMaxLoginWaiters = 32

// waiter is one guess in the FIFO queue of its key. Its fields other than
// ch are guarded by Limiter.wmu.
type waiter struct {
	ch         chan struct{} // capacity 1: "try again"; never closed
	q          *waitQueue    // the queue it is in; nil once it left
	prev, next *waiter
}

// waitQueue is the FIFO queue of the guesses of one key waiting for a place.
type waitQueue struct {
	key        netip.Prefix
	head, tail *waiter
	n          int
}

// signal asks w to try again; a signal already pending is enough.
func (w *waiter) signal() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// Retry begins again a guess whose Verdict was Busy with a place in its
// key's queue (Verdict.Wait not nil), once that channel has fired or a
// while has passed: a is settled (it held nothing) and the new Attempt
// keeps a's place in the queue. Only the head of a queue is asked to the
// budget: the others get Busy again, at their place. A guess that is
// allowed, refused for another reason (a ban, its username) or settled
// leaves the queue, and the next one is signalled. The new Attempt must be
// settled like any other; settling a waiting one (OutcomeRelease) gives up
// its place in the queue. now should be the current time.
func (a *Attempt) Retry(now time.Time) (*Attempt, Verdict) {
	w := a.w
	a.w = nil // not to leave the queue: the new attempt keeps the place
	a.Settle(now, OutcomeRelease)
	return a.l.begin(now, a.addr, a.user, a.u, w)
}

// StopWaiting gives up a's place in the queue of its key, if it holds one,
// without settling a: for a Busy guess that is forwarded all the same
// (observe mode). Settle does it too.
func (a *Attempt) StopWaiting() { a.leaveWait() }

// leaveWait takes a's waiter, if any, out of its queue.
func (a *Attempt) leaveWait() {
	if a.w != nil {
		a.l.leave(a.w)
		a.w = nil
	}
}

// waitReq is what a Busy verdict does with the queue: for Begin and Retry,
// w is the guess's waiter (nil: none yet) and got the waiter the verdict
// left queued (nil: the queue is full). Attempt passes none: it never
// queues.
type waitReq struct {
	w   *waiter
	got *waiter
}

// aheadLocked reports whether the queue of key holds a guess ahead of
// wr's (every queued guess is ahead of a new one); if so, wr's guess is
// queued (busyLocked). Called with l.mu held.
func (l *Limiter) aheadLocked(s *settings, key netip.Prefix, wr *waitReq) bool {
	if wr == nil || l.nwait.Load() == 0 {
		return false
	}
	l.wmu.Lock()
	q := l.waiters[keyOf(key)]
	ahead := q != nil && q.head != nil && q.head != wr.w
	if ahead {
		wr.got = l.queueWLocked(s, key, wr.w)
	}
	l.wmu.Unlock()
	return ahead
}

// busyLocked queues wr's guess at the end of the queue of key (or keeps
// its place there) after a Busy verdict. Called with l.mu held, so that a
// settle of the local budget, which also takes l.mu, cannot come between
// the verdict and the queueing unseen.
func (l *Limiter) busyLocked(s *settings, key netip.Prefix, wr *waitReq) {
	if wr == nil {
		return
	}
	l.wmu.Lock()
	wr.got = l.queueWLocked(s, key, wr.w)
	l.wmu.Unlock()
}

// queueWLocked puts w (nil: a new waiter) at the end of the queue of key,
// unless it is in that queue already, and returns it; nil if the queue is
// full (MaxLoginWaiters). A waiter queued under another key (the prefixes
// were reloaded) moves. Called with l.wmu held.
func (l *Limiter) queueWLocked(s *settings, key netip.Prefix, w *waiter) *waiter {
	if w != nil && w.q != nil {
		if w.q.key == key {
			return w
		}
		l.leaveWLocked(w)
	}
	k := keyOf(key)
	q := l.waiters[k]
	if q != nil && q.n >= s.MaxLoginWaiters {
		return nil
	}
	if q == nil {
		if l.waiters == nil {
			l.waiters = make(map[bkey]*waitQueue)
		}
		q = &waitQueue{key: key}
		l.waiters[k] = q
	}
	if w == nil {
		w = &waiter{ch: make(chan struct{}, 1)}
	}
	w.q, w.prev, w.next = q, q.tail, nil
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n++
	l.nwait.Add(1)
	return w
}

// leave takes w out of its queue, if it is in one; if it was the head,
// the next one is signalled.
func (l *Limiter) leave(w *waiter) {
	l.wmu.Lock()
	l.leaveWLocked(w)
	l.wmu.Unlock()
}

func (l *Limiter) leaveWLocked(w *waiter) {
	q := w.q
	if q == nil {
		return
	}
	wasHead := q.head == w
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.q, w.prev, w.next = nil, nil, nil
	q.n--
	l.nwait.Add(-1)
	if q.n == 0 {
		delete(l.waiters, keyOf(q.key))
	} else if wasHead {
		q.head.signal()
	}
}

// signalHead signals the first guess waiting for a place of key: an
// attempt of key settled.
func (l *Limiter) signalHead(key netip.Prefix) {
	if l.nwait.Load() == 0 {
		return
	}
	l.wmu.Lock()
	if q := l.waiters[keyOf(key)]; q != nil && q.head != nil {
		q.head.signal()
	}
	l.wmu.Unlock()
}

// wakeOverlapping signals every guess waiting for a place of a key that
// overlaps p (the invalid Prefix: every key): a ban of p, a budget
// forgotten, a reload. Those that find a ban leave the queue; the head
// finds a place or stays.
func (l *Limiter) wakeOverlapping(p netip.Prefix) {
	if l.nwait.Load() == 0 {
		return
	}
	l.wmu.Lock()
	for _, q := range l.waiters {
		if p.IsValid() && !q.key.Overlaps(p) {
			continue
		}
		for w := q.head; w != nil; w = w.next {
			w.signal()
		}
	}
	l.wmu.Unlock()
}

// wakeKeyLocked signals every guess waiting for a place of k, whose
// budget is being forgotten (evicted). Called with l.mu held.
func (l *Limiter) wakeKeyLocked(k bkey) {
	if l.nwait.Load() == 0 {
		return
	}
	l.wmu.Lock()
	if q := l.waiters[k]; q != nil {
		for w := q.head; w != nil; w = w.next {
			w.signal()
		}
	}
	l.wmu.Unlock()
}

// waiting is the number of guesses queued for a place, for tests.
func (l *Limiter) waiting() (guesses, keys int) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	for _, q := range l.waiters {
		guesses += q.n
	}
	return guesses, len(l.waiters)
}
