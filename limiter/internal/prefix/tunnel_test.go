package prefix

import (
	"net/netip"
	"testing"
)

func TestAddrTunnels(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"2002:c000:0204::1", "192.0.2.4"},                     // 6to4, RFC 3056
		{"2002:c000:0204:ffff:1:2:3:4", "192.0.2.4"},           // any host behind it
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"}, // Teredo, RFC 4380 §4 example
		{"2001:0:4136:e378:8000:63bf:3fff:fdd3", "192.0.2.44"}, // another Teredo client
		{"2001:db8::1", "2001:db8::1"},                         // documentation /32, not Teredo
		{"2001:1::1", "2001:1::1"},                             // next to Teredo
		{"2003::1", "2003::1"},                                 // next to 6to4
		{"::ffff:192.0.2.7", "192.0.2.7"},                      // mapped
		{"fe80::1%eth0", "fe80::1"},                            // zone
		{"192.0.2.9", "192.0.2.9"},                             // IPv4
	} {
		if got := Addr(netip.MustParseAddr(tt.in)); got != netip.MustParseAddr(tt.want) {
			t.Errorf("Addr(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestNormTunnels(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"2002:c000:0204::/48", "192.0.2.4/32"},
		{"2002:c000:0200::/40", "192.0.2.0/24"},
		{"2002:c000:0204:8000::/49", "192.0.2.4/32"}, // longer than /48: still the one IPv4 host
		{"2002:c000:0204::/64", "192.0.2.4/32"},
		{"2002:c000:0204::1/128", "192.0.2.4/32"}, // as Addr keys the address
		{"2002::/16", "2002::/16"},                // left alone, never 0.0.0.0/0
		{"2002:c000::/23", "2002:c000::/23"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2/128", "192.0.2.45/32"},
		{"2001::/32", "2001::/32"},
		{"2001:db8::/64", "2001:db8::/64"},
	} {
		got, err := Norm(netip.MustParsePrefix(tt.in))
		if err != nil || got != netip.MustParsePrefix(tt.want) {
			t.Errorf("Norm(%s) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}
