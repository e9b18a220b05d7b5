package nftset

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

// fmtSpans formats spans as "lo-hi@+minutes".
func fmtSpans(sps []span) string {
	var b []string
	for _, sp := range sps {
		b = append(b, fmt.Sprintf("%v-%v@+%v", sp.lo, sp.hi, sp.until.Sub(t0)))
	}
	return strings.Join(b, " ")
}

func TestSpans(t *testing.T) {
	h := time.Hour
	tests := []struct {
		name string
		bans map[string]time.Duration
		want string
	}{
		{"none", nil, ""},
		{"one address", map[string]time.Duration{"10.0.0.1/32": h},
			"10.0.0.1-10.0.0.1@+1h0m0s"},
		{"a /24 is one range", map[string]time.Duration{"10.0.0.0/24": h},
			"10.0.0.0-10.0.0.255@+1h0m0s"},
		{"disjoint", map[string]time.Duration{"10.0.0.9/32": h, "10.0.0.1/32": 2 * h},
			"10.0.0.1-10.0.0.1@+2h0m0s 10.0.0.9-10.0.0.9@+1h0m0s"},
		{"adjacent, same end: two bans, two ranges", map[string]time.Duration{"10.0.0.0/25": h, "10.0.0.128/25": h},
			"10.0.0.0-10.0.0.127@+1h0m0s 10.0.0.128-10.0.0.255@+1h0m0s"},
		{"siblings outlasting their parent are not merged", map[string]time.Duration{"10.0.0.0/24": h, "10.0.0.0/25": 2 * h, "10.0.0.128/25": 2 * h},
			"10.0.0.0-10.0.0.127@+2h0m0s 10.0.0.128-10.0.0.255@+2h0m0s"},
		{"a /32 ending with its /24 is merged into it", map[string]time.Duration{"10.0.0.0/24": h, "10.0.0.5/32": h},
			"10.0.0.0-10.0.0.255@+1h0m0s"},
		{"adjacent, other ends: kept apart", map[string]time.Duration{"10.0.0.0/25": h, "10.0.0.128/25": 2 * h},
			"10.0.0.0-10.0.0.127@+1h0m0s 10.0.0.128-10.0.0.255@+2h0m0s"},
		{"/32 outlasts its /24", map[string]time.Duration{"10.0.0.0/24": h, "10.0.0.5/32": 2 * h},
			"10.0.0.0-10.0.0.4@+1h0m0s 10.0.0.5-10.0.0.5@+2h0m0s 10.0.0.6-10.0.0.255@+1h0m0s"},
		{"/24 outlasts its /32", map[string]time.Duration{"10.0.0.0/24": 2 * h, "10.0.0.5/32": h},
			"10.0.0.0-10.0.0.255@+2h0m0s"},
		{"/32 at the /24's edges", map[string]time.Duration{"10.0.0.0/24": h, "10.0.0.0/32": 2 * h, "10.0.0.255/32": 3 * h},
			"10.0.0.0-10.0.0.0@+2h0m0s 10.0.0.1-10.0.0.254@+1h0m0s 10.0.0.255-10.0.0.255@+3h0m0s"},
		{"three levels", map[string]time.Duration{"10.0.0.0/16": h, "10.0.1.0/24": 2 * h, "10.0.1.7/32": 3 * h, "10.0.2.0/24": h / 2},
			"10.0.0.0-10.0.0.255@+1h0m0s 10.0.1.0-10.0.1.6@+2h0m0s 10.0.1.7-10.0.1.7@+3h0m0s 10.0.1.8-10.0.1.255@+2h0m0s 10.0.2.0-10.0.255.255@+1h0m0s"},
		{"the family's last address", map[string]time.Duration{"255.255.255.0/24": h, "255.255.255.255/32": 2 * h},
			"255.255.255.0-255.255.255.254@+1h0m0s 255.255.255.255-255.255.255.255@+2h0m0s"},
		{"all of IPv4", map[string]time.Duration{"0.0.0.0/0": h},
			"0.0.0.0-255.255.255.255@+1h0m0s"},
		{"IPv6 /64", map[string]time.Duration{"2001:db8:1:2::/64": h},
			"2001:db8:1:2::-2001:db8:1:2:ffff:ffff:ffff:ffff@+1h0m0s"},
		{"IPv6 /128 in a /64", map[string]time.Duration{"2001:db8::/64": h, "2001:db8::1/128": 2 * h},
			"2001:db8::-2001:db8::@+1h0m0s 2001:db8::1-2001:db8::1@+2h0m0s 2001:db8::2-2001:db8::ffff:ffff:ffff:ffff@+1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bans := make(map[netip.Prefix]time.Time)
			for p, d := range tt.bans {
				bans[netip.MustParsePrefix(p)] = t0.Add(d)
			}
			if got := fmtSpans(spans(bans)); got != tt.want {
				t.Errorf("spans:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestElements(t *testing.T) {
	sps := []span{
		{netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.0.255"), t0.Add(90 * time.Second)},
		{netip.MustParseAddr("255.255.255.255"), netip.MustParseAddr("255.255.255.255"), t0.Add(time.Nanosecond)},
	}
	got := elements(sps, t0, true)
	want := []nftables.SetElement{
		{Key: []byte{10, 0, 0, 0}, Timeout: 90 * time.Second},
		{Key: []byte{10, 0, 1, 0}, IntervalEnd: true},
		{Key: []byte{255, 255, 255, 255}, Timeout: time.Millisecond}, // no end: runs to the last address
	}
	if !slices.EqualFunc(got, want, func(a, b nftables.SetElement) bool {
		return slices.Equal(a.Key, b.Key) && a.IntervalEnd == b.IntervalEnd && a.Timeout == b.Timeout
	}) {
		t.Errorf("elements = %+v, want %+v", got, want)
	}
	for _, e := range elements(sps, t0, false) {
		if e.Timeout != 0 {
			t.Errorf("elements without timeout: %+v", e)
		}
	}
}

func TestTimeoutBounds(t *testing.T) {
	for _, tt := range []struct {
		d, want time.Duration
	}{
		{time.Hour, time.Hour},
		{1500 * time.Microsecond, 2 * time.Millisecond},
		{time.Nanosecond, time.Millisecond},
		{100 * 365 * 24 * time.Hour, maxTimeout},
	} {
		if got := timeout(t0.Add(tt.d), t0); got != tt.want {
			t.Errorf("timeout(+%v) = %v, want %v", tt.d, got, tt.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.7/24":          "10.0.0.0/24",
		"::ffff:10.0.0.7/128":  "10.0.0.7/32",
		"::ffff:10.0.0.0/120":  "10.0.0.0/24",
		"2001:db8::1:2:3:4/64": "2001:db8::/64",
	} {
		got, ok := normalize(netip.MustParsePrefix(in))
		if !ok || got.String() != want {
			t.Errorf("normalize(%s) = %v, %v; want %s", in, got, ok, want)
		}
	}
	if _, ok := normalize(netip.Prefix{}); ok {
		t.Error("normalize(zero prefix) ok")
	}
}

func TestChunks(t *testing.T) {
	var elems []nftables.SetElement
	for range elemsPerMsg {
		elems = append(elems, nftables.SetElement{}, nftables.SetElement{IntervalEnd: true})
	}
	elems = append(elems, nftables.SetElement{}) // a range to the last address
	cs := chunks(elems)
	n := 0
	for i, c := range cs {
		if len(c) > elemsPerMsg+1 {
			t.Errorf("chunk %d has %d elements", i, len(c))
		}
		if c[0].IntervalEnd {
			t.Errorf("chunk %d starts with an end element", i)
		}
		n += len(c)
	}
	if n != len(elems) {
		t.Errorf("chunks hold %d elements, want %d", n, len(elems))
	}
}

// TestSpansRandom checks spans against a per-address computation: random
// nested bans inside 10.0.0.0/24.
func TestSpansRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 500 {
		bans := make(map[netip.Prefix]time.Time)
		for range rng.IntN(8) + 1 {
			bits := 24 + rng.IntN(9)
			a := netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(256))})
			bans[netip.PrefixFrom(a, bits).Masked()] = t0.Add(time.Duration(rng.IntN(4)+1) * time.Hour)
		}
		want := make(map[netip.Addr]time.Time)
		for p, u := range bans {
			for a := p.Addr(); p.Contains(a); a = a.Next() {
				if u.After(want[a]) {
					want[a] = u
				}
			}
		}
		got := make(map[netip.Addr]time.Time)
		sps := spans(bans)
		for i, sp := range sps {
			if i > 0 && !sps[i-1].hi.Less(sp.lo) {
				t.Fatalf("round %d: spans overlap or are out of order: %s", round, fmtSpans(sps))
			}
			for a := sp.lo; a.Compare(sp.hi) <= 0; a = a.Next() {
				got[a] = sp.until
			}
		}
		if len(got) != len(want) {
			t.Fatalf("round %d: %d addresses banned, want %d; bans %v: %s", round, len(got), len(want), bans, fmtSpans(sps))
		}
		for a, u := range want {
			if !got[a].Equal(u) {
				t.Fatalf("round %d: %v banned until %v, want %v; bans %v", round, a, got[a], u, bans)
			}
		}
	}
}

// TestPlanModel drives random Adds, Removes and expiries through the same
// steps as Set.applyLocked against a model of the kernel set, which
// rejects the delete of a missing range and the add of an overlapping one,
// and checks after each step that every address is banned until the
// latest end of the bans in force containing it.
func TestPlanModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 1000 {
		s := &Set{want: make(map[netip.Prefix]time.Time)}
		s.have = [2]map[rangeKey]time.Time{{}, {}}
		kernel := make(map[rangeKey]time.Time)
		now := t0
		for step := range 40 {
			now = now.Add(time.Duration(rng.IntN(4)) * 10 * time.Minute) // coarse: ends coincide
			// The kernel's expiry.
			for k, u := range kernel {
				if !u.After(now) {
					delete(kernel, k)
				}
			}
			bits := 27 + rng.IntN(6) // within 10.0.0.0/27: much nesting
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(32))}), bits).Masked()
			var region netip.Prefix
			if rng.IntN(4) == 0 { // Remove
				if _, ok := s.want[p]; !ok {
					continue
				}
				region = s.regionLocked(p)
				delete(s.want, p)
			} else {
				s.want[p] = now.Add(time.Duration(rng.IntN(12)+1) * 10 * time.Minute)
				region = s.regionLocked(p)
			}
			s.pruneLocked(now)
			next, del, add := plan(s.have[0], s.want, region, now)
			for _, d := range del {
				k := rangeKey{d.lo, d.hi}
				if _, ok := kernel[k]; !ok {
					t.Fatalf("round %d step %d: delete of %v–%v, not in the kernel", round, step, d.lo, d.hi)
				}
				delete(kernel, k)
			}
			for _, a := range add {
				for k := range kernel {
					if !(a.hi.Less(k.lo) || k.hi.Less(a.lo)) {
						t.Fatalf("round %d step %d: add of %v–%v overlaps %v–%v", round, step, a.lo, a.hi, k.lo, k.hi)
					}
				}
				kernel[rangeKey{a.lo, a.hi}] = a.until
			}
			for k := range s.have[0] {
				if region.Contains(k.lo) {
					delete(s.have[0], k)
				}
			}
			for _, sp := range next {
				s.have[0][rangeKey{sp.lo, sp.hi}] = sp.until
			}
			// The kernel against the bans in force, address by address.
			want := make(map[netip.Addr]time.Time)
			for q, u := range s.want {
				for a := q.Addr(); q.Contains(a); a = a.Next() {
					if u.After(want[a]) {
						want[a] = u
					}
				}
			}
			got := make(map[netip.Addr]time.Time)
			for k, u := range kernel {
				for a := k.lo; a.Compare(k.hi) <= 0; a = a.Next() {
					if _, dup := got[a]; dup {
						t.Fatalf("round %d step %d: %v in two ranges", round, step, a)
					}
					got[a] = u
				}
			}
			if len(got) != len(want) {
				t.Fatalf("round %d step %d: kernel bans %d addresses, want %d", round, step, len(got), len(want))
			}
			for a, u := range want {
				if !got[a].Equal(u) {
					t.Fatalf("round %d step %d: %v banned until %v, want %v", round, step, a, got[a].Sub(t0), u.Sub(t0))
				}
			}
		}
	}
}
