package limiter

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHardCap hammers one key from many goroutines: however the calls
// interleave, at most Failures guesses get through per budget, and the key
// ends up banned. Other keys and Checks run alongside.
func TestHardCap(t *testing.T) {
	const failures = 5
	for round := range 20 {
		l := newLimiter(t, Config{Failures: failures, MaxTracked: 64}, nil)
		target := netip.MustParseAddr("2001:db8::1")
		var through, newBans atomic.Int64
		var wg sync.WaitGroup
		for g := range 32 {
			wg.Go(func() {
				// The same /64 from several addresses; time moves less than a token's worth.
				a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(g)})
				other := netip.AddrFrom4([4]byte{198, 51, 100, byte(g)})
				for i := range 50 {
					now := t0.Add(time.Duration(i) * time.Millisecond)
					if d := l.Attempt(now, a); d.Allowed {
						through.Add(1)
						if d := l.Failure(now, a); d.NewBan {
							newBans.Add(1)
						}
					} else if d.NewBan {
						newBans.Add(1)
					}
					l.Check(now, target)
					if d := l.Attempt(now, other); d.Allowed {
						if i%2 == 0 {
							l.Success(now, other)
						} else {
							l.Release(now, other)
						}
					}
				}
			})
		}
		wg.Wait()
		if n := through.Load(); n > failures {
			t.Fatalf("round %d: %d guesses got through, want ≤ %d", round, n, failures)
		}
		if n := newBans.Load(); n != 1 {
			t.Fatalf("round %d: %d bans made, want 1", round, n)
		}
		if d := l.Check(t0.Add(time.Second), target); d.Allowed || d.Ban.Count != 1 {
			t.Fatalf("round %d: Check = %+v", round, d)
		}
	}
}

// TestConcurrentMixed runs every method at once under -race, with eviction
// of both tables, admin bans and reloads.
func TestConcurrentMixed(t *testing.T) {
	l := newLimiter(t, Config{Failures: 3, MaxTracked: 50}, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				now := t0.Add(time.Duration(i) * time.Second)
				a := netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i % 97)})
				switch i % 7 {
				case 0:
					l.Check(now, a)
				case 1, 2:
					if l.Attempt(now, a).Allowed {
						l.Failure(now, a)
					}
				case 3:
					if l.Attempt(now, a).Allowed {
						l.Success(now, a)
					}
				case 4:
					_, _ = l.BanKey(now, netip.PrefixFrom(a, 32), time.Duration(i%5)*time.Second, "")
				case 5:
					_, _ = l.Unban(netip.PrefixFrom(a, 32))
					l.Bans(now)
				case 6:
					if g == 0 && i%70 == 6 {
						_ = l.Reload(Config{Failures: 2 + i%3, MaxTracked: 40 + i%20})
					}
					l.Stats()
				}
			}
		})
	}
	wg.Wait()
	s := l.Stats()
	if s.Tracked > 60 || s.Banned+s.Remembered > 60 {
		t.Fatalf("tables over bound: %+v", s)
	}
}

func TestCheckDoesNotAllocate(t *testing.T) {
	l := newLimiter(t, Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, nil)
	banned, free := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	if _, err := l.BanKey(t0, l.Key(banned), 0, ""); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{banned, free, netip.MustParseAddr("10.1.1.1"), netip.MustParseAddr("::ffff:192.0.2.1")} {
		if n := testing.AllocsPerRun(100, func() { l.Check(t0, a) }); n != 0 {
			t.Errorf("Check(%v) allocates %v times", a, n)
		}
	}
	big := newLimiter(t, Config{Failures: 1_000_000}, nil)
	if n := testing.AllocsPerRun(100, func() {
		if big.Attempt(t0, free).Allowed {
			big.Failure(t0, free)
		}
		big.Attempt(t0, free)
		big.Release(t0, free)
	}); n != 0 {
		t.Errorf("Attempt+Failure allocate %v times", n)
	}
}
