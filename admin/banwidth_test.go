package admin

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestBanWidth: an admin ban wider than max_ban_prefix_ipv4/_ipv6 is
// refused unless forced, and the refusal says what the prefix covers;
// the limits themselves, and anything narrower, pass.
func TestBanWidth(t *testing.T) {
	def := &Server{}
	def.st.Store(&Settings{}) // the defaults: /16, /32
	strict := &Server{}
	strict.st.Store(&Settings{MaxBanPrefix4: 24, MaxBanPrefix6: 48})
	for _, tt := range []struct {
		a      *Server
		prefix string
		force  bool
		want   string // "" = accepted; else a substring of the error
	}{
		{def, "0.0.0.0/0", false, "covers 2^32 addresses (4,294,967,296), wider than [admin] max_ban_prefix_ipv4 = 16"},
		{def, "::/0", false, "max_ban_prefix_ipv6 = 32"},
		{def, "2000::/6", false, "2^122 addresses"},
		{def, "0.0.0.0/1", false, "covers 2,147,483,648 addresses"},
		{def, "10.0.0.0/15", false, "an IPv4 ban must be a /16 or narrower"},
		{def, "10.1.0.0/16", false, ""},
		{def, "203.0.113.7/32", false, ""},
		{def, "2001:db8::/32", false, ""},
		{def, "2001:db8::/64", false, ""},
		{def, "0.0.0.0/0", true, ""},
		{def, "::/0", true, ""},
		{strict, "10.1.0.0/16", false, "max_ban_prefix_ipv4 = 24"},
		{strict, "10.1.2.0/24", false, ""},
		{strict, "2001:db8::/32", false, "max_ban_prefix_ipv6 = 48"},
	} {
		err := tt.a.checkBanWidth(netip.MustParsePrefix(tt.prefix), tt.force)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s force=%v: %v, want accepted", tt.prefix, tt.force, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s force=%v: %v, want an error with %q", tt.prefix, tt.force, err, tt.want)
		}
	}
}

func TestCovers(t *testing.T) {
	for p, want := range map[string]string{
		"203.0.113.7/32":  "1 address",
		"10.1.0.0/16":     "65,536 addresses",
		"10.0.0.0/8":      "16,777,216 addresses",
		"0.0.0.0/0":       "2^32 addresses (4,294,967,296)",
		"2001:db8::/64":   "2^64 addresses (18,446,744,073,709,551,616)",
		"2001:db8::/120":  "256 addresses",
		"2001:db8::1/128": "1 address",
	} {
		if got := Covers(netip.MustParsePrefix(p)); got != want {
			t.Errorf("Covers(%s) = %q, want %q", p, got, want)
		}
	}
}

// TestBanWidthOfTunnelPrefix: a 6to4 prefix is banned as the IPv4 prefix it
// carries (2002:cb00::/32 is 203.0.0.0/16), so its width is checked against
// max_ban_prefix_ipv4, not against the IPv6 limit it would pass as written.
func TestBanWidthOfTunnelPrefix(t *testing.T) {
	lim, err := limiter.New(limiter.Config{Failures: 5, Window: time.Hour, BanTime: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Settings{MaxBanPrefix4: 24}, Options{Limiter: lim, Metrics: NewMetrics(lim, nil, "test", func() string { return "enforce" }),
		Reload: func() error { return nil }, Info: func() Info { return Info{Backend: "127.0.0.1:1", Store: "memory"} }})
	ts := httptest.NewServer(a.Handler())
	defer ts.Close()
	resp, err := http.Post(ts.URL+"/bans", "application/json", strings.NewReader(`{"ip":"2002:cb00::/32","duration":"1h"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "203.0.0.0/16") ||
		!strings.Contains(string(body), "max_ban_prefix_ipv4 = 24") {
		t.Errorf("POST /bans 2002:cb00::/32 = %d %s, want 400 naming 203.0.0.0/16 and max_ban_prefix_ipv4", resp.StatusCode, body)
	}
	if bans := lim.Bans(time.Now()); len(bans) != 0 {
		t.Errorf("bans in force: %v", bans)
	}
}
