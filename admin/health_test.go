package admin

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// countAccepts accepts on ln until it accepts the connection from marker's
// local address, and returns how many came before it: every dial made
// before marker was dialed is counted (the kernel queues them in order).
func countAccepts(t *testing.T, ln net.Listener) int {
	t.Helper()
	marker, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer marker.Close()
	n := 0
	for {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		same := c.RemoteAddr().String() == marker.LocalAddr().String()
		c.Close()
		if same {
			return n
		}
		n++
	}
}

func healthServer(t *testing.T, backend string, maxConns int) (*Server, *Metrics) {
	lim, err := limiter.New(limiter.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(lim, nil, "test", func() string { return "enforce" })
	info := Info{Backend: backend, DialTimeout: 5 * time.Second, MaxConns: maxConns}
	a := New(Settings{}, Options{Limiter: lim, Metrics: m, Reload: func() error { return nil }, Info: func() Info { return info }})
	return a, m
}

// TestHealthzDialsOnce: 50 concurrent /healthz make at most one dial to
// the daemon (one result shared, cached for a second); with the session
// table full, none (health checks stay within max_conns) and the answer
// stays healthy (an attacker filling the table must not take the instance
// out of the balancer).
func TestHealthzDialsOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, m := healthServer(t, ln.Addr().String(), 2)
	h := a.Handler()
	get := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	var wg sync.WaitGroup
	codes := make(chan int, 50)
	for range 50 {
		wg.Go(func() { codes <- get() })
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Fatalf("/healthz = %d", c)
		}
	}
	if n := countAccepts(t, ln); n > 1 {
		t.Fatalf("50 concurrent /healthz dialed the daemon %d times, want at most 1", n)
	}

	// The session table full: no dial, still healthy.
	m.SessionStart()
	m.SessionStart()
	a.health.mu.Lock()
	a.health.at = time.Time{} // the cache expired
	a.health.mu.Unlock()
	if c := get(); c != http.StatusOK {
		t.Fatalf("/healthz with the table full = %d, want 200", c)
	}
	if n := countAccepts(t, ln); n != 0 {
		t.Fatalf("/healthz with the table full dialed the daemon %d times", n)
	}
}

// TestHealthzDetailsByHost: /healthz never needs the token (probes), but
// its details — the daemon's address, the store's last error with its file
// path — go only to a request whose Host is an IP address or localhost, or
// that carries the token. A DNS-rebinding page (Host: its own name) gets
// the status and the code alone. Before, it read every detail.
func TestHealthzDetailsByHost(t *testing.T) {
	const tok = "health-token-0123456789"
	a, _ := healthServer(t, "127.0.0.1:1", 10) // nothing listens: unhealthy
	withToken, _ := healthServer(t, "127.0.0.1:1", 10)
	st := *withToken.st.Load()
	st.Token = tok
	withToken.SetSettings(st)
	for _, tt := range []struct {
		name    string
		srv     *Server
		host    string
		token   bool
		details bool
	}{
		{"IP host", a, "127.0.0.1:9121", false, true},
		{"localhost", a, "localhost:9121", false, true},
		{"rebinding name", a, "evil.example:9121", false, false},
		{"rebinding name, token set, none sent", withToken, "evil.example:9121", false, false},
		{"name with the token", withToken, "ftpguard.internal:9121", true, true},
		{"IP host, token set, none sent", withToken, "10.0.0.5:9121", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://"+tt.host+"/healthz", nil)
			req.Host = tt.host
			if tt.token {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			rec := httptest.NewRecorder()
			tt.srv.Handler().ServeHTTP(rec, req)
			body := rec.Body.String()
			if rec.Code != 503 || !strings.Contains(body, `"status": "unhealthy"`) {
				t.Fatalf("GET /healthz = %d %s, want 503 unhealthy", rec.Code, body)
			}
			if got := strings.Contains(body, "127.0.0.1:1"); got != tt.details {
				t.Fatalf("details (the daemon's address) shown = %v, want %v:\n%s", got, tt.details, body)
			}
		})
	}
}
