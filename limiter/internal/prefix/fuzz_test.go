package prefix

import (
	"errors"
	"net/netip"
	"testing"
)

// FuzzNorm checks Norm and Addr together on any address (IPv4, IPv6,
// IPv4-mapped, 6to4, Teredo, with or without a zone) and any bit count:
// Norm errs exactly for an invalid prefix or a mapped one shorter than
// /96, and otherwise gives a valid, masked, zone-free, unmapped prefix
// that Norm leaves as it is; a single address normalises to the /32 or
// /128 of its Addr; an address of p is keyed (Addr) inside Norm(p) unless
// p is a tunnel prefix Norm keeps as IPv6, which keys nothing; Addr is
// idempotent, zone-free and unmapped.
func FuzzNorm(f *testing.F) {
	for _, s := range []string{
		"192.0.2.7/32", "10.1.2.3/8", "2001:db8::1/64", "::ffff:192.0.2.7/128", "::ffff:192.0.2.7/100",
		"::ffff:0:0/80", "2002:c000:204::1/48", "2002:c000:204::1/64", "2002:c000:204::1/128", "2002::/16",
		"2002:c000::/23", "2001:0:4136:e378:8000:63bf:3fff:fdd2/128", "2001::/32", "2001::/31", "::/0",
	} {
		p := netip.MustParsePrefix(s)
		f.Add(p.Addr().AsSlice(), p.Bits(), "")
	}
	f.Add(netip.MustParseAddr("fe80::1").AsSlice(), 64, "eth0")
	f.Add([]byte{1, 2, 3, 4}, 33, "")
	f.Add([]byte{1, 2, 3, 4}, -1, "")
	f.Fuzz(func(t *testing.T, b []byte, bits int, zone string) {
		var a netip.Addr
		switch {
		case len(b) >= 16:
			a = netip.AddrFrom16([16]byte(b)).WithZone(zone)
		case len(b) >= 4:
			a = netip.AddrFrom4([4]byte(b))
		default:
			return
		}
		k := Addr(a)
		if !k.IsValid() || k.Zone() != "" || k.Is4In6() || Addr(k) != k {
			t.Fatalf("Addr(%v) = %v", a, k)
		}
		if u := a.WithZone("").Unmap(); k != u && !(u.Is6() && k.Is4() && (sixToFour.Contains(u) || teredo.Contains(u))) {
			t.Fatalf("Addr(%v) = %v, not the address itself nor a tunnel's IPv4", a, k)
		}

		p := netip.PrefixFrom(a, bits)
		n, err := Norm(p)
		wantErr := !p.IsValid() || a.Is4In6() && bits < 96
		if err != nil {
			if !wantErr || !errors.Is(err, ErrInvalid) || n.IsValid() {
				t.Fatalf("Norm(%v) = %v, %v", p, n, err)
			}
			return
		}
		if wantErr {
			t.Fatalf("Norm(%v) = %v, want an error", p, n)
		}
		if !n.IsValid() || n != n.Masked() || n.Addr().Zone() != "" || n.Addr().Is4In6() {
			t.Fatalf("Norm(%v) = %v: not valid, masked, zone-free and unmapped", p, n)
		}
		if again, err := Norm(n); err != nil || again != n {
			t.Fatalf("Norm(Norm(%v) = %v) = %v, %v", p, n, again, err)
		}
		if bits == a.BitLen() {
			if want := netip.PrefixFrom(k, k.BitLen()); n != want {
				t.Fatalf("Norm(%v) = %v; the address keys as %v", p, n, want)
			}
		}
		// The address p was made from is one of p's.
		if !n.Contains(k) {
			tunnelKept := n.Addr().Is6() && (sixToFour.Overlaps(n) || teredo.Overlaps(n)) && k.Is4()
			if !tunnelKept {
				t.Fatalf("Norm(%v) = %v, which does not hold Addr(%v) = %v", p, n, a, k)
			}
		}
	})
}
