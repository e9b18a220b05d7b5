package limiter

import "net/netip"

// Covers reports whether a ban of the prefix p applies to addr, both
// normalised as the limiter normalises them (IPv4-mapped, 6to4 and Teredo
// addresses count as the IPv4 address they carry): what the proxy asks to
// find the open sessions a new ban covers.
func Covers(p netip.Prefix, addr netip.Addr) bool {
	q, err := normPrefix(p)
	a := normAddr(addr)
	return err == nil && a.IsValid() && q.Contains(a)
}
