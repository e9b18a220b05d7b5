package admin

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
)

// FuzzParseBanDuration checks the duration of POST /bans against a model:
// "" is 0 (the escalated ban time); "Nd" is N days for N = 1…3650; any
// other string is what time.ParseDuration reads, if that is positive and
// at most ten years; everything else is an error that starts with
// "duration: " and quotes the value. A duration taken reads back from its
// String. n tries "<n>d" for any int64 n.
func FuzzParseBanDuration(f *testing.F) {
	for _, s := range []string{"", "90m", " 2h ", "7d", "+7d", "007d", "0d", "-1d", "3650d", "3651d", "1.5d", "1d12h",
		"87600h", "87600h0m0.000000001s", "-5m", "soon", "9223372036854775807ns", "-281474976710655d"} {
		f.Add(s, int64(1))
	}
	f.Add("", int64(-281474976710655))
	f.Fuzz(func(t *testing.T, v string, n int64) {
		check := func(v string) {
			d, err := parseBanDuration(v)
			want, ok := modelBanDuration(v)
			if err != nil {
				if ok || d != 0 || !strings.HasPrefix(err.Error(), "duration: ") ||
					!strings.Contains(err.Error(), strconv.Quote(strings.TrimSpace(v))) {
					t.Fatalf("parseBanDuration(%q) = %v, %v; model: %v, %v", v, d, err, want, ok)
				}
				return
			}
			if !ok || d != want {
				t.Fatalf("parseBanDuration(%q) = %v; model: %v, %v", v, d, want, ok)
			}
			if d != 0 {
				if back, err := parseBanDuration(d.String()); err != nil || back != d {
					t.Fatalf("parseBanDuration(%q) = %v; parseBanDuration(%q) = %v, %v", v, d, d.String(), back, err)
				}
			}
		}
		check(v)
		check(strconv.FormatInt(n, 10) + "d")
	})
}

// modelBanDuration is what parseBanDuration should give v, computed apart.
func modelBanDuration(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, true
	}
	var d time.Duration
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.ParseInt(n, 10, 64)
		if err != nil || days < 1 || days > 3650 {
			return 0, false
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, false
		}
	}
	return d, d > 0 && d <= 10*365*24*time.Hour
}

// FuzzParseTarget checks the ip of POST /bans and DELETE /bans/{key}
// (limits ipv4_prefix 24, ipv6_prefix 56): an error starts with "ip: " and
// gives no prefix; a bare address is its key (Limiter.Key); a CIDR is
// conf.ParsePrefix's prefix, masked, in the limiter's form (NormPrefix: a
// tunnel prefix is the IPv4 prefix it carries). Every prefix taken can be banned
// (BanKey succeeds, or refuses a mapped prefix shorter than /96 as
// ErrInvalidPrefix), the ban refuses the address written when its key
// falls inside the ban, and Unban lifts it.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"192.0.2.7", " 192.0.2.7 ", "192.0.2.0/24", "10.1.2.3/8", "2001:db8::1", "2001:db8::/48",
		"::ffff:192.0.2.7", "::ffff:192.0.2.0/120", "::ffff:0:0/80", "fe80::1%eth0", "2002:c000:204::1",
		"2002:c000:204::/64", "2002::/16", "2001:0:4136:e378:8000:63bf:3fff:fdd2/128", "", "example.com", "1.2.3.4/33"} {
		f.Add(s)
	}
	lim, err := limiter.New(limiter.Config{IPv4Prefix: 24, IPv6Prefix: 56}, nil)
	if err != nil {
		f.Fatal(err)
	}
	a := New(Settings{}, Options{Limiter: lim})
	now := time.Now()
	f.Fuzz(func(t *testing.T, v string) {
		p, err := a.parseTarget(v)
		if err != nil {
			if p.IsValid() || !strings.HasPrefix(err.Error(), "ip: ") {
				t.Fatalf("parseTarget(%q) = %v, %v", v, p, err)
			}
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
			t.Fatalf("parseTarget(%q) = %v: not valid and masked", v, p)
		}
		trimmed := strings.TrimSpace(v)
		var written netip.Addr
		if strings.Contains(trimmed, "/") {
			want, err := conf.ParsePrefix(trimmed)
			if err == nil {
				want, err = limiter.NormPrefix(want)
			}
			if err != nil || p != want {
				t.Fatalf("parseTarget(%q) = %v; conf.ParsePrefix and limiter.NormPrefix: %v, %v", v, p, want, err)
			}
			written = netip.MustParsePrefix(trimmed).Addr()
		} else {
			written = netip.MustParseAddr(trimmed)
			if key := lim.Key(written); p != key {
				t.Fatalf("parseTarget(%q) = %v; its key is %v", v, p, key)
			}
		}
		ban, err := lim.BanKey(now, p, time.Hour, "fuzz")
		if err != nil {
			if !errors.Is(err, limiter.ErrInvalidPrefix) || !p.Addr().Is4In6() {
				t.Fatalf("parseTarget(%q) = %v; BanKey: %v", v, p, err)
			}
			return
		}
		if key := lim.Key(written); ban.Key.Contains(key.Addr()) && key.Bits() >= ban.Key.Bits() {
			if d := lim.Check(now, written); d.Allowed {
				t.Fatalf("parseTarget(%q) = %v, banned as %v: Check(%v) allowed", v, p, ban.Key, written)
			}
		}
		if lifted, err := lim.Unban(p); !lifted || err != nil {
			t.Fatalf("parseTarget(%q) = %v, banned as %v: Unban = %v, %v", v, p, ban.Key, lifted, err)
		}
	})
}

// fuzzToken is the admin token FuzzGuard's server has.
const fuzzToken = "0123456789abcdef-token"

// FuzzGuard sends a request with any Host, Authorization, Origin and
// Sec-Fetch-* headers through the admin guard, of a server with a token
// and of one without, and checks what lets it through:
//   - with the token, only an Authorization that carries it (Bearer
//     TOKEN, or Basic with TOKEN as the password), the scheme in any case;
//   - without, only a Host that is empty, localhost or an IP address
//     (with or without port): never a name a browser resolved (DNS
//     rebinding);
//   - either way, no request a browser marks cross-site or same-site (any
//     Sec-Fetch-Site but same-origin and none) but a top-level GET of the
//     status page, and no other whose Origin names another host than
//     Host (unless Sec-Fetch-Site says same-origin).
//
// The same request with a well-formed Authorization of the token, a Host
// of 127.0.0.1 and no browser headers always passes.
func FuzzGuard(f *testing.F) {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+fuzzToken))
	for _, h := range [][6]string{
		{"127.0.0.1:9180", "Bearer " + fuzzToken, "", "", "", ""},
		{"localhost", "bearer  " + fuzzToken + " ", "", "", "", ""},
		{"[::1]:9180", basic, "http://[::1]:9180", "same-origin", "", ""},
		{"evil.example:9180", "", "", "", "", ""},
		{"127.0.0.1:9180", "Bearer x", "http://evil.example", "cross-site", "cors", "empty"},
		{"127.0.0.1", "", "", "cross-site", "navigate", "document"},
		{"[fe80::1%eth0]:1", "Basic Og==", "null", "same-site", "", ""},
		{"", "0", "0", "", "0", "0"},  // an Origin without a host matched an empty Host
		{"[::", "0", "", "", "", "0"}, // an unclosed bracket passed as an address
	} {
		f.Add(h[0], h[1], h[2], h[3], h[4], h[5], uint8(0))
	}
	lim, err := limiter.New(limiter.Config{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	passed := false
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { passed = true })
	withToken := New(Settings{Token: fuzzToken}, Options{Limiter: lim}).guard(next)
	open := New(Settings{}, Options{Limiter: lim}).guard(next)
	routes := [][2]string{{"GET", "/"}, {"GET", "/bans"}, {"POST", "/bans"}, {"DELETE", "/bans/192.0.2.7"}, {"GET", "/healthz"}}
	f.Fuzz(func(t *testing.T, host, auth, origin, site, mode, dest string, route uint8) {
		method, path := routes[int(route)%len(routes)][0], routes[int(route)%len(routes)][1]
		req := func(host, auth, origin, site, mode, dest string) *http.Request {
			r := httptest.NewRequest(method, "http://127.0.0.1"+path, nil)
			r.Host = host
			for k, v := range map[string]string{"Authorization": auth, "Origin": origin, "Sec-Fetch-Site": site,
				"Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest} {
				if v != "" {
					r.Header.Set(k, v)
				}
			}
			return r
		}
		serve := func(h http.Handler, r *http.Request) bool {
			passed = false
			h.ServeHTTP(httptest.NewRecorder(), r)
			return passed
		}
		browserOK := func() bool {
			switch site {
			case "", "same-origin", "none":
			default:
				// a top-level GET of the status page, whatever its Origin
				return path == "/" && method == "GET" && mode == "navigate" && dest == "document"
			}
			return origin == "" || site == "same-origin" || originHost(origin) == strings.ToLower(host)
		}
		why := func(s string) string {
			return fmt.Sprintf("%s %s Host %q Authorization %q Origin %q Sec-Fetch-Site/Mode/Dest %q %q %q: %s",
				method, path, host, auth, origin, site, mode, dest, s)
		}
		if serve(withToken, req(host, auth, origin, site, mode, dest)) && path != "/healthz" {
			if !carriesToken(auth) || !browserOK() {
				t.Fatal(why("passed with the token set"))
			}
		}
		if serve(open, req(host, auth, origin, site, mode, dest)) && path != "/healthz" {
			if !hostIsLiteral(host) || !browserOK() {
				t.Fatal(why("passed without a token"))
			}
		}
		if !serve(withToken, req("127.0.0.1", "Bearer "+fuzzToken, "", "", "", "")) ||
			!serve(withToken, req("127.0.0.1:9180", basic, "", "", "", "")) {
			t.Fatal(why("a well-formed request was refused"))
		}
	})
}

// carriesToken reports whether an Authorization value carries fuzzToken.
func carriesToken(auth string) bool {
	scheme, cred, ok := strings.Cut(auth, " ")
	if !ok {
		return false
	}
	cred = strings.TrimSpace(cred)
	switch strings.ToLower(scheme) {
	case "bearer":
		return cred == fuzzToken
	case "basic":
		b, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return false
		}
		i := strings.IndexByte(string(b), ':')
		return i >= 0 && string(b[i+1:]) == fuzzToken
	}
	return false
}

// hostIsLiteral reports whether a Host header names no host a resolver
// would look up: empty, localhost, or an IP address, bracketed or not,
// with or without a port.
func hostIsLiteral(host string) bool {
	h := host
	if i := strings.LastIndexByte(h, ':'); i >= 0 && (strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1) {
		if j := strings.LastIndexByte(h, ']'); j < i {
			h = h[:i]
		}
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if h == "" && host == "" || strings.EqualFold(h, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(strings.Trim(h, "[]"))
	return err == nil
}

// originHost is the host of an Origin, lower case, or "" if it has none.
func originHost(origin string) string {
	_, rest, ok := strings.Cut(origin, "://")
	if !ok {
		return "\x00"
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = rest[i+1:]
	}
	return strings.ToLower(rest)
}
