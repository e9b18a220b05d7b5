package prefix

import "net/netip"

// The two IPv6 transition schemes that carry the client's public IPv4
// address inside its IPv6 address. A host that is refused on its IPv4
// address must not come back through them, and it cannot pretend to be
// another IPv4 host: the replies to a 6to4 or Teredo address go to the IPv4
// address it carries, so a TCP handshake completes only for its owner.
var (
	sixToFour = netip.MustParsePrefix("2002::/16") // RFC 3056
	teredo    = netip.MustParsePrefix("2001::/32") // RFC 4380
)

// Addr normalises an address for keying: the zone is dropped, an
// IPv4-mapped address is unmapped, a 6to4 address (2002::/16) becomes the
// IPv4 address in its bits 16–47, and a Teredo address (2001::/32) becomes
// the client's public IPv4 address it carries in its bits 96–127, inverted
// (RFC 4380 §4). Any other address is returned unmapped and without zone.
func Addr(a netip.Addr) netip.Addr {
	a = a.WithZone("").Unmap()
	if !a.Is6() {
		return a
	}
	b := a.As16()
	switch {
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	case teredo.Contains(a):
		return netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
	}
	return a
}
