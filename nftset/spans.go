package nftset

import (
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
)

// span is an inclusive range of addresses of one family banned until a
// time: one interval element of banned4 or banned6.
type span struct {
	lo, hi netip.Addr
	until  time.Time
}

// lastAddr returns the last address of the masked prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		a[i/8] |= 1 << (7 - i%8)
	}
	b := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		return b.Unmap()
	}
	return b
}

// normalize returns p masked, with an IPv4-mapped IPv6 prefix read as IPv4
// (as limiter keys are), and whether p is usable.
func normalize(p netip.Prefix) (netip.Prefix, bool) {
	if !p.IsValid() {
		return netip.Prefix{}, false
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return p.Masked(), true // a wide IPv6 prefix that happens to span the mapped range
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), true
}

// spans turns bans of one family (masked prefixes, each banned until its
// time) into the disjoint address ranges the kernel set must hold: each
// address is banned until the latest end among the prefixes containing
// it, so a /24 banned until 10:00 that contains a /32 banned until 12:00
// becomes three ranges (the part before the /32, the /32, the part after)
// rather than two overlapping elements, which an interval set rejects.
//
// Adjacent ranges with the same end are merged only inside one ban that
// ends then itself (a /32 banned until 10:00 in a /24 banned until 12:00
// leaves the /24 one range), never across two bans (two adjacent /25 stay
// two ranges): so every range lies inside a ban still in force while the
// range is, and a change of one key's ban can be planned from the bans of
// the widest ban containing it alone (plan). CIDR prefixes are nested or
// disjoint, so one sweep with a stack of the open prefixes suffices.
func spans(bans map[netip.Prefix]time.Time) []span {
	type open struct {
		first, last netip.Addr
		own         time.Time // the prefix's own end
		eff         time.Time // the latest of it and its parents' ends
	}
	keys := make([]netip.Prefix, 0, len(bans))
	for p := range bans {
		keys = append(keys, p)
	}
	// By first address, the wider of two prefixes with the same first
	// address first (it contains the other).
	slices.SortFunc(keys, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})

	var out []span
	var stack []open
	// emit appends lo–hi (inside every prefix on the stack), merged with
	// the range before when one open prefix holds both and ends at until.
	emit := func(lo, hi netip.Addr, until time.Time) {
		if n := len(out); n > 0 && out[n-1].until.Equal(until) && out[n-1].hi.Next() == lo {
			for _, o := range stack {
				if o.own.Equal(until) && o.first.Compare(out[n-1].lo) <= 0 {
					out[n-1].hi = hi
					return
				}
			}
		}
		out = append(out, span{lo, hi, until})
	}
	var pos netip.Addr // the first address not yet emitted; invalid past the end
	// pop closes the innermost open prefix: the rest of it is emitted.
	pop := func() {
		top := stack[len(stack)-1]
		if pos.IsValid() && pos.Compare(top.last) <= 0 {
			emit(pos, top.last, top.eff)
		}
		stack = stack[:len(stack)-1]
		pos = top.last.Next()
	}
	for _, p := range keys {
		first := p.Addr()
		for len(stack) > 0 && stack[len(stack)-1].last.Less(first) {
			pop()
		}
		own := bans[p]
		eff := own
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			if pos.Less(first) {
				emit(pos, first.Prev(), top.eff)
			}
			if top.eff.After(eff) {
				eff = top.eff
			}
		}
		pos = first
		stack = append(stack, open{first, lastAddr(p), own, eff})
	}
	for len(stack) > 0 {
		pop()
	}
	return out
}

// plan returns the ranges of the bans of want inside region (next), and
// the changes from have that install them: the ranges to delete (changed
// or gone, and not yet expired by now) and the ranges to add. Ranges of
// have outside region are not looked at: region is the widest ban
// containing the changed key (or the key), and each range in force lies
// inside a ban in force (see spans), so none straddles region's edge.
func plan(have map[rangeKey]time.Time, want map[netip.Prefix]time.Time, region netip.Prefix, now time.Time) (next, del, add []span) {
	sub := make(map[netip.Prefix]time.Time)
	for p, u := range want {
		if p.Bits() >= region.Bits() && region.Contains(p.Addr()) && u.After(now) {
			sub[p] = u
		}
	}
	next = spans(sub)
	in := make(map[rangeKey]time.Time, len(next))
	for _, sp := range next {
		in[rangeKey{sp.lo, sp.hi}] = sp.until
	}
	for k, u := range have {
		if !region.Contains(k.lo) || !u.After(now) {
			continue
		}
		if nu, ok := in[k]; !ok || !nu.Equal(u) {
			del = append(del, span{k.lo, k.hi, u})
		}
	}
	for _, sp := range next {
		if u, ok := have[rangeKey{sp.lo, sp.hi}]; !ok || !u.Equal(sp.until) || !u.After(now) {
			add = append(add, sp)
		}
	}
	return next, del, add
}

// elements returns the interval elements of sps: per range a start element
// (with the remaining time as its timeout when withTimeout) and an end
// element one past the range's last address, none when the range runs to
// the family's last address. The kernel rejects a timeout on an end
// element; it expires with its start.
func elements(sps []span, now time.Time, withTimeout bool) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(sps))
	for _, sp := range sps {
		e := nftables.SetElement{Key: sp.lo.AsSlice()}
		if withTimeout {
			e.Timeout = timeout(sp.until, now)
		}
		out = append(out, e)
		if end := sp.hi.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// timeout returns until−now for an element: rounded up to the millisecond
// the kernel counts in, at least 1 ms, at most maxTimeout.
func timeout(until, now time.Time) time.Duration {
	d := until.Sub(now)
	if d > maxTimeout {
		return maxTimeout
	}
	return max(time.Millisecond, (d + time.Millisecond - 1).Truncate(time.Millisecond))
}

// portElements returns the interval elements of the ports set (big-endian
// keys, as inet_service is).
func portElements(rs []PortRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(r.Lo)})
		if r.Hi < 65535 {
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(r.Hi + 1), IntervalEnd: true})
		}
	}
	return out
}
