package limiter

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestWiden: a step table with now. Keys banned for their own offences
// inside one wider prefix widen to it once widen_after of them are banned
// within the window; admin bans, bans too far apart, a prefix overlapping
// the allowlist and a second ban of one key do not; the widened ban
// escalates on its own count and is lifted by Unban.
func TestWiden(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := Config{Failures: 1, Window: 10 * time.Minute, BanTime: time.Hour, BanFactor: 2,
		WidenIPv6Prefix: 48, WidenIPv4Prefix: 24, WidenAfter: 3,
		Allow: []netip.Prefix{netip.MustParsePrefix("2001:db8:99::7/128")}}
	l, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var changes []BanChange
	l.SetBanHook(func(c BanChange) { changes = append(changes, c) })
	type step struct {
		at     time.Duration
		addr   string // a failure of addr (Failures 1: a budget ban) …
		admin  string // … or an admin ban of this prefix
		lift   string // … or Unban of this prefix
		widens string // the wider prefix banned by this step ("": none)
	}
	steps := []step{
		{at: 0, addr: "2001:db8:1:1::1"},
		{at: time.Minute, addr: "2001:db8:1:2::1"},
		{at: 2 * time.Minute, addr: "2001:db8:1:2::2"},    // the same /64 key again: not distinct (and banned already)
		{at: 3 * time.Minute, admin: "2001:db8:1:3::/64"}, // an admin's ban does not count
		{at: 4 * time.Minute, addr: "2001:db8:1:4::1", widens: "2001:db8:1::/48"},
		{at: 5 * time.Minute, lift: "2001:db8:1::/48"},
		// Too far apart: the first is out of the window when the third comes.
		{at: 20 * time.Minute, addr: "2001:db8:2:1::1"},
		{at: 26 * time.Minute, addr: "2001:db8:2:2::1"},
		{at: 31 * time.Minute, addr: "2001:db8:2:3::1"},
		{at: 32 * time.Minute, addr: "2001:db8:2:4::1", widens: "2001:db8:2::/48"},
		// A /48 holding an allowlisted address is never banned.
		{at: 40 * time.Minute, addr: "2001:db8:99:1::1"},
		{at: 40 * time.Minute, addr: "2001:db8:99:2::1"},
		{at: 40 * time.Minute, addr: "2001:db8:99:3::1"},
		// IPv4: /32 keys widen to the /24.
		{at: 50 * time.Minute, addr: "198.51.100.1"},
		{at: 50 * time.Minute, addr: "198.51.100.2"},
		{at: 50 * time.Minute, addr: "198.51.100.3", widens: "198.51.100.0/24"},
	}
	for i, st := range steps {
		now := t0.Add(st.at)
		changes = changes[:0]
		switch {
		case st.addr != "":
			a := netip.MustParseAddr(st.addr)
			at, _ := l.Begin(now, a, "", nil)
			at.Settle(now, OutcomeFailure)
		case st.admin != "":
			if _, err := l.BanKey(now, netip.MustParsePrefix(st.admin), 0, ""); err != nil {
				t.Fatal(err)
			}
		case st.lift != "":
			if ok, err := l.Unban(netip.MustParsePrefix(st.lift)); !ok || err != nil {
				t.Fatalf("step %d: Unban = %v, %v", i, ok, err)
			}
			continue
		}
		var wide []Ban
		for _, c := range changes {
			if strings.HasPrefix(c.Ban.Reason, ReasonWidened) {
				wide = append(wide, c.Ban)
			}
		}
		switch {
		case st.widens == "" && len(wide) > 0:
			t.Fatalf("step %d: widened to %v", i, wide)
		case st.widens != "" && (len(wide) != 1 || wide[0].Key.String() != st.widens):
			t.Fatalf("step %d: widened %v, want %s", i, wide, st.widens)
		case st.widens != "":
			if !strings.HasPrefix(wide[0].Reason, "widened: 3 keys banned in "+st.widens+" (") {
				t.Fatalf("step %d: reason %q", i, wide[0].Reason)
			}
			// The whole network is refused: a fresh address of it too.
			p := netip.MustParsePrefix(st.widens)
			fresh := p.Addr().Next().Next().Next()
			if d := l.Check(now, fresh); d.Allowed {
				t.Fatalf("step %d: %v inside the widened ban allowed", i, fresh)
			}
		}
	}
	// The /48 banned twice: its own escalation (1h, then 2h).
	for _, b := range l.Bans(t0.Add(33 * time.Minute)) {
		if b.Key.String() == "2001:db8:2::/48" && (b.Count != 1 || b.Until.Sub(b.Since) != time.Hour) {
			t.Fatalf("first widened ban of 2001:db8:2::/48: %+v", b)
		}
	}
	if d := l.Check(t0.Add(41*time.Minute), netip.MustParseAddr("2001:db8:99::7")); !d.Allowed {
		t.Fatal("the allowlisted address was banned")
	}
	if d := l.Check(t0.Add(41*time.Minute), netip.MustParseAddr("2001:db8:99:4::1")); !d.Allowed {
		t.Fatal("a network overlapping the allowlist was widened over")
	}
}

// TestWidenEscalates: the wider prefix's ban escalates on its own count.
func TestWidenEscalates(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l, _ := New(Config{Failures: 1, Window: time.Minute, BanTime: time.Minute, BanFactor: 2, MaxBanTime: 24 * time.Hour,
		WidenIPv4Prefix: 24, WidenAfter: 2}, nil)
	wide := netip.MustParsePrefix("192.0.2.0/24")
	for round, want := range []time.Duration{time.Minute, 2 * time.Minute} {
		now := t0.Add(time.Duration(round) * time.Hour)
		for _, a := range []string{"192.0.2.1", "192.0.2.2"} {
			at, _ := l.Begin(now, netip.MustParseAddr(a), "", nil)
			at.Settle(now, OutcomeFailure)
		}
		var got Ban
		for _, b := range l.Bans(now) {
			if b.Key == wide {
				got = b
			}
		}
		if got.Count != round+1 || got.Until.Sub(now) != want {
			t.Fatalf("round %d: widened ban %+v, want count %d for %v", round, got, round+1, want)
		}
	}
}

// TestWidenFleet: bans learned from the shared store (Remote) count towards
// widening, but only a ban of this instance's own completes it: the
// instance that made the last ban widens, the others learn the widened ban
// from the store (one widened ban for a fleet, not one per instance).
func TestWidenFleet(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	remote := func(l *Limiter, key string, at time.Time) {
		l.notify(BanChange{Remote: true, Ban: Ban{Key: netip.MustParsePrefix(key), Since: at,
			Until: at.Add(time.Hour), Count: 1, Reason: ReasonBudget}})
	}
	widened := func(l *Limiter, now time.Time, p string) bool {
		for _, b := range l.Bans(now) {
			if b.Key.String() == p {
				return true
			}
		}
		return false
	}
	cfg := Config{Failures: 1, Window: 10 * time.Minute, BanTime: time.Hour, BanFactor: 2, WidenIPv4Prefix: 24, WidenAfter: 3}
	tests := []struct {
		name   string
		remote []string // bans learned from the store, then …
		local  string   // … a failure of this address here ("": none)
		want   bool
	}{
		{"two learned, the third ours", []string{"192.0.2.1/32", "192.0.2.2/32"}, "192.0.2.3", true},
		{"all three learned: the instance that made the third widens", []string{"192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"}, "", false},
		{"an admin's ban learned does not count", nil, "192.0.2.3", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.remote {
				remote(l, k, t0)
			}
			if tt.remote == nil {
				for _, k := range []string{"192.0.2.1/32", "192.0.2.2/32"} {
					l.notify(BanChange{Remote: true, Ban: Ban{Key: netip.MustParsePrefix(k), Since: t0, Until: t0.Add(time.Hour), Count: 1}})
				}
			}
			if tt.local != "" {
				at, _ := l.Begin(t0, netip.MustParseAddr(tt.local), "", nil)
				at.Settle(t0, OutcomeFailure)
			}
			if got := widened(l, t0, "192.0.2.0/24"); got != tt.want {
				t.Fatalf("widened: %v; want %v", got, tt.want)
			}
		})
	}
}

// TestWidenFleetConcurrent: three instances each ban one key of a /24 at
// the same moment, each learning the two others' bans after its own; so a
// learned ban completes every instance's count, and none may widen. The
// count must not be spent by it: at the next round's first ban of its own,
// an instance widens. Before, a learned ban that completed the count reset
// it, and such rounds were never widened however long they went on (each
// instance counting only its own bans would have widened by the third).
func TestWidenFleetConcurrent(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := Config{Failures: 1, Window: 10 * time.Minute, BanTime: time.Hour, BanFactor: 2, WidenIPv4Prefix: 24, WidenAfter: 3}
	var fleet [3]*Limiter
	for i := range fleet {
		l, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		fleet[i] = l
	}
	widened := func() int {
		n := 0
		for _, l := range fleet {
			for _, b := range l.Bans(t0) {
				if b.Key.String() == "192.0.2.0/24" {
					n++
				}
			}
		}
		return n
	}
	for round := range 2 {
		var made [3]Ban
		for i, l := range fleet { // each bans its own key first
			addr := netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + 3*round + i)})
			at, _ := l.Begin(t0, addr, "", nil)
			d := at.Settle(t0, OutcomeFailure)
			if !d.NewBan {
				t.Fatalf("round %d: %v not banned", round, addr)
			}
			made[i] = d.Ban
		}
		for i, l := range fleet { // then learns the others'
			for j, b := range made {
				if j != i {
					l.notify(BanChange{Remote: true, Ban: b})
				}
			}
		}
		if n := widened(); round == 0 && n != 0 {
			t.Fatalf("round 0: %d instances widened on a learned ban", n)
		} else if round > 0 && n == 0 {
			t.Fatalf("round %d: the /24 is not widened after %d keys banned in it", round, 3*(round+1))
		}
	}
}
