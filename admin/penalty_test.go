package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
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

// fakeTable is a BanTable of one ban.
type fakeTable struct {
	mu  sync.Mutex
	ban *limiter.Ban
}

func (f *fakeTable) Bans(now time.Time) []limiter.Ban {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ban == nil || !f.ban.Active(now) {
		return nil
	}
	return []limiter.Ban{*f.ban}
}

func (f *fakeTable) Unban(key netip.Prefix) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ban == nil || f.ban.Key != key {
		return false
	}
	f.ban = nil
	return true
}

// TestBansListShowsMoreBans: the bans of Options.MoreBans (a [geo] budget
// rule's) are listed by GET /bans, whole and paged, with their reason and
// source ftpguard, and on the status page; DELETE /bans/{key} lifts them.
func TestBansListShowsMoreBans(t *testing.T) {
	lim, err := limiter.New(limiter.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	more := &fakeTable{ban: &limiter.Ban{Key: netip.MustParsePrefix("198.51.100.7/32"), Until: now.Add(time.Hour),
		Since: now, Count: 1, Reason: "geo rule 3 (budget XC): budget"}}
	a := New(Settings{}, Options{Limiter: lim, Metrics: NewMetrics(lim, nil, "test", func() string { return "enforce" }),
		Reload: func() error { return nil }, Info: func() Info { return Info{Mode: "enforce"} }, MoreBans: more})
	h := a.Handler()
	do := func(method, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://127.0.0.1"+path, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for _, path := range []string{"/bans", "/bans?limit=10"} {
		w := do("GET", path)
		var list []banJSON
		if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list) != 1 || list[0].Key != "198.51.100.7/32" ||
			list[0].Source != SourceFtpguard || list[0].Reason != "geo rule 3 (budget XC): budget" {
			t.Fatalf("GET %s: %d %s (%v)", path, w.Code, w.Body, err)
		}
	}
	if w := do("GET", "/"); !strings.Contains(w.Body.String(), "geo rule 3 (budget XC)") {
		t.Fatalf("status page shows no [geo] budget ban:\n%s", w.Body)
	}
	if w := do("DELETE", "/bans/198.51.100.7"); w.Code != http.StatusOK {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	if len(more.Bans(now)) != 0 {
		t.Fatal("the ban is still in force after DELETE")
	}
	if w := do("DELETE", "/bans/198.51.100.7"); w.Code != http.StatusNotFound {
		t.Fatalf("second DELETE: %d %s, want 404", w.Code, w.Body)
	}
}
