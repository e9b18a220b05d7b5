package crowdsec

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseDuration reads a duration as the LAPI writes it: Go's syntax
// ("3h59m12.5s", "-1m2.003s" once expired, "412ms", "0s"), also with a day
// unit ("1d12h", as cscli accepts). Values beyond time.Duration's range are
// clamped to it rather than refused: a decision of a thousand years still
// bans. Unknown units, empty strings and missing numbers are errors.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	s = strings.TrimSpace(s)
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "" {
		return 0, fmt.Errorf("crowdsec: bad duration %q", orig)
	}
	if s == "0" {
		return 0, nil
	}
	var total float64 // nanoseconds; float so that overflow saturates
	for s != "" {
		i := 0
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("crowdsec: bad duration %q", orig)
		}
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("crowdsec: bad duration %q", orig)
		}
		s = s[i:]
		j := 0
		for j < len(s) && !(s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
			j++
		}
		var unit float64
		switch s[:j] {
		case "ns":
			unit = float64(time.Nanosecond)
		case "us", "µs", "μs":
			unit = float64(time.Microsecond)
		case "ms":
			unit = float64(time.Millisecond)
		case "s":
			unit = float64(time.Second)
		case "m":
			unit = float64(time.Minute)
		case "h":
			unit = float64(time.Hour)
		case "d":
			unit = float64(24 * time.Hour)
		default:
			return 0, fmt.Errorf("crowdsec: bad duration %q: unit %q", orig, s[:j])
		}
		s = s[j:]
		total += n * unit
	}
	d := time.Duration(math.MaxInt64)
	if total < float64(math.MaxInt64) { // float64(MaxInt64) is 2⁶³: converting it back would overflow
		d = time.Duration(total)
	}
	if neg {
		d = -d
	}
	return d, nil
}

// formatDuration writes d for the LAPI, whole seconds ("2h0m0s").
func formatDuration(d time.Duration) string {
	return d.Round(time.Second).String()
}
