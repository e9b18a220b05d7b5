package limiter

import (
	"net/netip"
	"testing"
	"time"
)

// TestNoAuthPenalty: steps of NoAuth/LoggedIn/Penalized/LiftPenalty with
// `now`: a penalty after After connections ending without a login attempt,
// escalating by Factor up to MaxPenalty, forgotten later; never for an
// allowlisted address or a key that logged in; strikes too far apart do not
// add up; one /64 is one key.
func TestNoAuthPenalty(t *testing.T) {
	c := NoAuthConfig{Penalty: 30 * time.Second, After: 3, Factor: 2, MaxPenalty: 100 * time.Second}
	type op int
	const (
		noauth op = iota // NoAuth: want.pen = a penalty made, of want.d
		loggedIn
		penalized // Penalized: want.pen = in force
		lift      // LiftPenalty(key of addr): want.pen = lifted
	)
	type st struct {
		at    time.Duration
		op    op
		addr  string
		pen   bool
		d     time.Duration // the penalty's length (noauth, when pen)
		count int
	}
	cases := []struct {
		name  string
		steps []st
	}{
		{"third strike penalises, escalation, cap, forgetting", []st{
			{0, noauth, "192.0.2.1", false, 0, 0},
			{time.Second, noauth, "192.0.2.1", false, 0, 0},
			{time.Second, penalized, "192.0.2.1", false, 0, 0},
			{2 * time.Second, noauth, "192.0.2.1", true, 30 * time.Second, 1},
			{3 * time.Second, penalized, "192.0.2.1", true, 0, 0},
			{3 * time.Second, penalized, "192.0.2.2", false, 0, 0},  // another key
			{4 * time.Second, noauth, "192.0.2.1", false, 0, 0},     // in force: not counted
			{32 * time.Second, penalized, "192.0.2.1", false, 0, 0}, // over
			{33 * time.Second, noauth, "192.0.2.1", false, 0, 0},    // strikes start again
			{34 * time.Second, noauth, "192.0.2.1", false, 0, 0},    //
			{35 * time.Second, noauth, "192.0.2.1", true, 60 * time.Second, 2},
			{96 * time.Second, noauth, "192.0.2.1", false, 0, 0},                //
			{97 * time.Second, noauth, "192.0.2.1", false, 0, 0},                //
			{98 * time.Second, noauth, "192.0.2.1", true, 100 * time.Second, 3}, // 120s capped
			// forgotten MaxPenalty after the end (198s + 100s): back to 30s
			{300 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{301 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{302 * time.Second, noauth, "192.0.2.1", true, 30 * time.Second, 1},
		}},
		{"strikes further apart than MaxPenalty do not add up", []st{
			{0, noauth, "192.0.2.1", false, 0, 0},
			{time.Second, noauth, "192.0.2.1", false, 0, 0},
			{200 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{201 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{202 * time.Second, noauth, "192.0.2.1", true, 30 * time.Second, 1},
		}},
		{"one IPv6 /64 is one key", []st{
			{0, noauth, "2001:db8::1", false, 0, 0},
			{0, noauth, "2001:db8::2", false, 0, 0},
			{0, noauth, "2001:db8::ffff:3", true, 30 * time.Second, 1},
			{time.Second, penalized, "2001:db8::42", true, 0, 0},
			{time.Second, penalized, "2001:db8:0:1::42", false, 0, 0},
		}},
		{"allowlisted: never", []st{
			{0, noauth, "198.51.100.7", false, 0, 0},
			{0, noauth, "198.51.100.7", false, 0, 0},
			{0, noauth, "198.51.100.7", false, 0, 0},
			{0, noauth, "198.51.100.7", false, 0, 0},
			{time.Second, penalized, "198.51.100.7", false, 0, 0},
		}},
		{"a key that logged in is never penalised, and its penalty is lifted", []st{
			{0, noauth, "192.0.2.1", false, 0, 0},
			{0, noauth, "192.0.2.1", false, 0, 0},
			{0, noauth, "192.0.2.1", true, 30 * time.Second, 1},
			{time.Second, loggedIn, "192.0.2.1", false, 0, 0}, // a session opened before
			{time.Second, penalized, "192.0.2.1", false, 0, 0},
			{2 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{2 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{2 * time.Second, noauth, "192.0.2.1", false, 0, 0},
			{3 * time.Second, penalized, "192.0.2.1", false, 0, 0},
			// known-good expires after 24h
			{25 * time.Hour, noauth, "192.0.2.1", false, 0, 0},
			{25 * time.Hour, noauth, "192.0.2.1", false, 0, 0},
			{25 * time.Hour, noauth, "192.0.2.1", true, 30 * time.Second, 1},
		}},
		{"lift", []st{
			{0, noauth, "192.0.2.1", false, 0, 0},
			{0, noauth, "192.0.2.1", false, 0, 0},
			{0, noauth, "192.0.2.1", true, 30 * time.Second, 1},
			{time.Second, lift, "192.0.2.1", true, 0, 0},
			{time.Second, penalized, "192.0.2.1", false, 0, 0},
			{time.Second, lift, "192.0.2.1", false, 0, 0},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(Config{Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				a := netip.MustParseAddr(s.addr)
				switch s.op {
				case noauth:
					b, made := l.NoAuth(now, a, c)
					if made != s.pen {
						t.Fatalf("step %d: NoAuth(%s) made %v; want %v", i, s.addr, made, s.pen)
					}
					if made && (b.Until.Sub(now) != s.d || b.Count != s.count || b.Reason != ReasonNoAuth || b.Key != l.Key(a)) {
						t.Fatalf("step %d: penalty %+v; want %v, count %d, key %v", i, b, s.d, s.count, l.Key(a))
					}
				case loggedIn:
					l.LoggedIn(now, a, c)
				case penalized:
					if _, ok := l.Penalized(now, a); ok != s.pen {
						t.Fatalf("step %d: Penalized(%s) = %v; want %v", i, s.addr, ok, s.pen)
					}
					if got := len(l.Penalties(now)) > 0; s.pen && !got {
						t.Fatalf("step %d: Penalties lists nothing", i)
					}
				case lift:
					if ok := l.LiftPenalty(now, l.Key(a)); ok != s.pen {
						t.Fatalf("step %d: LiftPenalty = %v; want %v", i, ok, s.pen)
					}
				}
			}
		})
	}
}

// TestNoAuthOffAndBounded: penalty 0 records nothing; the table holds at
// most MaxTracked keys (the least recently used is dropped).
func TestNoAuthOffAndBounded(t *testing.T) {
	l, err := New(Config{MaxTracked: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("192.0.2.1")
	for range 5 {
		if _, made := l.NoAuth(t0, a, NoAuthConfig{}); made {
			t.Fatal("penalty made while off")
		}
	}
	c := NoAuthConfig{Penalty: time.Minute, After: 1}
	for i := range 10 {
		l.NoAuth(t0, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), c)
	}
	if n := l.pen.recs.len(); n != 4 {
		t.Fatalf("%d keys tracked; want 4", n)
	}
	if n := len(l.Penalties(t0)); n != 4 {
		t.Fatalf("%d penalties listed; want 4", n)
	}
	if _, ok := l.Penalized(t0, netip.AddrFrom4([4]byte{192, 0, 2, 9})); !ok {
		t.Fatal("latest key not penalised")
	}
}
