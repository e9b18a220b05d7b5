package limiter

import (
	"math"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// bkey is the compact map key of a prefix: 18 bytes and no pointers (a
// netip.Prefix is 32 bytes and holds a pointer), which keeps the tables small
// and their hashing cheap.
type bkey struct {
	addr [16]byte // Addr().As16(); IPv4 as ::ffff:a.b.c.d
	bits uint8
	is4  bool
}

func keyOf(p netip.Prefix) bkey {
	a := p.Addr()
	return bkey{addr: a.As16(), bits: uint8(p.Bits()), is4: a.Is4()}
}

// tokenSlack absorbs float rounding: after Window/Failures the bucket holds
// 0.9999999999 rather than 1 token for many settings. A millionth of a token
// is 120µs at the default rate.
const tokenSlack = 1e-6

// whole is the number of whole tokens in a bucket holding t tokens.
func whole(t float64) int {
	return int(math.Floor(t + tokenSlack))
}

// bucket is the budget state of one key: 112 bytes, most of it the
// rate.Limiter (whose own mutex is uncontended: every call is under l.mu).
type bucket struct {
	lim        rate.Limiter
	key        bkey
	pending    int32 // attempts in flight: let through by Attempt, not yet settled
	prev, next int32 // LRU links (slot numbers), or nilSlot
}

// reset gives b a full budget under s.
func (b *bucket) reset(s *settings) {
	b.lim = *rate.NewLimiter(s.limit, s.Failures)
}

// adapt applies the limits of s (after a Reload) to b, keeping its tokens
// (capped at the new burst).
func (b *bucket) adapt(s *settings, now time.Time) {
	if b.lim.Limit() != s.limit {
		b.lim.SetLimitAt(now, s.limit)
	}
	if b.lim.Burst() != s.Failures {
		b.lim.SetBurstAt(now, s.Failures)
	}
}

const (
	pageBits = 9
	pageSize = 1 << pageBits
	nilSlot  = -1
)

// budgets is a table of buckets bounded by the caller: an index from key to
// slot, slots in fixed-size pages (never moved, so *bucket stays valid and
// growth copies nothing), an intrusive doubly linked LRU list through the
// slots, and a free list of released slots. Not safe for concurrent use.
type budgets struct {
	pages      [][]bucket
	index      map[bkey]int32
	used       int32 // slots ever handed out; slots ≥ used are fresh
	free       int32 // head of the free list (linked by next), or nilSlot
	head, tail int32 // most and least recently used, or nilSlot
}

func newBudgets() budgets {
	return budgets{index: make(map[bkey]int32), free: nilSlot, head: nilSlot, tail: nilSlot}
}

func (t *budgets) at(i int32) *bucket { return &t.pages[i>>pageBits][i&(pageSize-1)] }

func (t *budgets) len() int { return len(t.index) }

// get returns the bucket of k and marks it most recently used, or nil.
func (t *budgets) get(k bkey) *bucket {
	i, ok := t.index[k]
	if !ok {
		return nil
	}
	t.touch(i)
	return t.at(i)
}

// add inserts a bucket for k (which must not be present) as the most
// recently used and returns it; its rate.Limiter is left for the caller to set.
func (t *budgets) add(k bkey) *bucket {
	i := t.free
	if i != nilSlot {
		t.free = t.at(i).next
	} else {
		if int(t.used) == len(t.pages)*pageSize {
			t.pages = append(t.pages, make([]bucket, pageSize))
		}
		i = t.used
		t.used++
	}
	b := t.at(i)
	b.key, b.pending = k, 0
	t.index[k] = i
	t.pushFront(i)
	return b
}

// remove drops the bucket of k, if any.
func (t *budgets) remove(k bkey) {
	i, ok := t.index[k]
	if !ok {
		return
	}
	delete(t.index, k)
	t.unlink(i)
	b := t.at(i)
	b.lim = rate.Limiter{} // nothing stale survives into the slot's next key
	b.pending = 0
	b.next = t.free
	t.free = i
}

// oldest returns the least recently used bucket, or nil.
func (t *budgets) oldest() *bucket {
	if t.tail == nilSlot {
		return nil
	}
	return t.at(t.tail)
}

func (t *budgets) touch(i int32) {
	if t.head != i {
		t.unlink(i)
		t.pushFront(i)
	}
}

func (t *budgets) pushFront(i int32) {
	b := t.at(i)
	b.prev, b.next = nilSlot, t.head
	if t.head != nilSlot {
		t.at(t.head).prev = i
	}
	t.head = i
	if t.tail == nilSlot {
		t.tail = i
	}
}

func (t *budgets) unlink(i int32) {
	b := t.at(i)
	if b.prev != nilSlot {
		t.at(b.prev).next = b.next
	} else {
		t.head = b.next
	}
	if b.next != nilSlot {
		t.at(b.next).prev = b.prev
	} else {
		t.tail = b.prev
	}
	b.prev, b.next = nilSlot, nilSlot
}
