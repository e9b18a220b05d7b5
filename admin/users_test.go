package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestUsersAPI: GET /users lists the throttled usernames, DELETE
// /users/{name} lifts a throttle under any spelling, both behind the token;
// the status page and `ftpguard users list|reset` show and do the same.
func TestUsersAPI(t *testing.T) {
	lim, err := limiter.New(limiter.Config{Failures: 5, Window: time.Hour, BanTime: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	users, err := limiter.NewUsers(limiter.UserConfig{Failures: 2, Window: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	const token = "0123456789abcdef0123"
	a := New(Settings{Token: token}, Options{Limiter: lim, Users: users, Metrics: NewMetrics(lim, users, "test", func() string { return "enforce" }),
		Reload: func() error { return nil }, Info: func() Info { return Info{Backend: "127.0.0.1:1", Store: "memory"} }})
	ts := httptest.NewServer(a.Handler())
	defer ts.Close()
	key := netip.MustParsePrefix("198.51.100.1/32")
	now := time.Now()
	users.Failure(now, "Alice", key)
	users.Failure(now, "ALICE", key)
	users.Failure(now, "bob", key) // one failure: not throttled

	req := func(method, path string, tok string) (int, string) {
		t.Helper()
		r, _ := http.NewRequest(method, ts.URL+path, nil)
		if tok != "" {
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if code, _ := req("GET", "/users", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /users without the token: %d", code)
	}
	if code, _ := req("DELETE", "/users/alice", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("DELETE /users/alice with a wrong token: %d", code)
	}
	code, body := req("GET", "/users", token)
	var list []userJSON
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list) != 1 || list[0].Name != "alice" ||
		list[0].Remaining != 0 || list[0].Failures != 2 || list[0].RetryInSeconds < 1 || list[0].FullInSeconds < list[0].RetryInSeconds {
		t.Fatalf("GET /users = %d %s", code, body)
	}
	if code, body := req("GET", "/", token); code != 200 || !strings.Contains(body, `<table id="users">`) || !strings.Contains(body, ">alice<") {
		t.Errorf("status page: %d, no throttled alice\n%s", code, body)
	}

	// The CLI, against the same endpoint.
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	cli := func(args ...string) (int, string) {
		var out, errs bytes.Buffer
		args = append(args, "-admin", strings.TrimPrefix(ts.URL, "http://"), "-token-file", tokFile)
		code := RunClient(args[0], args[1:], &out, &errs, filepath.Join(dir, "none.toml"))
		return code, out.String() + errs.String()
	}
	if code, out := cli("users", "list"); code != 0 || !strings.Contains(out, "alice") || !strings.Contains(out, "0/2") ||
		!strings.Contains(out, "1 username(s) throttled") {
		t.Fatalf("users list: %d\n%s", code, out)
	}
	if code, out := cli("users", "reset", "ＡＬＩＣＥ"); code != 0 || !strings.Contains(out, `reset "alice"`) {
		t.Fatalf("users reset: %d\n%s", code, out)
	}
	if code, out := cli("users", "reset", "alice"); code != 1 || !strings.Contains(out, "no budget of") {
		t.Errorf("users reset again: %d\n%s", code, out)
	}
	if code, out := cli("users", "list"); code != 0 || !strings.Contains(out, "no usernames throttled") {
		t.Errorf("users list after reset: %d\n%s", code, out)
	}
	if code, out := cli("users"); code != 2 || !strings.Contains(out, "want list or reset NAME") {
		t.Errorf("users: %d\n%s", code, out)
	}
	if code, out := cli("users", "drop"); code != 2 || !strings.Contains(out, `unknown subcommand "drop"`) {
		t.Errorf("users drop: %d\n%s", code, out)
	}
	if d := users.Attempt(now, "alice", key); d.Throttled {
		t.Errorf("alice still throttled after the reset: %+v", d)
	}
	// Without per-username budgets: an empty list, and nothing to reset.
	b := New(Settings{}, Options{Limiter: lim, Metrics: NewMetrics(lim, nil, "test", func() string { return "enforce" }),
		Reload: func() error { return nil }, Info: func() Info { return Info{} }})
	rec := httptest.NewRecorder()
	b.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/users", nil))
	if rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != "[]" {
		t.Errorf("GET /users without Users: %d %s", rec.Code, rec.Body)
	}
}
