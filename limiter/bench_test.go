package limiter

import (
	"flag"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

var memKeys = flag.Int("limiter.memkeys", 200_000, "keys for BenchmarkMemoryPerKey")

// addrN returns a distinct IPv4 address for each n < 2^32.
func addrN(n uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func addrs(n int, base uint32) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = addrN(base + uint32(i))
	}
	return out
}

// BenchmarkCheck is the connect gate for many distinct addresses, none of
// them banned, with no bans at all (the lock-free path) and with 10,000 bans
// of other keys.
func BenchmarkCheck(b *testing.B) {
	for _, tc := range []struct {
		name  string
		nbans int
	}{{"bans=0", 0}, {"bans=10k", 10_000}} {
		b.Run(tc.name, func(b *testing.B) {
			l := newLimiter(b, Config{}, nil)
			for _, a := range addrs(tc.nbans, 0x0a000000) {
				if _, err := l.BanKey(t0, l.Key(a), 0, ""); err != nil {
					b.Fatal(err)
				}
			}
			as := addrs(1<<16, 0xc6336400)
			var seed atomic.Uint32
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := seed.Add(7919)
				for pb.Next() {
					i++
					if !l.Check(t0, as[i&(1<<16-1)]).Allowed {
						b.Error("refused")
						return
					}
				}
			})
		})
	}
}

// BenchmarkCheckBanned is the connect gate for banned addresses.
func BenchmarkCheckBanned(b *testing.B) {
	l := newLimiter(b, Config{}, nil)
	as := addrs(1<<14, 0x0a000000)
	for _, a := range as {
		if _, err := l.BanKey(t0, l.Key(a), 0, ""); err != nil {
			b.Fatal(err)
		}
	}
	var seed atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seed.Add(7919)
		for pb.Next() {
			i++
			if l.Check(t0, as[i&(1<<14-1)]).Allowed {
				b.Error("allowed")
				return
			}
		}
	})
}

// BenchmarkFailure is a failed guess (Attempt, then Failure): "evict" from
// a new key each time in a full table of 10,000 keys (so each guess evicts
// one); "ban" with Failures=1, so each guess bans its key and saves the ban
// to a MemoryStore (the ban table, also bounded at 10,000, evicts too).
func BenchmarkFailure(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"evict", Config{MaxTracked: 10_000}},
		{"ban", Config{Failures: 1, MaxTracked: 10_000}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			l := newLimiter(b, tc.cfg, nil)
			for _, a := range addrs(tc.cfg.MaxTracked, 0x0b000000) { // fill the table
				l.Attempt(t0, a)
				l.Release(t0, a)
			}
			var next atomic.Uint32
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					a := addrN(0x0c000000 + next.Add(1))
					if d := l.Attempt(t0, a); !d.Allowed {
						b.Errorf("refused: %+v", d)
						return
					}
					l.Failure(t0, a)
				}
			})
		})
	}
}

// BenchmarkMemoryPerKey reports the heap bytes per key with budget state
// for -limiter.memkeys keys (default 200,000). Run with
// -limiter.memkeys=1000000 for the 1 M figure.
func BenchmarkMemoryPerKey(b *testing.B) {
	n := *memKeys
	as := addrs(n, 0x01000000)
	b.ReportAllocs()
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		l := newLimiter(b, Config{MaxTracked: n}, nil)
		for i, a := range as {
			now := t0.Add(time.Duration(i) * time.Microsecond)
			l.Attempt(now, a)
			l.Failure(now, a)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := l.Stats().Tracked; got != n {
			b.Fatalf("tracked %d keys, want %d", got, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "bytes/key")
		runtime.KeepAlive(l)
	}
}

// nopStore keeps nothing: BenchmarkBanEvict measures the ban table alone.
type nopStore struct{}

func (nopStore) SaveBan(Ban) error                 { return nil }
func (nopStore) DeleteBan(netip.Prefix) error      { return nil }
func (nopStore) LoadBans(time.Time) ([]Ban, error) { return nil, nil }
func (nopStore) Close() error                      { return nil }

// BenchmarkBanEvict is BanKey of a new key in a full ban table of 100,000
// records, so that each ban evicts one: "active", every record a ban in
// force; "remembered", every record an ended ban kept for escalation
// (until b.N exceeds the table: then the bans made by the benchmark are
// the ones evicted).
func BenchmarkBanEvict(b *testing.B) {
	const n = 100_000
	for _, tc := range []struct {
		name  string
		ended bool
	}{{"active", false}, {"remembered", true}} {
		b.Run(tc.name, func(b *testing.B) {
			l := newLimiter(b, Config{MaxTracked: n}, nopStore{})
			for i, a := range addrs(n, 0x0b000000) {
				d := time.Hour + time.Duration(i)*time.Millisecond
				if _, err := l.BanKey(t0, l.Key(a), d, ""); err != nil {
					b.Fatal(err)
				}
			}
			now := t0
			if tc.ended {
				now = t0.Add(3 * time.Hour)
				l.advance(now) // expires them all
			}
			next := uint32(0x0c000000)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				next++
				if _, err := l.BanKey(now, netip.PrefixFrom(addrN(next), 32), time.Hour, ""); err != nil {
					b.Fatal(err)
				}
			}
			if s := l.Stats(); s.Banned+s.Remembered != n {
				b.Fatalf("Stats = %+v", s)
			}
		})
	}
}
