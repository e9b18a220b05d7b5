package nftset

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePortRange checks the [firewall] ports, a list of them as the
// config holds it (split here at ","): each entry is taken exactly when
// it is "N" or "N-M" (spaces around each number allowed) with decimal
// ports 1 ≤ N ≤ M ≤ 65535, as written; String reads back as the same
// range; an error quotes the entry. mergePorts of the entries taken covers
// exactly their ports, in sorted ranges that neither overlap nor touch
// (the drop rule's interval set refuses overlaps).
func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"21", " 50000-50099 ", "21,22,990,50000-50099,50050-50200", "0", "65535", "65536",
		"2-1", "1- 2", "+21", "021", "1-2-3", "-", "", "21-21,20,22", "1-65535,1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		var rs []PortRange
		for _, v := range strings.Split(list, ",") {
			r, err := ParsePortRange(v)
			lo, hi, ok := modelPortRange(v)
			if err != nil {
				if ok || r != (PortRange{}) || !strings.Contains(err.Error(), strconv.Quote(v)) {
					t.Fatalf("ParsePortRange(%q) = %v, %v; model %d-%d, %v", v, r, err, lo, hi, ok)
				}
				continue
			}
			if !ok || r.Lo != lo || r.Hi != hi {
				t.Fatalf("ParsePortRange(%q) = %v; model %d-%d, %v", v, r, lo, hi, ok)
			}
			if back, err := ParsePortRange(r.String()); err != nil || back != r {
				t.Fatalf("ParsePortRange(%q) = %v; ParsePortRange(%q) = %v, %v", v, r, r.String(), back, err)
			}
			rs = append(rs, r)
		}
		merged := mergePorts(rs)
		for i, r := range merged {
			if r.Lo > r.Hi || i > 0 && uint32(merged[i-1].Hi)+1 >= uint32(r.Lo) {
				t.Fatalf("mergePorts(%v) = %v: not sorted, apart and not touching", rs, merged)
			}
		}
		// Both are unions of ranges: they hold the same ports if they
		// agree at every range's ends and the ports just outside them.
		for _, r := range append(slices.Clone(rs), merged...) {
			for _, p := range []int{int(r.Lo) - 1, int(r.Lo), int(r.Hi), int(r.Hi) + 1} {
				if holds(merged, p) != holds(rs, p) {
					t.Fatalf("mergePorts(%v) = %v: port %d differs", rs, merged, p)
				}
			}
		}
	})
}

func holds(rs []PortRange, port int) bool {
	return slices.ContainsFunc(rs, func(r PortRange) bool { return int(r.Lo) <= port && port <= int(r.Hi) })
}

// modelPortRange reads "N" or "N-M" as the config documents it.
func modelPortRange(v string) (lo, hi uint16, ok bool) {
	port := func(s string) (uint16, bool) {
		s = strings.TrimSpace(s)
		if s == "" || strings.Trim(s, "0123456789") != "" {
			return 0, false
		}
		s = strings.TrimLeft(s, "0")
		if s == "" || len(s) > 5 {
			return 0, false
		}
		n, _ := strconv.Atoi(s)
		return uint16(n), n >= 1 && n <= 65535
	}
	a, b, isRange := strings.Cut(strings.TrimSpace(v), "-")
	if !isRange {
		b = a
	}
	lo, ok1 := port(a)
	hi, ok2 := port(b)
	return lo, hi, ok1 && ok2 && lo <= hi
}
