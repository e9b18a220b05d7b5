package limiter

import (
	"net/netip"
	"testing"
	"time"
)

// TestExternal: an external source's bans refuse at Check like the
// limiter's own, ranges as ranges, with expiry; allowlisted addresses are
// never refused (legitimate users first); external bans are not the
// limiter's: not listed by Bans, not reported to the hook, not lifted by
// Unban.
func TestExternal(t *testing.T) {
	ext := map[netip.Prefix]time.Time{
		netip.MustParsePrefix("192.0.2.7/32"):    t0.Add(time.Minute),
		netip.MustParsePrefix("198.51.100.0/24"): t0.Add(time.Hour),
		netip.MustParsePrefix("2001:db8::/48"):   t0.Add(time.Hour),
		netip.MustParsePrefix("203.0.113.5/32"):  t0.Add(time.Hour), // allowlisted below
	}
	l := newLimiter(t, Config{Allow: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}, nil)
	hooked := 0
	l.SetBanHook(func(BanChange) { hooked++ })
	l.SetExternal(func(a netip.Addr, now time.Time) (Ban, bool) {
		for p, until := range ext {
			if p.Contains(a) {
				return Ban{Key: p, Until: until, Reason: "crowdsec"}, true
			}
		}
		return Ban{}, false
	})
	for _, c := range []struct {
		addr    string
		at      time.Duration
		allowed bool
		key     string
	}{
		{"192.0.2.7", 0, false, "192.0.2.7/32"},
		{"::ffff:192.0.2.7", 0, false, "192.0.2.7/32"},
		{"192.0.2.7", time.Minute, true, ""}, // expired
		{"192.0.2.8", 0, true, ""},
		{"198.51.100.200", 0, false, "198.51.100.0/24"},
		{"2001:db8:0:1::1", 0, false, "2001:db8::/48"},
		{"2001:db8:1::1", 0, true, ""},
		{"203.0.113.5", 0, true, ""}, // allowlisted
	} {
		d := l.Check(t0.Add(c.at), netip.MustParseAddr(c.addr))
		if d.Allowed != c.allowed || (!c.allowed && d.Ban.Key.String() != c.key) {
			t.Errorf("Check(%s, +%v) = allowed %v ban %v, want allowed %v ban %s", c.addr, c.at, d.Allowed, d.Ban.Key, c.allowed, c.key)
		}
	}
	if bans := l.Bans(t0); len(bans) != 0 {
		t.Errorf("Bans lists external bans: %v", bans)
	}
	if lifted, _ := l.Unban(netip.MustParsePrefix("192.0.2.7/32")); lifted {
		t.Error("Unban lifted an external ban")
	}
	if hooked != 0 {
		t.Errorf("ban hook called %d times for external bans", hooked)
	}
	l.SetExternal(nil)
	if d := l.Check(t0, netip.MustParseAddr("192.0.2.7")); !d.Allowed {
		t.Error("refused after SetExternal(nil)")
	}
}

// TestExternalGuess: every guess consults the external source too, not
// only Check — a decision that comes between USER and PASS refuses the
// PASS (Begin, Attempt, a waiting guess's Retry) without taking a place or
// a token, and without a ban of the limiter's; the allowlist still wins;
// once the decision is gone the key's budget is whole.
func TestExternalGuess(t *testing.T) {
	banned := map[netip.Addr]bool{}
	l := newLimiter(t, Config{Failures: 2, Allow: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}, nil)
	l.SetExternal(func(a netip.Addr, now time.Time) (Ban, bool) {
		if !banned[a] {
			return Ban{}, false
		}
		return Ban{Key: netip.PrefixFrom(a, a.BitLen()), Until: now.Add(time.Hour), Reason: "crowdsec: test"}, true
	})
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("203.0.113.1")
	steps := []struct {
		name    string
		do      func() Decision
		allowed bool
		reason  string // the ban refusing it
	}{
		{"first guess, no decision", func() Decision {
			at, v := l.Begin(t0, a, "alice", nil)
			at.Settle(t0, OutcomeFailure)
			return v.Decision
		}, true, ""},
		{"decision arrives: Begin refused", func() Decision { banned[a] = true; _, v := l.Begin(t0, a, "alice", nil); return v.Decision }, false, "crowdsec: test"},
		{"Attempt refused", func() Decision { return l.Attempt(t0, a) }, false, "crowdsec: test"},
		{"allowlisted despite a decision", func() Decision { banned[b] = true; return l.Attempt(t0, b) }, true, ""},
		{"decision gone: the budget is whole but one", func() Decision {
			banned[a] = false
			at, v := l.Begin(t0, a, "alice", nil)
			at.Settle(t0, OutcomeSuccess)
			return v.Decision
		}, true, ""},
	}
	for _, s := range steps {
		d := s.do()
		if d.Allowed != s.allowed || d.NewBan || d.Ban.Reason != s.reason {
			t.Errorf("%s: allowed %v NewBan %v ban %q, want allowed %v ban %q", s.name, d.Allowed, d.NewBan, d.Ban.Reason, s.allowed, s.reason)
		}
		if s.name == "decision gone: the budget is whole but one" && d.Remaining != 0 {
			t.Errorf("%s: %d tokens left free, want 0 (2 less the failure and this guess)", s.name, d.Remaining)
		}
	}
	if bans := l.Bans(t0); len(bans) != 0 {
		t.Errorf("the limiter made bans of its own: %v", bans)
	}

	// A guess waiting for a place (Busy) when the decision comes is
	// refused at its Retry and leaves the queue.
	c := netip.MustParseAddr("192.0.2.3")
	first, v1 := l.Begin(t0, c, "", nil)
	second, v2 := l.Begin(t0, c, "", nil)
	third, v3 := l.Begin(t0, c, "", nil)
	if !v1.OK() || !v2.OK() || !v3.Busy || v3.Wait == nil {
		t.Fatalf("set-up: %+v %+v %+v", v1.Decision, v2.Decision, v3.Decision)
	}
	banned[c] = true
	third, v3 = third.Retry(t0)
	if v3.Allowed || v3.Busy || v3.Ban.Reason != "crowdsec: test" {
		t.Errorf("waiting guess after the decision: %+v, want refused by it", v3.Decision)
	}
	if g, _ := l.waiting(); g != 0 {
		t.Errorf("%d guesses still queued, want 0", g)
	}
	for _, at := range []*Attempt{first, second, third} {
		at.Settle(t0, OutcomeRelease)
	}
}
