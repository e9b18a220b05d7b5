package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/admin"
	"github.com/ftpguard/ftpguard/limiter"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testDaemon is a daemon as run() makes it, on a memory store, with its
// admin handler behind an httptest server.
type testDaemon struct {
	*daemon
	url     string
	logs    *syncBuffer
	backend net.Listener // closed by closeBackend
}

// newTestDaemon writes a config (extra is appended; the backend is a
// loopback listener of the test) and builds the daemon from it.
func newTestDaemon(t *testing.T, extra string) *testDaemon {
	t.Helper()
	return newTestDaemonStore(t, extra, nil)
}

// newTestDaemonStore is newTestDaemon with the limiter on store (nil: a
// memory store).
func newTestDaemonStore(t *testing.T, extra string, store limiter.Store) *testDaemon {
	t.Helper()
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	path := writeConfig(t, fmt.Sprintf("listen = \"127.0.0.1:0\"\n%s\n[backend]\naddress = %q\ndial_timeout = \"1s\"\n[store]\nkind = \"memory\"\n",
		extra, backend.Addr().String()))
	st, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := new(syncBuffer)
	level := new(slog.LevelVar)
	level.Set(slog.LevelDebug)
	events := new(admin.EventRing)
	log := slog.New(admin.NewLogHandler(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}), events))
	lim, err := limiter.New(st.Limiter, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	d, err := newDaemon(path, st, lim, log, level, events)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(d.adm.Handler())
	t.Cleanup(hs.Close)
	return &testDaemon{daemon: d, url: hs.URL, logs: logs, backend: backend}
}

// call makes a request to the admin handler and returns the status and
// body.
func (td *testDaemon) call(t *testing.T, method, path, contentType, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, td.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminBans(t *testing.T) {
	td := newTestDaemon(t, "[limits]\nallow = [\"192.0.2.0/24\"]\n")
	tests := []struct {
		name, method, path, ctype, body string
		code                            int
		want                            string // substring of the body
	}{
		{"ban json", "POST", "/bans", "application/json", `{"ip":"203.0.113.7","duration":"2h"}`, 201, `"key": "203.0.113.7/32"`},
		{"ban form cidr", "POST", "/bans", "application/x-www-form-urlencoded", "ip=198.51.100.9/24&reason=scanner", 201, `"key": "198.51.100.0/24"`},
		{"ban v6 address takes its key", "POST", "/bans", "application/json", `{"ip":"2001:db8::1","duration":"7d"}`, 201, `"seconds_left": 604800`},
		{"again escalates", "POST", "/bans", "application/json", `{"ip":"203.0.113.7"}`, 201, `"count": 2`},
		{"no ip", "POST", "/bans", "application/json", `{"duration":"1h"}`, 400, `ip: missing`},
		{"a name", "POST", "/bans", "application/json", `{"ip":"ftp.example.com"}`, 400, `ip: \"ftp.example.com\" is not an IP address or CIDR`},
		{"bad duration", "POST", "/bans", "application/json", `{"ip":"203.0.113.8","duration":"soon"}`, 400, `duration: \"soon\" is not a duration`},
		{"negative duration", "POST", "/bans", "application/json", `{"ip":"203.0.113.8","duration":"-1h"}`, 400, `duration: must be positive`},
		{"unknown field", "POST", "/bans", "application/json", `{"ip":"203.0.113.8","minutes":5}`, 400, `unknown field`},
		{"allowlisted", "POST", "/bans", "application/json", `{"ip":"192.0.2.5"}`, 400, `allowlisted`},
		{"bad reason", "POST", "/bans", "application/json", `{"ip":"203.0.113.8","reason":"a\nb"}`, 400, `reason:`},
		{"list", "GET", "/bans", "", "", 200, `"reason": "scanner"`},
		{"del", "DELETE", "/bans/203.0.113.7", "", "", 200, `"unbanned": "203.0.113.7/32"`},
		{"del again", "DELETE", "/bans/203.0.113.7", "", "", 404, `no ban of 203.0.113.7/32 in force`},
		{"del covered", "DELETE", "/bans/198.51.100.20", "", "", 404, `the ban of 198.51.100.0/24 covers it`},
		{"del cidr", "DELETE", "/bans/198.51.100.0/24", "", "", 200, `"unbanned": "198.51.100.0/24"`},
		{"del v6 escaped", "DELETE", "/bans/2001:db8::%2F64", "", "", 200, `"unbanned": "2001:db8::/64"`},
		{"del garbage", "DELETE", "/bans/x.y", "", "", 400, `is not an IP address`},
		{"list empty", "GET", "/bans", "", "", 200, `[]`},
	}
	for _, tt := range tests {
		code, body := td.call(t, tt.method, tt.path, tt.ctype, tt.body)
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %s %s = %d %s, want %d containing %s", tt.name, tt.method, tt.path, code, body, tt.code, tt.want)
		}
	}
	// The admin bans and unbans are logged as events of the status page.
	var bans, unbans int
	for _, e := range td.events.List() {
		switch e.Msg {
		case "ban":
			bans += e.Count
		case "unban":
			unbans += e.Count
		}
	}
	if bans != 4 || unbans != 3 {
		t.Errorf("events: %d bans, %d unbans; want 4, 3", bans, unbans)
	}
}

// TestAdminBanRefusesConnection: a ban made through the API is what the
// gate checks.
func TestAdminBanRefusesConnection(t *testing.T) {
	td := newTestDaemon(t, "")
	if code, body := td.call(t, "POST", "/bans", "application/json", `{"ip":"127.0.0.9","duration":"1m"}`); code != 201 {
		t.Fatalf("ban: %d %s", code, body)
	}
	if d := td.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.9")); d.Allowed {
		t.Fatal("127.0.0.9 is still allowed after the admin ban")
	}
}

func TestAdminToken(t *testing.T) {
	tok := "s3cret-token-0123456789"
	tf := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tf, []byte(tok+"\n"), 0o600)
	td := newTestDaemon(t, fmt.Sprintf("[admin]\ntoken_file = %q\n", tf))
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("any:"+tok))
	tests := []struct {
		path string
		hdr  []string
		code int
	}{
		{"/bans", nil, 401},
		{"/bans", []string{"Authorization", "Bearer wrong-token-0123456789"}, 401},
		{"/bans", []string{"Authorization", "Bearer " + tok}, 200},
		{"/bans", []string{"Authorization", basic}, 200},
		{"/metrics", nil, 401},
		{"/metrics", []string{"Authorization", "Bearer " + tok}, 200},
		{"/", nil, 401},
		{"/status", []string{"Authorization", "bearer " + tok}, 200},
		{"/healthz", nil, 200}, // probes need no token
		// With a token, any Host is fine (a rebinding page cannot know it).
		{"/bans", []string{"Authorization", "Bearer " + tok, "Host", "ftpguard.internal:9121"}, 200},
	}
	for _, tt := range tests {
		code, body := td.call(t, "GET", tt.path, "", "", tt.hdr...)
		if code != tt.code {
			t.Errorf("GET %s %v = %d %s, want %d", tt.path, tt.hdr, code, body, tt.code)
		}
	}
	code, body := td.call(t, "POST", "/reload", "", "")
	if code != 401 || !strings.Contains(body, "token") {
		t.Errorf("POST /reload without token = %d %s", code, body)
	}
}

// TestReloadKeepsTokenOfPublicListener: admin.listen changes on restart
// only, so a reload to a loopback listen without token_file must not take
// the token away from the listener still open on every interface: it is
// refused, and the old token stays.
func TestReloadKeepsTokenOfPublicListener(t *testing.T) {
	tok := "s3cret-token-0123456789"
	tf := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tf, []byte(tok+"\n"), 0o600)
	td := newTestDaemon(t, fmt.Sprintf("[admin]\nlisten = \"0.0.0.0:9121\"\ntoken_file = %q\n", tf))
	orig, _ := os.ReadFile(td.path)
	edited := strings.Replace(string(orig), "listen = \"0.0.0.0:9121\"", "listen = \"127.0.0.1:9121\"", 1)
	edited = strings.Replace(edited, fmt.Sprintf("token_file = %q\n", tf), "", 1)
	if edited == string(orig) {
		t.Fatal("the config was not edited")
	}
	if err := os.WriteFile(td.path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	code, body := td.call(t, "POST", "/reload", "", "", "Authorization", "Bearer "+tok)
	if code != 400 || !strings.Contains(body, "0.0.0.0:9121") || !strings.Contains(body, "admin.token_file") {
		t.Errorf("reload dropping the token of a public listener = %d %s, want 400 naming the listener", code, body)
	}
	if code, body := td.call(t, "GET", "/bans", "", "", "Host", "192.0.2.1:9121"); code != 401 {
		t.Errorf("GET /bans without token after the reload = %d %s, want 401", code, body)
	}
	// A loopback listener may drop its token by reload.
	td2 := newTestDaemon(t, fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:9121\"\ntoken_file = %q\n", tf))
	orig, _ = os.ReadFile(td2.path)
	os.WriteFile(td2.path, []byte(strings.Replace(string(orig), fmt.Sprintf("token_file = %q\n", tf), "", 1)), 0o600)
	if code, body := td2.call(t, "POST", "/reload", "", "", "Authorization", "Bearer "+tok); code != 200 {
		t.Errorf("reload dropping the token of a loopback listener = %d %s, want 200", code, body)
	}
}

// TestAdminBrowserGuards: without a token, a DNS-rebinding Host and a
// cross-site form post are refused.
func TestAdminBrowserGuards(t *testing.T) {
	td := newTestDaemon(t, "")
	if code, body := td.call(t, "GET", "/bans", "", "", "Host", "evil.example:9121"); code != http.StatusMisdirectedRequest {
		t.Errorf("GET /bans with Host evil.example = %d %s, want 421", code, body)
	}
	for _, host := range []string{"127.0.0.1:9121", "localhost:9121", "[::1]:9121"} {
		if code, _ := td.call(t, "GET", "/bans", "", "", "Host", host); code != 200 {
			t.Errorf("GET /bans with Host %s = %d, want 200", host, code)
		}
	}
	code, _ := td.call(t, "POST", "/bans", "application/x-www-form-urlencoded", "ip=203.0.113.1",
		"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")
	if code != http.StatusForbidden {
		t.Errorf("cross-site form post = %d, want 403", code)
	}
	if len(td.lim.Bans(time.Now())) != 0 {
		t.Error("the cross-site post banned")
	}
}

func TestAdminReload(t *testing.T) {
	td := newTestDaemon(t, "")
	orig, _ := os.ReadFile(td.path)
	write := func(s string) {
		if err := os.WriteFile(td.path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(string(orig) + "[limits]\nfailures = 3\n")
	code, body := td.call(t, "POST", "/reload", "", "")
	if code != 200 || !strings.Contains(body, `"status": "reloaded"`) || td.settings().Limiter.Failures != 3 {
		t.Fatalf("valid reload = %d %s; failures %d", code, body, td.settings().Limiter.Failures)
	}
	write(string(orig) + "[limits]\nfailures = 0\n")
	code, body = td.call(t, "POST", "/reload", "", "")
	if code != 400 || !strings.Contains(body, "limits.failures: must be ≥ 1") || !strings.Contains(body, "old config stays") {
		t.Fatalf("invalid reload = %d %s", code, body)
	}
	if td.settings().Limiter.Failures != 3 {
		t.Fatalf("invalid reload changed failures to %d", td.settings().Limiter.Failures)
	}
	write("mode = \"observe\"\n" + string(orig))
	code, body = td.call(t, "POST", "/reload", "", "")
	if code != 200 || !strings.Contains(body, `"mode": "observe"`) || td.mode() != "observe" {
		t.Fatalf("reload to observe = %d %s", code, body)
	}
	_, metrics := td.call(t, "GET", "/metrics", "", "")
	for _, want := range []string{`ftpguard_config_reloads_total{result="ok"} 2`, `ftpguard_config_reloads_total{result="failed"} 1`, "ftpguard_observe_mode 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if !strings.Contains(td.logs.String(), "reload rejected; keeping the old config") {
		t.Error("the rejected reload was not logged")
	}
}

func TestAdminHealthz(t *testing.T) {
	td := newTestDaemon(t, "")
	code, body := td.call(t, "GET", "/healthz", "", "")
	if code != 200 || !strings.Contains(body, `"status": "ok"`) {
		t.Fatalf("healthz with the backend up = %d %s", code, body)
	}
	td.backend.Close()
	td.awaitHealthCache(t)
	code, body = td.call(t, "GET", "/healthz", "", "")
	var h admin.Health
	json.Unmarshal([]byte(body), &h)
	if code != 503 || h.Status != "unhealthy" || h.Backend.OK || !strings.Contains(h.Backend.Error, "refused") || !h.Store.OK {
		t.Fatalf("healthz with the backend down = %d %s", code, body)
	}
}

// awaitHealthCache waits until /healthz reports the backend down: its
// answer is shared for a second (admin/health.go), so a change is seen
// when the cached answer expires. Bounded: 5 s.
func (td *testDaemon) awaitHealthCache(t *testing.T) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if code, _ := td.call(t, "GET", "/healthz", "", ""); code == 503 {
			return
		}
	}
}

// fullStore is a memory store whose writes fail with ENOSPC while full is
// set: an in-process fake, for the admin wiring only (the real full disk
// is injected in limiter/filestore's TestDiskFullBanStaysAndIsRetried).
type fullStore struct {
	*limiter.MemoryStore
	full atomic.Bool
}

func (f *fullStore) SaveBan(b limiter.Ban) error {
	if f.full.Load() {
		return fmt.Errorf("write: %w", syscall.ENOSPC)
	}
	return f.MemoryStore.SaveBan(b)
}

func (f *fullStore) DeleteBan(k netip.Prefix) error {
	if f.full.Load() {
		return fmt.Errorf("write: %w", syscall.ENOSPC)
	}
	return f.MemoryStore.DeleteBan(k)
}

// TestAdminUnbanStoreDown: an unban the store cannot write yet is lifted
// here and queued (written once the store takes writes again): the API
// answers 202 with "unbanned" and a warning saying so, and the CLI prints
// both. It answered 500 "the store still has it", as if nothing had been
// done, and an operator retried or escalated for nothing.
func TestAdminUnbanStoreDown(t *testing.T) {
	fs := &fullStore{MemoryStore: limiter.NewMemoryStore()}
	td := newTestDaemonStore(t, "", fs)
	if code, body := td.call(t, "POST", "/bans", "application/json", `{"ip":"203.0.113.7","duration":"2h"}`); code != 201 {
		t.Fatalf("ban: %d %s", code, body)
	}
	fs.full.Store(true)
	code, body := td.call(t, "DELETE", "/bans/203.0.113.7", "", "")
	if code != 202 || !strings.Contains(body, `"unbanned": "203.0.113.7/32"`) || !strings.Contains(body, "queued") {
		t.Fatalf("unban with the store full = %d %s", code, body)
	}
	if c := td.lim.Check(time.Now(), netip.MustParseAddr("203.0.113.7")); !c.Allowed {
		t.Fatalf("still refused here: %+v", c)
	}
	fs.full.Store(false)
	if code, body := td.call(t, "POST", "/bans", "application/json", `{"ip":"203.0.113.8","duration":"2h"}`); code != 201 {
		t.Fatalf("ban: %d %s", code, body)
	}
	fs.full.Store(true)
	ccode, out, errs := cli("bans", "del", "-admin", strings.TrimPrefix(td.url, "http://"), "203.0.113.8")
	if ccode != 0 || !strings.Contains(out, "unbanned 203.0.113.8/32") || !strings.Contains(errs, "warning: lifted here") {
		t.Fatalf("ftpguard bans del with the store full = %d\nstdout: %s\nstderr: %s", ccode, out, errs)
	}
	fs.full.Store(false)
	deadline := time.Now().Add(30 * time.Second)
	for {
		bans, _ := fs.LoadBans(time.Time{})
		if len(bans) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queued unban was never written: the store holds %v", bans)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAdminHealthzUnsaved: a ban the store cannot save shows in /healthz
// (degraded, with the reason), in /status and in the log (an error, then
// "ban saved" once the retry lands). Before, /healthz said ok and nothing
// was logged.
func TestAdminHealthzUnsaved(t *testing.T) {
	fs := &fullStore{MemoryStore: limiter.NewMemoryStore()}
	fs.full.Store(true)
	td := newTestDaemonStore(t, "", fs)
	if code, body := td.call(t, "POST", "/bans", "application/json", `{"ip":"203.0.113.7","duration":"2h"}`); code != 201 {
		t.Fatalf("ban: %d %s", code, body)
	}
	code, body := td.call(t, "GET", "/healthz", "", "")
	var h admin.Health
	json.Unmarshal([]byte(body), &h)
	if code != 200 || h.Status != "degraded" || h.Store.Unsaved != 1 || len(h.Reasons) != 1 ||
		!strings.Contains(h.Reasons[0], "no space left") {
		t.Fatalf("healthz with an unsaved ban = %d %s", code, body)
	}
	if code, body := td.call(t, "GET", "/status", "", ""); code != 200 || !strings.Contains(body, `"degraded"`) {
		t.Fatalf("status with an unsaved ban = %d %s", code, body)
	}
	if !strings.Contains(td.logs.String(), "ban not saved") {
		t.Errorf("the unsaved ban was not logged as an error:\n%s", td.logs)
	}
	fs.full.Store(false)
	deadline := time.Now().Add(30 * time.Second)
	for td.lim.Stats().Unsaved != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the ban was never saved")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := td.call(t, "GET", "/healthz", "", ""); code != 200 || !strings.Contains(body, `"status": "ok"`) {
		t.Fatalf("healthz once saved = %d %s", code, body)
	}
	bans, _ := fs.LoadBans(time.Time{})
	if len(bans) != 1 || !strings.Contains(td.logs.String(), "ban saved") {
		t.Fatalf("store holds %v; log:\n%s", bans, td.logs)
	}
}

func TestAdminPprof(t *testing.T) {
	td := newTestDaemon(t, "")
	if code, _ := td.call(t, "GET", "/debug/pprof/", "", ""); code != 404 {
		t.Errorf("pprof off: %d, want 404", code)
	}
	td2 := newTestDaemon(t, "[admin]\npprof = true\n")
	if code, body := td2.call(t, "GET", "/debug/pprof/", "", ""); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("pprof on: %d", code)
	}
}

func TestMetrics(t *testing.T) {
	td := newTestDaemon(t, "")
	m := td.m
	m.SessionStart()
	m.SessionStart()
	m.SessionEnd()
	m.Login(true)
	m.Login(false)
	m.Login(false)
	m.Reject("banned")
	m.Reject("budget exhausted")
	m.Reject("some new reason from the proxy") // → other
	m.Bytes(true, 100)
	m.Bytes(false, 2048)
	m.BackendDial(3*time.Millisecond, nil)
	m.BackendDial(time.Second, fmt.Errorf("refused"))
	td.lim.BanKey(time.Now(), netip.MustParsePrefix("203.0.113.0/24"), time.Hour, "")
	_, body := td.call(t, "GET", "/metrics", "", "")
	for _, want := range []string{
		"ftpguard_sessions_active 1",
		"ftpguard_sessions_total 2",
		`ftpguard_logins_total{result="ok"} 1`,
		`ftpguard_logins_total{result="failed"} 2`,
		`ftpguard_rejects_total{reason="banned"} 1`,
		`ftpguard_rejects_total{reason="budget exhausted"} 1`,
		`ftpguard_rejects_total{reason="other"} 1`,
		`ftpguard_rejects_total{reason="max_conns"} 0`,
		`ftpguard_bytes_relayed_total{direction="upload"} 100`,
		`ftpguard_bytes_relayed_total{direction="download"} 2048`,
		"ftpguard_backend_dial_seconds_count 2",
		`ftpguard_backend_dial_seconds_bucket{le="0.005"} 1`,
		"ftpguard_backend_dial_errors_total 1",
		"ftpguard_bans_active 1",
		"ftpguard_bans_total 1",
		"ftpguard_store_errors_total 0",
		"ftpguard_tracked_keys 0",
		`ftpguard_bans_evicted_total{state="in_force"} 0`,
		`ftpguard_bans_evicted_total{state="ended"} 0`,
		"ftpguard_user_budgets_throttled_total 0",
		"go_goroutines",
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want+" ") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "some new reason") {
		t.Error("an unknown reason became a label value")
	}
}

// TestStatusPage: the page shows bans with their offence count and the
// recent events, escapes what clients chose, and refreshes itself.
func TestStatusPage(t *testing.T) {
	td := newTestDaemon(t, "")
	key := netip.MustParsePrefix("203.0.113.66/32")
	td.lim.BanKey(time.Now(), key, time.Hour, "")
	td.lim.BanKey(time.Now(), key, time.Hour, "") // offence 2
	evil := `<script>alert("x")</script>`
	td.log.With("session", 7, "peer", "203.0.113.66").Warn("login failed", "user", evil, "code", 530)
	td.log.Debug("command", "cmd", "NOOP") // debug: not an event
	code, body := td.call(t, "GET", "/", "", "")
	if code != 200 {
		t.Fatalf("GET / = %d", code)
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="5">`,
		`<td class="mono">203.0.113.66/32</td><td>admin</td><td class="n">2</td>`,
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
		"login failed",
		"session=7 code=530",
		"5 failures per key, refilled over 10m",
		`<span class="badge ok">enforce</span>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(body, evil) || strings.Contains(body, "NOOP") {
		t.Error("status page shows an unescaped username, or a debug record")
	}
	for _, bad := range []string{"http://", "https://", "<script", "src="} {
		if strings.Contains(strings.ReplaceAll(body, "&lt;script", ""), bad) {
			t.Errorf("status page refers to %q: no external assets, no scripts", bad)
		}
	}
	code, body = td.call(t, "GET", "/status", "", "")
	var s admin.Status
	if err := json.Unmarshal([]byte(body), &s); code != 200 || err != nil || len(s.Bans) != 1 || s.Bans[0].Count != 2 {
		t.Fatalf("GET /status = %d %v %s", code, err, body)
	}
}
