package limiter

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestBudgetsTable checks the index, LRU list and free list against a map
// under random adds and removes, with a small index so that probe runs are
// long and deletions shift entries.
func TestBudgetsTable(t *testing.T) {
	const max = 64
	tbl := newBudgets(max)
	ref := map[bkey]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	key := func() bkey {
		return keyOf(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(100))}), 32))
	}
	for i := range 20_000 {
		k := key()
		switch {
		case ref[k]:
			if tbl.get(k) == nil {
				t.Fatalf("op %d: %v lost", i, k)
			}
			if rng.IntN(2) == 0 {
				tbl.remove(k)
				delete(ref, k)
			}
		case len(ref) < max:
			if tbl.get(k) != nil {
				t.Fatalf("op %d: %v found before add", i, k)
			}
			if b := tbl.add(k); b.key != k || b.pending != 0 {
				t.Fatalf("op %d: add gave %+v", i, b)
			}
			ref[k] = true
		default:
			old := tbl.oldest()
			if !ref[old.key] {
				t.Fatalf("op %d: oldest %v not in the table", i, old.key)
			}
			delete(ref, old.key)
			tbl.remove(old.key)
		}
		if tbl.len() != len(ref) {
			t.Fatalf("op %d: len %d, want %d", i, tbl.len(), len(ref))
		}
	}
	// Every key is found, the LRU list holds each once, both ways.
	n := 0
	prev := int32(nilSlot)
	for s := tbl.head; s != nilSlot; s = tbl.at(s).next {
		b := tbl.at(s)
		if !ref[b.key] || b.prev != prev {
			t.Fatalf("LRU list broken at slot %d", s)
		}
		prev = s
		n++
	}
	if n != len(ref) || tbl.tail != prev {
		t.Fatalf("LRU list has %d entries, want %d", n, len(ref))
	}
	for k := range ref {
		if _, s := tbl.lookup(k); s == nilSlot {
			t.Fatalf("%v lost", k)
		}
	}
	if tbl.used > max {
		t.Fatalf("%d slots used for %d keys: free list not reused", tbl.used, max)
	}
	tbl.grow(1000)
	for k := range ref {
		if tbl.get(k) == nil {
			t.Fatalf("%v lost after grow", k)
		}
	}
}
