package limiter

import (
	"net/netip"
	"slices"
)

// Covers reports whether a ban of the prefix p applies to addr, both
// normalised as the limiter normalises them (IPv4-mapped, 6to4 and Teredo
// addresses count as the IPv4 address they carry): what the proxy asks to
// find the open sessions a new ban covers.
func Covers(p netip.Prefix, addr netip.Addr) bool {
	q, err := NormPrefix(p)
	a := normAddr(addr)
	return err == nil && a.IsValid() && q.Contains(a)
}

// CoverSet is a set of ban prefixes, each with a value, that finds the
// ones covering an address as Covers would, in time proportional to the
// number of distinct prefix lengths it holds (at most 33 for IPv4, 129 for
// IPv6), not to the number of prefixes: the proxy finds the open sessions
// a batch of bans covers (a CrowdSec poll may bring tens of thousands of
// decisions) in one pass over the sessions. The zero value is an empty
// set. Not safe for concurrent use while Add is called.
type CoverSet[V any] struct {
	m            map[netip.Prefix]V
	bits4, bits6 []int // the distinct lengths held, longest first
}

// Add adds p with v (a prefix added before keeps its value) and reports
// whether p was valid.
func (c *CoverSet[V]) Add(p netip.Prefix, v V) bool {
	q, err := NormPrefix(p)
	if err != nil {
		return false
	}
	if _, ok := c.m[q]; ok {
		return true
	}
	if c.m == nil {
		c.m = make(map[netip.Prefix]V)
	}
	c.m[q] = v
	bits := &c.bits6
	if q.Addr().Is4() {
		bits = &c.bits4
	}
	i, found := slices.BinarySearchFunc(*bits, q.Bits(), func(e, t int) int { return t - e })
	if !found {
		*bits = slices.Insert(*bits, i, q.Bits())
	}
	return true
}

// Len returns how many distinct prefixes c holds.
func (c *CoverSet[V]) Len() int { return len(c.m) }

// Lookup returns the value of the longest prefix of c that covers addr
// (Covers), and whether there is one.
func (c *CoverSet[V]) Lookup(addr netip.Addr) (v V, ok bool) {
	a := normAddr(addr)
	if !a.IsValid() || len(c.m) == 0 {
		return v, false
	}
	bits := c.bits6
	if a.Is4() {
		bits = c.bits4
	}
	for _, b := range bits {
		p, _ := a.Prefix(b)
		if v, ok = c.m[p]; ok {
			return v, true
		}
	}
	return v, false
}
