package limiter

import (
	"container/heap"
	"net/netip"
	"time"
)

// Reasons a Ban is made for. BanKey accepts any other reason too.
const (
	ReasonBudget = "budget" // the key's budget of failures ran out
	ReasonAdmin  = "admin"  // BanKey with an empty reason
)

// Ban is one ban of a key. The zero Ban means "no ban".
type Ban struct {
	Key    netip.Prefix // the banned network: a key, or a wider/narrower prefix from BanKey
	Until  time.Time    // the ban applies while now < Until
	Count  int          // how many times Key has been banned so far, this ban included
	Reason string       // ReasonBudget, ReasonAdmin, or what BanKey was given

	// Since is when the ban was made.
	Since time.Time
	// Forget is when Count stops counting for escalation (Until plus the
	// MaxBanTime in force when the ban was made). Stores keep a ban until then.
	Forget time.Time
}

// Active reports whether b is in force at now.
func (b Ban) Active(now time.Time) bool { return b.Key.IsValid() && now.Before(b.Until) }

// forget is b.Forget, or Until for a Ban that has no Forget.
func (b Ban) forget() time.Time {
	if b.Forget.IsZero() {
		return b.Until
	}
	return b.Forget
}

// banRec is the limiter's record of a key's latest ban. It is kept after the
// ban ends (active false) until Forget, so the next ban escalates.
type banRec struct {
	ban    Ban
	key    bkey
	active bool      // not yet found expired (the ban may still be past Until)
	due    time.Time // when the sweep must look at it: Until while active, then Forget
	idx    int       // position in the heap
	seq    uint64    // version, so that store writes made out of order are not lost
	synced bool      // this version is known to be in the store (saved or loaded)
	// toldUnsaved: the hook was told this version is Unsaved; it is told
	// again (Saved) once written.
	toldUnsaved bool
}

// banHeap orders records by due; container/heap drives it.
type banHeap []*banRec

func (h banHeap) Len() int           { return len(h) }
func (h banHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h banHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *banHeap) Push(x any) {
	r := x.(*banRec)
	r.idx = len(*h)
	*h = append(*h, r)
}
func (h *banHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	r.idx = -1
	return r
}

// banTable holds ban records by key, a min-heap of them by due (so that
// expiring and forgetting cost O(log n) each and never a scan), and the set
// of prefix lengths in use per family (so that a lookup tries each length
// once: usually one, more after BanKey of other lengths or a Reload that
// changed the key prefixes). Not safe for concurrent use.
type banTable struct {
	recs   map[bkey]*banRec
	heap   banHeap
	active int
	nbits  [2][129]int32 // records per family (0: IPv4, 1: IPv6) and prefix length
	bits   [2][]uint8    // prefix lengths with nbits > 0, per family
}

func newBanTable() banTable {
	return banTable{recs: make(map[bkey]*banRec)}
}

func family(is4 bool) int {
	if is4 {
		return 0
	}
	return 1
}

func (t *banTable) len() int { return len(t.recs) }

// insert adds r, which must hold a valid ban of a key not present.
func (t *banTable) insert(r *banRec) {
	t.recs[r.key] = r
	heap.Push(&t.heap, r)
	if r.active {
		t.active++
	}
	f, b := family(r.key.is4), r.key.bits
	if t.nbits[f][b]++; t.nbits[f][b] == 1 {
		t.bits[f] = append(t.bits[f], b)
	}
}

// remove drops r.
func (t *banTable) remove(r *banRec) {
	delete(t.recs, r.key)
	heap.Remove(&t.heap, r.idx)
	if r.active {
		t.active--
	}
	f, b := family(r.key.is4), r.key.bits
	if t.nbits[f][b]--; t.nbits[f][b] == 0 {
		list := t.bits[f]
		for i, x := range list {
			if x == b {
				list[i] = list[len(list)-1]
				t.bits[f] = list[:len(list)-1]
				break
			}
		}
	}
}

// activate makes r's ban (already in r.ban) the key's active one.
func (t *banTable) activate(r *banRec) {
	if !r.active {
		r.active = true
		t.active++
	}
	r.due = r.ban.Until
	heap.Fix(&t.heap, r.idx)
}

// expire marks r's ban as over; r stays until its Forget time.
func (t *banTable) expire(r *banRec) {
	if r.active {
		r.active = false
		t.active--
	}
	r.due = r.ban.forget()
	heap.Fix(&t.heap, r.idx)
}

// find returns the ban in force at now that covers the normalised address a
// (the one that lasts longest if several do), and whether some record
// covering a is still marked active although its ban is over (for the caller
// to expire). It does not modify t, so it may run under a read lock.
func (t *banTable) find(now time.Time, a netip.Addr) (best *banRec, stale bool) {
	for _, bits := range t.bits[family(a.Is4())] {
		p, _ := a.Prefix(int(bits))
		r := t.recs[keyOf(p)]
		if r == nil || !r.active {
			continue
		}
		if !now.Before(r.ban.Until) {
			stale = true
			continue
		}
		if best == nil || r.ban.Until.After(best.ban.Until) {
			best = r
		}
	}
	return best, stale
}

// expireCovering expires the records covering a whose ban is over at now.
func (t *banTable) expireCovering(now time.Time, a netip.Addr) {
	for _, bits := range t.bits[family(a.Is4())] {
		p, _ := a.Prefix(int(bits))
		if r := t.recs[keyOf(p)]; r != nil && r.active && !now.Before(r.ban.Until) {
			t.expire(r)
		}
	}
}

// sweep expires bans that are over and forgets records past Forget, at most
// n of them (n < 0: all). Each record is looked at twice in its life, so
// the sweep costs O(log n) per ban, amortised, and n bounds the latency of
// one call.
func (t *banTable) sweep(now time.Time, n int) {
	for ; n != 0 && len(t.heap) > 0 && !now.Before(t.heap[0].due); n-- {
		r := t.heap[0]
		if r.active {
			t.expire(r)
		} else {
			t.remove(r)
		}
	}
}

// soonest returns the record due first (the one to evict when full), or nil.
func (t *banTable) soonest() *banRec {
	if len(t.heap) == 0 {
		return nil
	}
	return t.heap[0]
}
