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
