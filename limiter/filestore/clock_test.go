package filestore

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestClockStepStoredBans: the wall clock steps (forward or back) between
// two bans; the store keeps wall times. A ban of A is made at t0 (an hour,
// forgotten max_ban_time = 24h after it ends); a ban of B at t0+step
// prunes the records whose forget time is not after t0+step. Then the
// process restarts with the clock right again (t0+30m). Defined behaviour
// (docs/operating.md, Failure modes): a forward step of X forgets on disk
// only records whose forget time is within X; a ban still in force is
// lost only if X exceeds its time left plus max_ban_time. A backward step
// forgets nothing early. (The limiter's bans in memory compare the
// monotonic readings the proxy's now carries, so a step does not move
// them; these wall-only times cannot show that, and are a real passage of
// time to the limiter.)
func TestClockStepStoredBans(t *testing.T) {
	t0 := time.Date(2031, 3, 1, 12, 0, 0, 0, time.UTC) // wall time only, as stored
	cfg := limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour, MaxBanTime: 24 * time.Hour}
	a := netip.MustParsePrefix("192.0.2.1/32")
	b := netip.MustParsePrefix("192.0.2.2/32")
	for _, tc := range []struct {
		name    string
		step    time.Duration
		keepsA  bool // A's record still on disk after B's save
		bannedA bool // after the restart at t0+30m
	}{
		{"forward 2h", 2 * time.Hour, true, true},
		{"forward 24h", 24 * time.Hour, true, true},
		{"back 2h", -2 * time.Hour, true, true},
		{"back 30d", -30 * 24 * time.Hour, true, true},
		{"forward beyond max_ban_time", 26 * time.Hour, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempStorePath(t)
			f, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			l, err := limiter.New(cfg, f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.BanKey(t0, a, 0, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := l.BanKey(t0.Add(tc.step), b, 0, ""); err != nil {
				t.Fatal(err)
			}
			_, onDisk := findBan(mustLoad(t, f, time.Time{}), a)
			if onDisk != tc.keepsA {
				t.Fatalf("A on disk after B's save at t0%+v: %v, want %v", tc.step, onDisk, tc.keepsA)
			}
			l.Close()
			f.Close()

			f2 := openTestStoreOpt(t, path, Options{PruneBefore: t0.Add(30 * time.Minute)})
			l2, err := limiter.New(cfg, f2)
			if err != nil {
				t.Fatal(err)
			}
			defer l2.Close()
			if got := !l2.Check(t0.Add(30*time.Minute), a.Addr()).Allowed; got != tc.bannedA {
				t.Fatalf("A banned after the restart: %v, want %v", got, tc.bannedA)
			}
			// B was made at the stepped time: forward, it lasts the step
			// longer; back, the step shorter (over if the step exceeds it).
			wantB := t0.Add(30 * time.Minute).Before(t0.Add(tc.step + time.Hour))
			if got := !l2.Check(t0.Add(30*time.Minute), b.Addr()).Allowed; got != wantB {
				t.Fatalf("B banned after the restart: %v, want %v", got, wantB)
			}
		})
	}
}
