package limiter

import (
	"fmt"
	"math"
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

// TestEscalationCountSaturates: a record whose count is out of range — a
// corrupt or hostile store's MaxInt, or a negative one — still escalates
// the next ban to at most max_ban_time, never to a ban of 0 s (a count
// below 1 is loaded as 1). On the old
// code MaxInt + 1 wrapped around and the next ban lasted 0 s (found by
// the fuzz work on the stores' decoders).
func TestEscalationCountSaturates(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		count int
		want  time.Duration
	}{
		{math.MaxInt, 24 * time.Hour},
		{math.MaxInt32, 24 * time.Hour},
		{-7, 2 * time.Minute}, // loaded as 1
		{0, 2 * time.Minute},
	} {
		t.Run(fmt.Sprint(tt.count), func(t *testing.T) {
			ms := NewMemoryStore()
			k := netip.MustParsePrefix("192.0.2.0/24")
			// ended a minute ago, remembered for a day
			ms.SaveBan(Ban{Key: k, Until: now.Add(-time.Minute), Since: now.Add(-2 * time.Minute), Forget: now.Add(24 * time.Hour), Count: tt.count})
			l := newLimiter(t, Config{BanTime: time.Minute, BanFactor: 2, MaxBanTime: 24 * time.Hour}, ms)
			b, err := l.BanKey(now, k, 0, "again")
			if err != nil {
				t.Fatal(err)
			}
			if got := b.Until.Sub(now); got != tt.want {
				t.Fatalf("next ban after count %d lasts %v, want %v (count now %d)", tt.count, got, tt.want, b.Count)
			}
			if b.Count < 1 {
				t.Fatalf("count %d after a ban", b.Count)
			}
		})
	}
}

// TestBansPageCursorBounds: a cursor past the last record (up to MaxInt,
// as GET /bans?after= takes it) gives an empty last page, next 0. On the
// old code cursor+limit wrapped and the next cursor came back negative.
func TestBansPageCursorBounds(t *testing.T) {
	l := newLimiter(t, Config{}, nil)
	now := time.Now()
	for i := range 3 {
		l.BanKey(now, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), time.Hour, "")
	}
	for _, tt := range []struct{ cursor, limit, n, next int }{
		{0, 2, 2, 2},
		{2, 2, 1, 0},
		{3, 2, 0, 0},
		{math.MaxInt, 10, 0, 0},
		{math.MaxInt - 5, 10000, 0, 0},
		{1, math.MaxInt, 2, 0},
	} {
		bans, next := l.BansPage(now, tt.cursor, tt.limit)
		if len(bans) != tt.n || next != tt.next {
			t.Errorf("BansPage(%d, %d) = %d bans, next %d; want %d, %d", tt.cursor, tt.limit, len(bans), next, tt.n, tt.next)
		}
	}
}
