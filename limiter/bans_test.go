package limiter

import (
	"net/netip"
	"testing"
	"time"
)

// TestBansReadOnlyLock: listing the bans copies them under the read lock
// only, a bounded chunk at a time, so the connect gate (Check, which takes
// the read lock) is never held up by a listing. The test holds the read
// lock itself, as a Check in progress would: a listing that took the
// write lock to copy (as Bans did before: 0.5–0.7 s of gate stall with
// 1 M bans) would wait for it forever.
func TestBansReadOnlyLock(t *testing.T) {
	l := newLimiter(t, Config{MaxTracked: 10000}, nil)
	const n = 3*bansChunk + 10
	for i := 0; i < n; i++ {
		if _, err := l.BanKey(t0, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32), time.Hour, ""); err != nil {
			t.Fatal(err)
		}
	}
	l.mu.RLock()
	done := make(chan []Ban)
	go func() { done <- l.Bans(t0) }()
	var got []Ban
	select {
	case got = <-done:
	case <-time.After(30 * time.Second):
		l.mu.RUnlock()
		t.Fatal("Bans waited for the write lock while a reader held the table")
	}
	page, next := l.BansPage(t0, 0, 100)
	l.mu.RUnlock()
	if len(got) != n {
		t.Fatalf("Bans = %d bans, want %d", len(got), n)
	}
	if len(page) != 100 || next != 100 {
		t.Fatalf("BansPage(0, 100) = %d bans, next %d", len(page), next)
	}
	// Paging covers every ban once.
	seen := map[netip.Prefix]bool{}
	for cursor := 0; ; {
		page, next := l.BansPage(t0, cursor, 333)
		if len(page) > 333 {
			t.Fatalf("page of %d bans, limit 333", len(page))
		}
		for _, b := range page {
			if seen[b.Key] {
				t.Fatalf("%v listed twice", b.Key)
			}
			seen[b.Key] = true
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	if len(seen) != n {
		t.Fatalf("pages listed %d bans, want %d", len(seen), n)
	}
	// Bans that ended are not listed, and the clock moves on.
	if got := l.Bans(t0.Add(2 * time.Hour)); len(got) != 0 {
		t.Fatalf("Bans after they ended = %d", len(got))
	}
	if s := l.Stats(); s.Banned != 0 {
		t.Fatalf("Stats.Banned = %d after the bans ended", s.Banned)
	}
}
