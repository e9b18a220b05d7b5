package proxy

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePortRange checks [passive] ports: taken exactly when it is
// "LOW-HIGH" or a single port (spaces around each number allowed) with
// decimal ports 1024 ≤ LOW ≤ HIGH ≤ 65535, as written; "LOW-HIGH" written
// back reads as the same range; an error quotes the value.
func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"50000-50099", " 50000 - 50099 ", "2121", "1023-2000", "1024-65535", "65536", "2-1",
		"+2000", "02000-02001", "1-2-3", "-", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r, err := parsePortRange(v)
		lo, hi, ok := modelPassivePorts(v)
		if err != nil {
			if ok || r != (PortRange{}) || !strings.Contains(err.Error(), strconv.Quote(v)) {
				t.Fatalf("parsePortRange(%q) = %v, %v; model %d-%d, %v", v, r, err, lo, hi, ok)
			}
			return
		}
		if !ok || r.Min != lo || r.Max != hi {
			t.Fatalf("parsePortRange(%q) = %+v; model %d-%d, %v", v, r, lo, hi, ok)
		}
		s := strconv.Itoa(int(r.Min)) + "-" + strconv.Itoa(int(r.Max))
		if back, err := parsePortRange(s); err != nil || back != r {
			t.Fatalf("parsePortRange(%q) = %+v; parsePortRange(%q) = %+v, %v", v, r, s, back, err)
		}
	})
}

// modelPassivePorts reads "LOW-HIGH" or "PORT" as the config documents it.
func modelPassivePorts(v string) (lo, hi uint16, ok bool) {
	port := func(s string) (uint16, bool) {
		s = strings.TrimSpace(s)
		if s == "" || strings.Trim(s, "0123456789") != "" {
			return 0, false
		}
		if s = strings.TrimLeft(s, "0"); len(s) > 5 {
			return 0, false
		}
		n, _ := strconv.Atoi(s)
		return uint16(n), n >= 1024 && n <= 65535
	}
	a, b, isRange := strings.Cut(strings.TrimSpace(v), "-")
	if !isRange {
		b = a
	}
	lo, ok1 := port(a)
	hi, ok2 := port(b)
	return lo, hi, ok1 && ok2 && lo <= hi
}
