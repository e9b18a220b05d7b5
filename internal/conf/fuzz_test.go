package conf

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

// FuzzParsePrefix checks that ParsePrefix accepts exactly what netip
// parses as a CIDR (with a "/") or an address (without: never a name),
// and gives a valid, masked, zone-free prefix holding the address written,
// read as IPv4 when written IPv4-mapped (/96 or longer), whose String
// parses back to it.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{
		"192.0.2.7", " 10.0.0.0/8 ", "10.1.2.3/8", "2001:db8::1/64", "::ffff:192.0.2.7", "::ffff:192.0.2.0/120",
		"::ffff:0:0/80", "fe80::1%eth0", "fe80::1%eth0/64", "example.com", "1.2.3.4/33", "01.2.3.4", "::/0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		p, err := ParsePrefix(v)
		trimmed := strings.TrimSpace(v)
		var written netip.Addr
		var werr error
		cidr := strings.Contains(trimmed, "/")
		if cidr {
			var q netip.Prefix
			q, werr = netip.ParsePrefix(trimmed)
			written = q.Addr()
		} else {
			written, werr = netip.ParseAddr(trimmed)
		}
		if err != nil {
			if werr == nil || p.IsValid() {
				t.Fatalf("ParsePrefix(%q) = %v, %v; netip reads it (%v)", v, p, err, written)
			}
			return
		}
		if werr != nil {
			t.Fatalf("ParsePrefix(%q) = %v; netip does not read it: %v", v, p, werr)
		}
		a := p.Addr()
		if !p.IsValid() || p != p.Masked() || a.Zone() != "" || a.Is4In6() && p.Bits() >= 96 {
			t.Fatalf("ParsePrefix(%q) = %v: not valid, masked, zone-free and unmapped", v, p)
		}
		if !cidr && p.Bits() != a.BitLen() {
			t.Fatalf("ParsePrefix(%q) = %v: an address is not a single-address prefix", v, p)
		}
		w := written.WithZone("")
		if w.Is4In6() && (!cidr || p.Addr().Is4()) {
			w = w.Unmap()
		}
		if !p.Contains(w) {
			t.Fatalf("ParsePrefix(%q) = %v, which does not hold %v", v, p, w)
		}
		if back, err := ParsePrefix(p.String()); err != nil || back != p {
			t.Fatalf("ParsePrefix(%q) = %v; ParsePrefix(%q) = %v, %v", v, p, p.String(), back, err)
		}
	})
}

// FuzzRedactURL checks that a password written into a URL — whatever is
// between the ":" after a scheme and user name and the last "@", however
// malformed the rest — never appears in RedactURL's output, unless the same output
// with another password holds that text too (it is then the text of
// another part, not the password's). A URL without "@" holds no password
// and is returned as it is; a well-formed one keeps all but the password.
func FuzzRedactURL(f *testing.F) {
	for _, s := range [][4]string{
		{"redis://", "user", "s3cret", "host:6379/0"},
		{"redis://", "", "s3cret", "127.0.0.1:6379"},
		{"rediss://", "u", "p@ss:w/rd", "h:6380"},
		{"http://", "u", "s3cret", "127.0.0.1:8080/"},
		{"redis:", "user", "s3cret", "host:6379/0"}, // "//" left out
		{"redis://", "u", "12/34", "host:6379"},     // an unescaped "/"
		{"redis://", "u", "s3cret#x", "host:6379"},  // an unescaped "#"
		{"redis:///", "u", "s3cret", "h"},
		{"redis://h:1/x?y=", "u", "s3cret", "z"},
		{"", "", "s3cret", "h"},
		{"", "a", "b:/c", "h"}, // "a:" is a scheme
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, scheme, user, pass, rest string) {
		s := scheme + user + ":" + pass + "@" + rest
		out := RedactURL(s)
		// A scheme ("redis:", "redis://", or "") and a user name as
		// written, not parts of the password or taken for a scheme.
		written := (scheme == "" && user == "" || schemeRE.MatchString(scheme)) && !strings.ContainsAny(user, ":/@?#")
		if written && len(pass) >= 3 && strings.Contains(out, pass) {
			if other := RedactURL(scheme + user + ":P@" + rest); !strings.Contains(other, pass) {
				t.Fatalf("RedactURL(%q) = %q: the password %q shows", s, out, pass)
			}
		}
		if !strings.Contains(rest, "@") {
			noAt := scheme + user + rest
			if !strings.Contains(noAt, "@") && RedactURL(noAt) != noAt {
				t.Fatalf("RedactURL(%q) = %q; nothing to redact", noAt, RedactURL(noAt))
			}
		}
		if plain(user) && plain(pass) && plain(rest) && rest != "" {
			for _, sch := range []string{"redis://", "https://"} {
				in := sch + user + ":" + pass + "@" + rest
				if got, want := RedactURL(in), sch+user+":xxxxx@"+rest; got != want {
					t.Fatalf("RedactURL(%q) = %q, want %q", in, got, want)
				}
			}
		}
	})
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:/*$`)

// plain reports whether s is made of letters and digits only.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
