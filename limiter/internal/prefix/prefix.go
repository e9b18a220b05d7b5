// Package prefix normalises the network prefixes that the limiter and its
// stores use as keys, so that one network always has one key.
package prefix

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrInvalid is wrapped by the error of Norm; the limiter exports it as
// limiter.ErrInvalidPrefix.
var ErrInvalid = errors.New("limiter: invalid prefix")

// Norm masks p, and turns an IPv4-mapped IPv6 prefix of 96 bits or more
// into the IPv4 prefix it maps, a 6to4 prefix of 24 bits or more into the
// IPv4 prefix it carries (bits−16; the /32 from /48 on, as every address in
// it is keyed as that one host) and a single Teredo address (/128) into
// the client's IPv4 address (/32), as Addr keys them; shorter 6to4 and
// Teredo prefixes stay as they are (no address is keyed inside them). An
// invalid p, or a mapped prefix shorter than 96 bits (it would mix
// IPv4-mapped and IPv6 addresses), is an error wrapping ErrInvalid.
func Norm(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%w: %v", ErrInvalid, p)
	}
	a, bits := p.Addr().WithZone(""), p.Bits()
	if a.Is4In6() {
		if bits < 96 {
			return netip.Prefix{}, fmt.Errorf("%w: %v mixes IPv4-mapped and IPv6 addresses", ErrInvalid, p)
		}
		a, bits = a.Unmap(), bits-96
	}
	switch {
	case a.Is6() && sixToFour.Contains(a) && bits >= 24:
		a, bits = Addr(a), min(bits-16, 32)
	case a.Is6() && teredo.Contains(a) && bits == 128:
		a, bits = Addr(a), 32
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}
