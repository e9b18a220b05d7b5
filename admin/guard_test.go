package admin

import (
	"net/http/httptest"
	"testing"
)

// TestCrossOriginGuard: a page of another site cannot make the operator's
// browser spend the daemon's CPU through the admin listener: cross-origin
// GETs to pprof, /status, / and /metrics are refused (with or without a
// token), while the CLI and curl (no browser headers), same-origin pages,
// the operator's own navigation and /healthz are served. Before, every GET
// with Host: 127.0.0.1 was answered.
func TestCrossOriginGuard(t *testing.T) {
	a, _ := healthServer(t, "127.0.0.1:1", 10)
	const tok = "guard-token-0123456789"
	withToken, _ := healthServer(t, "127.0.0.1:1", 10)
	for _, s := range []*Server{a, withToken} {
		st := *s.st.Load()
		st.Pprof = true
		if s == withToken {
			st.Token = tok
		}
		s.SetSettings(st)
	}
	evil := []string{"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"}
	for _, tt := range []struct {
		name  string
		srv   *Server
		path  string
		hdr   []string
		token bool
		want  int
	}{
		{"pprof cross-site", a, "/debug/pprof/", evil, false, 403},
		{"status cross-site", a, "/status", evil, false, 403},
		{"metrics cross-site", a, "/metrics", evil, false, 403},
		{"page fetched cross-site", a, "/", evil, false, 403},
		{"pprof same-site other origin", a, "/debug/pprof/", []string{"Sec-Fetch-Site", "same-site"}, false, 403},
		{"status, Origin only (old browser)", a, "/status", []string{"Origin", "http://evil.example"}, false, 403},
		{"pprof cross-site with token", withToken, "/debug/pprof/", evil, true, 403},
		{"pprof, no browser headers (CLI, curl)", a, "/debug/pprof/", nil, false, 200},
		{"status same-origin", a, "/status", []string{"Sec-Fetch-Site", "same-origin", "Origin", "http://127.0.0.1:9121"}, false, 200},
		{"status typed by the operator", a, "/status", []string{"Sec-Fetch-Site", "none"}, false, 200},
		{"status, same Origin", a, "/status", []string{"Origin", "http://127.0.0.1:9121"}, false, 200},
		{"page navigated to from a dashboard", a, "/", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document"}, false, 200},
		{"pprof navigated to cross-site", a, "/debug/pprof/", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document"}, false, 403},
		{"healthz cross-site", a, "/healthz", evil, false, 503},
		{"pprof with token", withToken, "/debug/pprof/", nil, true, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://127.0.0.1:9121"+tt.path, nil)
			req.Host = "127.0.0.1:9121"
			for i := 0; i+1 < len(tt.hdr); i += 2 {
				req.Header.Set(tt.hdr[i], tt.hdr[i+1])
			}
			if tt.token {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			rec := httptest.NewRecorder()
			tt.srv.Handler().ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("GET %s = %d %s, want %d", tt.path, rec.Code, rec.Body.String(), tt.want)
			}
		})
	}
}

// TestOriginWithoutHost: an Origin that names no host ("0", "null") is
// foreign even when the request's Host is empty too (as over a unix
// socket): it used to match the empty Host and pass (found by FuzzGuard).
func TestOriginWithoutHost(t *testing.T) {
	a, _ := healthServer(t, "127.0.0.1:1", 10)
	for _, origin := range []string{"0", "null", "http://"} {
		req := httptest.NewRequest("GET", "http://127.0.0.1:9121/bans", nil)
		req.Host = ""
		req.Header.Set("Origin", origin)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != 403 {
			t.Errorf("GET /bans, Host empty, Origin %q = %d %s, want 403", origin, rec.Code, rec.Body.String())
		}
	}
}

// TestHostIsAddress: only a well-formed address, bracketed or not, with or
// without a port, or localhost, counts as one. "[::" (an unclosed bracket)
// used to pass as "::" (found by FuzzGuard): no browser sends it, but the
// check must not be looser than it says.
func TestHostIsAddress(t *testing.T) {
	for _, tt := range []struct {
		host string
		want bool
	}{
		{"", true},
		{"127.0.0.1", true},
		{"127.0.0.1:9180", true},
		{"[::1]:9180", true},
		{"[::1]", true},
		{"::1", true},
		{"[fe80::1%eth0]:1", true},
		{"localhost", true},
		{"LOCALHOST:80", true},
		{"[::", false},
		{"::]", false},
		{"[::1", false},
		{"::1]:80", false},
		{"[[::1]]", false},
		{"[127.0.0.1]x", false},
		{":80", false},
		{"evil.example", false},
		{"127.0.0.1.nip.io", false},
	} {
		if got := hostIsAddress(tt.host); got != tt.want {
			t.Errorf("hostIsAddress(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}
