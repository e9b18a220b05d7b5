package crowdsec

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// FuzzParseDuration checks the LAPI's durations against time.ParseDuration:
// whatever Go reads (the value trimmed), ParseDuration reads the same
// within float64 rounding (a few ns, or 1 in 2⁵⁰); whatever it reads that
// Go does not has a day unit or is beyond time.Duration's range, where it
// saturates with the sign kept. A negated value reads as the negation,
// and formatDuration's output reads back as the value rounded to seconds.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"3h59m12.5s", "-1m2.003s", "412ms", "0s", "0", " 10m ", "1d12h", ".5s", "1.s", "3µs",
		"3μs", "2562047h47m16.854775807s", "2562048h", "-2562047h47m16.854775808s", "100000000h", "1e3s", "1..2s",
		"+5m", "-", "10", "h", "9999999999999999999999999999999999999999999999999999999999999999999999999999999d"} {
		f.Add(s, int64(0))
	}
	f.Add("", int64(math.MaxInt64))
	f.Add("", int64(math.MinInt64))
	f.Fuzz(func(t *testing.T, s string, n int64) {
		d, err := ParseDuration(s)
		trimmed := strings.TrimSpace(s)
		want, werr := time.ParseDuration(trimmed)
		switch {
		case werr == nil && err != nil:
			t.Fatalf("ParseDuration(%q): %v; time.ParseDuration reads %v", s, err, want)
		case werr == nil && !near(d, want):
			t.Fatalf("ParseDuration(%q) = %v; time.ParseDuration reads %v", s, d, want)
		case err != nil:
			if d != 0 {
				t.Fatalf("ParseDuration(%q) = %v, %v", s, d, err)
			}
			return
		case werr != nil && !strings.Contains(trimmed, "d") && !(d >= math.MaxInt64-1e7 || d <= -math.MaxInt64+1e7):
			t.Fatalf("ParseDuration(%q) = %v; time.ParseDuration: %v", s, d, werr)
		}
		if trimmed != "" && trimmed[0] != '-' && trimmed[0] != '+' {
			if neg, err := ParseDuration("-" + trimmed); err != nil || neg != -d {
				t.Fatalf("ParseDuration(%q) = %v; ParseDuration(-%q) = %v, %v", s, d, trimmed, neg, err)
			}
		}

		v := time.Duration(n)
		if v > math.MaxInt64-time.Second || v < math.MinInt64+time.Second {
			return // Round would saturate
		}
		if back, err := ParseDuration(formatDuration(v)); err != nil || back != v.Round(time.Second) {
			t.Fatalf("formatDuration(%v) = %q, read back as %v, %v", v, formatDuration(v), back, err)
		}
	})
}

// near reports whether a and b are equal but for float64 rounding.
func near(a, b time.Duration) bool {
	diff := math.Abs(float64(a) - float64(b))
	return diff <= 8 || diff <= math.Abs(float64(b))/(1<<50)
}

// FuzzDecision checks how the Bouncer takes a decision of the stream
// (every field any string) and enforces it: it takes only a ban (the type
// in any case) of scope ip (a single address, never a CIDR) or range,
// whose value conf.ParsePrefix reads and whose duration ParseDuration
// reads; its Until is now plus the duration, saturating, never wrapped
// around. Added by a stream, it is what Lookup finds for its address
// while it lasts (and nothing after); deleted by the next, it is gone.
func FuzzDecision(f *testing.F) {
	for _, d := range [][4]string{
		{"ban", "Ip", "192.0.2.7", "3h59m12.5s"},
		{"Ban", "range", "10.0.0.0/8", "1d"},
		{"ban", "Range", "::ffff:10.1.0.0/112", "10m"},
		{"ban", "Ip", "2001:db8::7", "-1m"},
		{"ban", "Ip", "10.0.0.0/8", "1h"},
		{"captcha", "Ip", "192.0.2.7", "1h"},
		{"ban", "Country", "FR", "1h"},
		{"ban", "range", "2001:db8::/32", "9999999999h"},
		{"ban", "Ip", " fe80::1%eth0 ", "1h"},
	} {
		f.Add(d[0], d[1], d[2], d[3])
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, typ, scope, value, dur string) {
		b := NewBouncer(nil, BouncerConfig{})
		r := RawDecision{ID: 7, Type: typ, Scope: scope, Value: value, Duration: dur, Origin: "crowdsec"}
		d, ok := b.decision(r, now)
		if !ok {
			if d != (Decision{}) {
				t.Fatalf("decision(%+v) = %+v, false", r, d)
			}
			return
		}
		lscope := strings.ToLower(scope)
		want, err := conf.ParsePrefix(value)
		span, derr := ParseDuration(dur)
		if !strings.EqualFold(typ, "ban") || lscope != "ip" && lscope != "range" || err != nil || derr != nil ||
			d.Prefix != want || lscope == "ip" && (strings.Contains(value, "/") || !want.IsSingleIP()) ||
			d.ID != r.ID || d.Scope != scope {
			t.Fatalf("decision(%+v) = %+v", r, d)
		}
		if span > 0 && !d.Until.After(now) || span < 0 && !d.Until.Before(now) || span == 0 && !d.Until.Equal(now) ||
			d.Until.Sub(now) != span && d.Until.Sub(now) != math.MaxInt64 {
			t.Fatalf("decision(%+v): Until %v for a duration of %v from %v", r, d.Until, span, now)
		}

		b.pollMu.Lock()
		b.applyLocked(&Stream{New: []RawDecision{r}}, true, now)
		b.publishLocked()
		b.pollMu.Unlock()
		a := d.Prefix.Addr()
		got, found := b.Lookup(a, now)
		if found != now.Before(d.Until) || found && got != d {
			t.Fatalf("decision(%+v) = %+v; Lookup(%v) = %+v, %v", r, d, a, got, found)
		}
		if _, found := b.Lookup(a, d.Until); found {
			t.Fatalf("decision(%+v) = %+v; Lookup(%v) at its Until found it", r, d, a)
		}
		b.pollMu.Lock()
		b.applyLocked(&Stream{Deleted: []RawDecision{r}}, false, now)
		b.publishLocked()
		b.pollMu.Unlock()
		if _, found := b.Lookup(a, now); found {
			t.Fatalf("decision(%+v) deleted: Lookup(%v) still finds it", r, a)
		}
	})
}
