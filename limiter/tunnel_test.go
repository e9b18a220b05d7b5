package limiter

import (
	"net/netip"
	"testing"
	"time"
)

// A host reaching the proxy through 6to4 or Teredo is keyed by the IPv4
// address it carries: a banned IPv4 host cannot come back through the
// 65,536 /64s of its 6to4 /48 (or a Teredo address), and two Teredo
// clients behind one Teredo server are not one key.
func TestTunnelKeys(t *testing.T) {
	l := newLimiter(t, Config{}, nil)
	for _, tt := range []struct{ in, want string }{
		{"2002:c000:0204::1", "192.0.2.4/32"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45/32"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd3", "192.0.2.44/32"}, // same Teredo server, another client
		{"2001:db8::1", "2001:db8::/64"},
		{"192.0.2.4", "192.0.2.4/32"},
	} {
		if got := l.Key(netip.MustParseAddr(tt.in)); got != netip.MustParsePrefix(tt.want) {
			t.Errorf("Key(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}

	l24 := newLimiter(t, Config{IPv4Prefix: 24}, nil)
	if got, want := l24.Key(netip.MustParseAddr("2002:c000:0204::1")), netip.MustParsePrefix("192.0.2.0/24"); got != want {
		t.Errorf("ipv4_prefix 24: Key(6to4) = %s, want %s", got, want)
	}
}

func TestTunnelBans(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	v4 := netip.MustParseAddr("192.0.2.4")
	six := netip.MustParseAddr("2002:c000:0204:1234::1")
	teredo := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd2") // 192.0.2.45
	other := netip.MustParseAddr("2001:0:4136:e378:8000:63bf:3fff:fdd3")  // 192.0.2.44

	// An IPv4 ban refuses the same host through 6to4.
	l := newLimiter(t, Config{}, nil)
	if _, err := l.BanKey(t0, netip.PrefixFrom(v4, 32), time.Hour, "test"); err != nil {
		t.Fatal(err)
	}
	if d := l.Check(t0, six); d.Allowed {
		t.Errorf("Check(6to4 of a banned IPv4) allowed: %+v", d)
	}
	if d := l.Attempt(t0, six); d.Allowed {
		t.Errorf("Attempt(6to4 of a banned IPv4) allowed: %+v", d)
	}

	// A ban earned through 6to4 (or Teredo) is the IPv4 host's ban.
	l = newLimiter(t, Config{Failures: 2}, nil)
	for i := 0; i < 2; i++ {
		l.Attempt(t0, six)
		l.Failure(t0, six)
		l.Attempt(t0, teredo)
		l.Failure(t0, teredo)
	}
	if d := l.Check(t0, v4); d.Allowed || d.Ban.Key != netip.PrefixFrom(v4, 32) {
		t.Errorf("Check(IPv4 banned through 6to4) = %+v, want the ban of 192.0.2.4/32", d)
	}
	if d := l.Check(t0, netip.MustParseAddr("2002:c000:0204:ffff::9")); d.Allowed {
		t.Errorf("Check(another /64 of the 6to4 /48) allowed: %+v", d)
	}
	if d := l.Check(t0, netip.MustParseAddr("192.0.2.45")); d.Allowed {
		t.Errorf("Check(IPv4 banned through Teredo) allowed: %+v", d)
	}
	// Legitimate users first: another client of the same Teredo server,
	// and the Teredo server itself, are not banned with it.
	if d := l.Check(t0, other); !d.Allowed {
		t.Errorf("Check(another Teredo client) refused: %+v", d)
	}
	if d := l.Check(t0, netip.MustParseAddr("65.54.227.120")); !d.Allowed {
		t.Errorf("Check(the Teredo server) refused: %+v", d)
	}

	// An admin's ban written as the 6to4 /48 is the IPv4 /32.
	l = newLimiter(t, Config{}, nil)
	if _, err := l.BanKey(t0, netip.MustParsePrefix("2002:c000:0204::/48"), time.Hour, "test"); err != nil {
		t.Fatal(err)
	}
	if d := l.Check(t0, v4); d.Allowed {
		t.Errorf("Check(IPv4) after a ban of its 6to4 /48 allowed: %+v", d)
	}

	// Longer than /48 (an ipv6_prefix-sized /64, a single address): the
	// same IPv4 /32, which every address in it is keyed as.
	for _, s := range []string{"2002:c000:0204::/64", "2002:c000:0204::1/128"} {
		l = newLimiter(t, Config{}, nil)
		b, err := l.BanKey(t0, netip.MustParsePrefix(s), time.Hour, "test")
		if err != nil || b.Key != netip.MustParsePrefix("192.0.2.4/32") {
			t.Errorf("BanKey(%s) = %v, %v; want the ban of 192.0.2.4/32", s, b.Key, err)
		}
		if d := l.Check(t0, v4); d.Allowed {
			t.Errorf("Check(IPv4) after a ban of %s allowed: %+v", s, d)
		}
	}
}
