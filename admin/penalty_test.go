package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestBansListShowsPenalties: a no-auth penalty is listed by GET /bans
// (reason "noauth") and on the status page, and DELETE /bans/{key} lifts
// it.
func TestBansListShowsPenalties(t *testing.T) {
	lim, err := limiter.New(limiter.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := limiter.NoAuthConfig{Penalty: time.Minute, After: 1}
	if _, made := lim.NoAuth(time.Now(), netip.MustParseAddr("2001:db8::7"), c); !made {
		t.Fatal("no penalty made")
	}
	a := New(Settings{}, Options{Limiter: lim, Metrics: NewMetrics(lim, nil, "test", func() string { return "enforce" }),
		Reload: func() error { return nil }, Info: func() Info { return Info{Mode: "enforce"} }})
	h := a.Handler()
	do := func(method, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://127.0.0.1"+path, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	w := do("GET", "/bans")
	var list []banJSON
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list) != 1 ||
		list[0].Key != "2001:db8::/64" || list[0].Reason != "noauth" || list[0].SecondsLeft <= 0 {
		t.Fatalf("GET /bans: %d %s (%v)", w.Code, w.Body, err)
	}
	if w := do("GET", "/"); !strings.Contains(w.Body.String(), "noauth") {
		t.Fatalf("status page shows no noauth penalty:\n%s", w.Body)
	}
	if w := do("DELETE", "/bans/2001:db8::/64"); w.Code != http.StatusOK {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	if _, ok := lim.Penalized(time.Now(), netip.MustParseAddr("2001:db8::7")); ok {
		t.Fatal("penalty still in force after DELETE")
	}
}
