package limiter

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestCoverSet: a CoverSet finds, among its prefixes, the longest covering
// an address, normalised as Covers normalises (IPv4-mapped, 6to4 and
// Teredo addresses count as their IPv4 address); and over random sets it
// agrees with Covers asked of each prefix in turn.
func TestCoverSet(t *testing.T) {
	var c CoverSet[string]
	for _, p := range []string{"192.0.2.0/24", "192.0.2.7/32", "10.0.0.0/8", "2001:db8::/48", "2001:db8:0:1::/64",
		"::ffff:198.51.100.0/120", "2002::/16"} {
		if !c.Add(netip.MustParsePrefix(p), p) {
			t.Fatalf("Add(%s) refused", p)
		}
	}
	if c.Add(netip.Prefix{}, "invalid") || c.Add(netip.MustParsePrefix("::ffff:0:0/80"), "mixed") {
		t.Error("an invalid prefix was added")
	}
	c.Add(netip.MustParsePrefix("192.0.2.7/32"), "again") // the first value stays
	tests := []struct{ addr, want string }{
		{"192.0.2.7", "192.0.2.7/32"},
		{"192.0.2.8", "192.0.2.0/24"},
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{"2002:c000:0207::1", "192.0.2.7/32"}, // 6to4 of 192.0.2.7: not the 6to4 range, which keys nothing
		{"10.200.0.1", "10.0.0.0/8"},
		{"198.51.100.9", "::ffff:198.51.100.0/120"},
		{"2001:db8:0:1::5", "2001:db8:0:1::/64"},
		{"2001:db8:0:2::5", "2001:db8::/48"},
		{"2001:db9::1", ""},
		{"203.0.113.1", ""},
	}
	for _, tc := range tests {
		got, ok := c.Lookup(netip.MustParseAddr(tc.addr))
		if !ok {
			got = ""
		}
		if got != tc.want {
			t.Errorf("Lookup(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if _, ok := (&CoverSet[int]{}).Lookup(netip.MustParseAddr("192.0.2.1")); ok {
		t.Error("the empty set covers an address")
	}

	r := rand.New(rand.NewPCG(1, 2))
	addr := func() netip.Addr {
		if r.IntN(2) == 0 {
			return netip.AddrFrom4([4]byte{192, 0, byte(r.IntN(4)), byte(r.IntN(8))})
		}
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(r.IntN(8)), 7: byte(r.IntN(4))})
	}
	for range 200 {
		var set CoverSet[int]
		var ps []netip.Prefix
		for range r.IntN(20) {
			a := addr()
			p, _ := a.Prefix(a.BitLen() - r.IntN(a.BitLen()/2+1))
			ps = append(ps, p)
			set.Add(p, 0)
		}
		for range 20 {
			a := addr()
			want := false
			for _, p := range ps {
				want = want || Covers(p, a)
			}
			if _, got := set.Lookup(a); got != want {
				t.Fatalf("%v in %v: Lookup %v, Covers %v", a, ps, got, want)
			}
		}
	}
}
