package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestBanAddTunnelPrefix: a ban given as a 6to4 prefix longer than /48 (or
// a single 6to4 address as a /128) is the ban of the IPv4 host it carries.
// It once panicked in the limiter with its lock held (the prefix
// normalised to the invalid Prefix), which hung every later connection.
func TestBanAddTunnelPrefix(t *testing.T) {
	for _, ip := range []string{"2002:c000:204::/64", "2002:c000:204::1/128", "2002:c000:204:8000::/49"} {
		lim, err := limiter.New(limiter.Config{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		a := New(Settings{}, Options{Limiter: lim, Metrics: NewMetrics(lim, nil, "test", func() string { return "enforce" }),
			Reload: func() error { return nil }, Info: func() Info { return Info{Mode: "enforce"} }})
		form := url.Values{"ip": {ip}, "duration": {"1h"}}
		r := httptest.NewRequest("POST", "http://127.0.0.1/bans", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		a.Handler().ServeHTTP(w, r)
		var got banJSON
		if err := json.Unmarshal(w.Body.Bytes(), &got); w.Code != http.StatusCreated || err != nil || got.Key != "192.0.2.4/32" {
			t.Errorf("POST /bans ip=%s: %d %s", ip, w.Code, w.Body)
		}
		if d := lim.Check(time.Now(), netip.MustParseAddr("192.0.2.4")); d.Allowed {
			t.Errorf("after POST /bans ip=%s: 192.0.2.4 allowed", ip)
		}
	}
}
