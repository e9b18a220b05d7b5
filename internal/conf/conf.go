// Package conf holds what every package that owns a section of ftpguard's
// TOML config file uses to validate it: a list of problems, each naming its
// key ("limits.failures") with one message per problem, and the parsers of
// the value shapes several sections share. cmd/ftpguard decodes the file
// into the packages' own section types, asks each to validate itself into
// one Problems, and turns the list into "file:line key: reason" lines.
//
// Conventions (one wording across sections):
//   - durations: "must be a positive duration such as \"30s\", got …"
//   - numbers:   "must be ≥ N, got …", "must be N–M, got …"
//   - choices:   "must be \"a\", \"b\" or \"c\", got …"
package conf

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Problem is one bad key of the file.
type Problem struct {
	Key    string // the full key, "section.key" ("listen" at the top)
	Reason string
}

func (p Problem) Error() string { return p.Key + ": " + p.Reason }

// Problems collects the problems of a file. The zero value is empty and
// ready to use; not safe for concurrent use.
type Problems struct {
	List []Problem
}

// Add records a problem with key.
func (p *Problems) Add(key, format string, args ...any) {
	p.List = append(p.List, Problem{Key: key, Reason: fmt.Sprintf(format, args...)})
}

// OK reports whether no problem was found.
func (p *Problems) OK() bool { return len(p.List) == 0 }

// Positive checks that d is a positive duration.
func (p *Problems) Positive(key string, d time.Duration) {
	if d <= 0 {
		p.Add(key, "must be a positive duration such as \"30s\", got %v", d)
	}
}

// AtLeast checks that n ≥ min.
func (p *Problems) AtLeast(key string, n, min int) {
	if n < min {
		p.Add(key, "must be ≥ %d, got %d", min, n)
	}
}

// Between checks that lo ≤ n ≤ hi.
func (p *Problems) Between(key string, n, lo, hi int) {
	if n < lo || n > hi {
		p.Add(key, "must be %d–%d, got %d", lo, hi, n)
	}
}

// OneOf checks that v is one of choices.
func (p *Problems) OneOf(key, v string, choices ...string) {
	for _, c := range choices {
		if v == c {
			return
		}
	}
	q := make([]string, len(choices))
	for i, c := range choices {
		q[i] = strconv.Quote(c)
	}
	list := strings.Join(q, ", ")
	if n := len(q); n > 1 {
		list = strings.Join(q[:n-1], ", ") + " or " + q[n-1]
	}
	p.Add(key, "must be %s, got %q", list, v)
}

// HostPort checks that v is host:port with a port in 0–65535.
func (p *Problems) HostPort(key, v string) {
	if _, port, err := net.SplitHostPort(v); err != nil {
		p.Add(key, "must be host:port, got %q: %v", v, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.Add(key, "port must be 0–65535, got %q", port)
	}
}

// Prefixes parses a list of IP addresses or CIDRs; each bad entry is a
// problem with key.
func (p *Problems) Prefixes(key string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range list {
		pf, err := ParsePrefix(v)
		if err != nil {
			p.Add(key, "%q is not an IP address or CIDR", v)
			continue
		}
		out = append(out, pf)
	}
	return out
}

// RedactURL returns s, a URL from the config, for a problem's text
// (printed by ftpguard check, logged by a rejected reload) with any
// password in it replaced by "xxxxx". Without an "@" there is none: s is
// returned as it is. url.URL.Redacted's form is used when url.Parse reads
// a user and the "@" that ends it is the last one; otherwise (a parse
// error, or a URL url.Parse reads without the user written, as with the
// "//" left out or an unescaped "/", "?" or "#" in the password) all
// that is between the scheme's "://" (or the start) and the last "@" is
// replaced.
func RedactURL(s string) string {
	i := strings.LastIndexByte(s, '@')
	if i < 0 {
		return s
	}
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if r := u.Redacted(); strings.Count(r, "@") == 1 {
			return r
		}
	}
	scheme := ""
	if j := strings.Index(s, "://"); j >= 0 && j < i && isScheme(s[:j]) {
		scheme = s[:j+3]
	}
	return scheme + "xxxxx" + s[i:]
}

// isScheme reports whether s is a URL scheme (RFC 3986 §3.1).
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// ParsePrefix parses an IP address (as a single-address prefix) or a CIDR,
// never a name. IPv4-mapped IPv6 forms are read as IPv4.
func ParsePrefix(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	if strings.Contains(v, "/") {
		pf, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a := pf.Addr(); a.Is4In6() && pf.Bits() >= 96 {
			pf = netip.PrefixFrom(a.Unmap(), pf.Bits()-96)
		}
		return pf.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
