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
	idx    int       // position in its heap (banTable.live or banTable.ended)
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

// banTable holds ban records by key, in two min-heaps by due — live, the
// records marked active, by Until; ended, the ended bans kept for
// escalation, by Forget — so that expiring, forgetting and evicting cost
// O(log n) each and never a scan, and so that a full table gives up an
// ended record before a ban in force (docs/operating.md, "The ban table is
// full"). It also keeps the set of prefix lengths in use per family (so
// that a lookup tries each length once: usually one, more after BanKey of
// other lengths or a Reload that changed the key prefixes). Not safe for
// concurrent use.
type banTable struct {
	recs  map[bkey]*banRec
	live  banHeap       // active records, by Until
	ended banHeap       // ended records, by Forget
	nbits [2][129]int32 // records per family (0: IPv4, 1: IPv6) and prefix length
	bits  [2][]uint8    // prefix lengths with nbits > 0, per family
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

// nactive is the number of records marked active.
func (t *banTable) nactive() int { return len(t.live) }

// heapOf returns the heap r belongs in.
func (t *banTable) heapOf(r *banRec) *banHeap {
	if r.active {
		return &t.live
	}
	return &t.ended
}

// insert adds r, which must hold a valid ban of a key not present.
func (t *banTable) insert(r *banRec) {
	t.recs[r.key] = r
	heap.Push(t.heapOf(r), r)
	f, b := family(r.key.is4), r.key.bits
	if t.nbits[f][b]++; t.nbits[f][b] == 1 {
		t.bits[f] = append(t.bits[f], b)
	}
}

// remove drops r.
func (t *banTable) remove(r *banRec) {
	delete(t.recs, r.key)
	heap.Remove(t.heapOf(r), r.idx)
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
	r.due = r.ban.Until
	if r.active {
		heap.Fix(&t.live, r.idx)
		return
	}
	heap.Remove(&t.ended, r.idx)
	r.active = true
	heap.Push(&t.live, r)
}

// expire marks r's ban as over; r stays until its Forget time.
func (t *banTable) expire(r *banRec) {
	r.due = r.ban.forget()
	if !r.active {
		heap.Fix(&t.ended, r.idx)
		return
	}
	heap.Remove(&t.live, r.idx)
	r.active = false
	heap.Push(&t.ended, r)
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
	for ; n != 0; n-- {
		switch {
		case len(t.live) > 0 && !now.Before(t.live[0].due):
			t.expire(t.live[0])
		case len(t.ended) > 0 && !now.Before(t.ended[0].due):
			t.remove(t.ended[0])
		default:
			return
		}
	}
}

// idle reports whether sweep at now would find nothing to do.
func (t *banTable) idle(now time.Time) bool {
	return (len(t.live) == 0 || now.Before(t.live[0].due)) &&
		(len(t.ended) == 0 || now.Before(t.ended[0].due))
}

// victim returns the record to evict when the table is full, or nil if it
// is empty: the ended record to be forgotten first, and only when none is
// left the active one ending first. An ended record only lets the next ban
// of its key escalate; evicting a ban in force lifts it.
func (t *banTable) victim() *banRec {
	if len(t.ended) > 0 {
		return t.ended[0]
	}
	if len(t.live) > 0 {
		return t.live[0]
	}
	return nil
}
