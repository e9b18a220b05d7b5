package limiter

import (
	"hash/maphash"
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

// budgets is a table of buckets for at most max keys (the caller evicts).
// Buckets live in fixed-size pages (never moved, so a *bucket stays valid and
// growth copies nothing) and are numbered by slot. An open-addressing index
// (linear probing, at most half full, keyed by a seeded hash/maphash so that
// addresses cannot be chosen to collide) maps keys to slots in 4 bytes per
// entry, where a Go map would take ~50 bytes per key at a million. An
// intrusive doubly linked list through the slots orders them by use, and
// released slots form a free list. Not safe for concurrent use.
type budgets struct {
	pages      [][]bucket
	index      []int32 // slot+1, or 0 for empty; len(index) is a power of 2
	seed       maphash.Seed
	n          int   // buckets in use
	used       int32 // slots ever handed out; slots ≥ used are fresh
	free       int32 // head of the free list (linked by next), or nilSlot
	head, tail int32 // most and least recently used, or nilSlot
}

func newBudgets(max int) budgets {
	return budgets{index: make([]int32, indexSize(max)), seed: maphash.MakeSeed(), free: nilSlot, head: nilSlot, tail: nilSlot}
}

// indexSize is the index length for max keys: a power of 2 at least 2×max.
// The fresh zero pages of a large index cost no memory until used.
func indexSize(max int) int {
	n := 8
	for n < 2*max {
		n <<= 1
	}
	return n
}

func (t *budgets) at(i int32) *bucket { return &t.pages[i>>pageBits][i&(pageSize-1)] }

func (t *budgets) len() int { return t.n }

func (t *budgets) home(k bkey) int {
	return int(maphash.Comparable(t.seed, k) & uint64(len(t.index)-1))
}

// lookup returns the index position of k and its slot, or the empty
// position where k would go and nilSlot. The index is never full, so the
// probe ends.
func (t *budgets) lookup(k bkey) (pos int, slot int32) {
	mask := len(t.index) - 1
	for p := t.home(k); ; p = (p + 1) & mask {
		s := t.index[p]
		if s == 0 {
			return p, nilSlot
		}
		if t.at(s-1).key == k {
			return p, s - 1
		}
	}
}

// get returns the bucket of k and marks it most recently used, or nil.
func (t *budgets) get(k bkey) *bucket {
	_, i := t.lookup(k)
	if i == nilSlot {
		return nil
	}
	t.touch(i)
	return t.at(i)
}

// add inserts a bucket for k (which must not be present) as the most
// recently used and returns it; its rate.Limiter is left for the caller to
// set. The caller keeps the table within the max it was sized for.
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
	p, _ := t.lookup(k)
	t.index[p] = i + 1
	t.n++
	t.pushFront(i)
	return b
}

// remove drops the bucket of k, if any.
func (t *budgets) remove(k bkey) {
	p, i := t.lookup(k)
	if i == nilSlot {
		return
	}
	t.deleteAt(p)
	t.n--
	t.unlink(i)
	b := t.at(i)
	b.lim = rate.Limiter{} // nothing stale survives into the slot's next key
	b.pending = 0
	b.next = t.free
	t.free = i
}

// deleteAt empties index position p and shifts later entries of its probe
// run back (no tombstones, so lookups stay short).
func (t *budgets) deleteAt(p int) {
	mask := len(t.index) - 1
	t.index[p] = 0
	for q := (p + 1) & mask; t.index[q] != 0; q = (q + 1) & mask {
		h := t.home(t.at(t.index[q] - 1).key)
		// The entry at q may move to p unless its home lies cyclically in (p, q].
		if p <= q && (h <= p || h > q) || p > q && h <= p && h > q {
			t.index[p], t.index[q] = t.index[q], 0
			p = q
		}
	}
}

// grow resizes the index for up to max keys, if it is too small.
func (t *budgets) grow(max int) {
	n := indexSize(max)
	if n <= len(t.index) {
		return
	}
	t.index = make([]int32, n)
	for i := t.head; i != nilSlot; i = t.at(i).next {
		p, _ := t.lookup(t.at(i).key)
		t.index[p] = i + 1
	}
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
