package admin

import (
	"fmt"
	"math/big"
	"net/netip"
	"strings"
)

// checkBanWidth refuses an admin ban of key wider than [admin]
// max_ban_prefix_ipv4/_ipv6 (a shorter prefix) unless forced: 0.0.0.0/0
// typed for 10.0.0.0/8, or an IPv6 /6 for a /64, would lock every client
// out — and be pushed to the firewall.
func (a *Server) checkBanWidth(key netip.Prefix, force bool) error {
	limit := a.st.Load().banLimit(key.Addr().Is4())
	if force || key.Bits() >= limit {
		return nil
	}
	family, knob := "IPv4", "max_ban_prefix_ipv4"
	if !key.Addr().Is4() {
		family, knob = "IPv6", "max_ban_prefix_ipv6"
	}
	return fmt.Errorf("ip: %v covers %s, wider than [admin] %s = %d allows (an %s ban must be a /%d or narrower); "+
		"check the prefix, or force it (ftpguard bans add … --force, API \"force\": true)", key, Covers(key), knob, limit, family, limit)
}

// Covers says how many addresses p covers: "1 address", "65,536
// addresses", "2^64 addresses (18,446,744,073,709,551,616)".
func Covers(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	host := p.Addr().BitLen() - p.Bits()
	if host == 0 {
		return "1 address"
	}
	n := new(big.Int).Lsh(big.NewInt(1), uint(host))
	s := groupThousands(n.String()) + " addresses"
	if host >= 32 {
		s = fmt.Sprintf("2^%d addresses (%s)", host, groupThousands(n.String()))
	}
	return s
}

// groupThousands puts a comma between groups of three digits.
func groupThousands(d string) string {
	var b strings.Builder
	for i, c := range d {
		if i > 0 && (len(d)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
