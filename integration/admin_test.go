//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const adminToken = "integration-admin-token-0123456789"

// adminGuard runs ftpguard with its admin listener on a kernel-chosen
// loopback port, behind the token adminToken.
func adminGuard(t *testing.T, backend string, o guardOpts) *guard {
	t.Helper()
	tf := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tf, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if o.Admin == "" {
		o.Admin = "127.0.0.1:0"
	}
	o.AdminExtra += fmt.Sprintf("token_file = %q\n", tf)
	g := startGuard(t, backend, o)
	if g.AdminAddr == "" {
		t.Fatal("ftpguard logged no \"admin listening\"")
	}
	return g
}

// admin makes an HTTP request to g's admin listener (token: "" for none)
// and returns the status and body.
func (g *guard) admin(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+g.AdminAddr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample name (with its labels, exactly as
// exposed, e.g. `ftpguard_logins_total{result="failed"}`), or -1.
func (g *guard) metric(t *testing.T, name string) float64 {
	t.Helper()
	code, body := g.admin(t, "GET", "/metrics", adminToken, "")
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, v)
			}
			return f
		}
	}
	return -1
}

// ftpguardCLI runs the ftpguard binary with args and returns its exit
// code, stdout and stderr.
func ftpguardCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(guardBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestAdminAPIAndCLI drives every admin route and client subcommand
// against the real binary in front of a real vsftpd: the token, a ban
// from the CLI refusing the next connection with 421 and its lifting,
// metrics moving during a scripted attack, reload (valid and invalid)
// under a live session.
func TestAdminAPIAndCLI(t *testing.T) {
	const budget = 3
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: budget, BanTime: "10m"})
	name := fmt.Sprintf("admin-%d.bin", time.Now().UnixNano())
	src, want := randomFile(t, testHome, name, 256<<10)
	t.Cleanup(func() { os.Remove(src) })

	// Token: every route but /healthz needs it.
	for _, path := range []string{"/bans", "/metrics", "/", "/status"} {
		if code, _ := g.admin(t, "GET", path, "", ""); code != 401 {
			t.Errorf("GET %s without the token: %d, want 401", path, code)
		}
		if code, _ := g.admin(t, "GET", path, "wrong-token-wrong-token", ""); code != 401 {
			t.Errorf("GET %s with a wrong token: %d, want 401", path, code)
		}
	}
	if code, body := g.admin(t, "POST", "/reload", "", ""); code != 401 {
		t.Errorf("POST /reload without the token: %d %s", code, body)
	}
	if code, body := g.admin(t, "GET", "/healthz", "", ""); code != 200 || !strings.Contains(body, `"status": "ok"`) {
		t.Errorf("GET /healthz: %d %s", code, body)
	}

	// bans add from the CLI (the token from -config's token_file; the
	// address from -admin, as the config says port 0): the next connection
	// from that address gets 421 and never reaches the daemon.
	code, out, errs := ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, "127.0.0.61", "30m")
	if code != 0 || !strings.Contains(out, "banned 127.0.0.61/32 for 30m0s") {
		t.Fatalf("bans add: %d %q %q", code, out, errs)
	}
	r := dialRaw(t, "127.0.0.61", g.Addr)
	if code, text := r.reply(); code != 421 || !strings.Contains(text, "banned") {
		t.Fatalf("banned address's greeting: %d %q; want 421", code, text)
	}
	code, out, _ = ftpguardCLI(t, "bans", "list", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 0 || !strings.Contains(out, "KEY") || !regexp.MustCompile(`127\.0\.0\.61/32\s+ftpguard\s+admin\s+1\s+(29m\d+s|30m0s)\s`).MatchString(out) {
		t.Fatalf("bans list: %d\n%s", code, out)
	}
	if code, body := g.admin(t, "GET", "/bans", adminToken, ""); code != 200 || !strings.Contains(body, `"key": "127.0.0.61/32"`) ||
		!strings.Contains(body, `"seconds_left": 1`) {
		t.Fatalf("GET /bans: %d %s", code, body)
	}
	code, out, errs = ftpguardCLI(t, "bans", "del", "-config", g.Config, "-admin", g.AdminAddr, "127.0.0.61")
	if code != 0 || !strings.Contains(out, "unbanned 127.0.0.61/32") {
		t.Fatalf("bans del: %d %q %q", code, out, errs)
	}
	c, err := ftpClient(t, "127.0.0.61", g.Addr)
	if err != nil {
		t.Fatalf("after bans del: %v", err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatalf("login after bans del: %v", err)
	}
	c.Quit()
	code, _, errs = ftpguardCLI(t, "bans", "del", "-config", g.Config, "-admin", g.AdminAddr, "127.0.0.61")
	if code != 1 || !strings.Contains(errs, "no ban of 127.0.0.61/32 in force") {
		t.Fatalf("bans del of no ban: %d %q", code, errs)
	}
	code, _, errs = ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, "not-an-address")
	if code != 2 || !strings.Contains(errs, `ip: "not-an-address" is not an IP address or CIDR`) {
		t.Fatalf("bans add of a name: %d %q", code, errs)
	}
	code, _, errs = ftpguardCLI(t, "bans", "list", "-admin", g.AdminAddr)
	if code != 1 || !strings.Contains(errs, "refused the token (401)") {
		t.Fatalf("bans list without the token: %d %q", code, errs)
	}
	// The API directly: a CIDR, then its removal.
	if code, body := g.admin(t, "POST", "/bans", adminToken, `{"ip":"127.0.1.0/24","duration":"5m","reason":"test net"}`); code != 201 {
		t.Fatalf("POST /bans CIDR: %d %s", code, body)
	}
	r = dialRaw(t, "127.0.1.9", g.Addr)
	r.expect(421)
	if code, body := g.admin(t, "DELETE", "/bans/127.0.1.0/24", adminToken, ""); code != 200 {
		t.Fatalf("DELETE /bans/127.0.1.0/24: %d %s", code, body)
	}
	if code, body := g.admin(t, "POST", "/bans", adminToken, `{"ip":"127.0.0.62","duration":"forever"}`); code != 400 ||
		!strings.Contains(body, `duration: \"forever\" is not a duration`) {
		t.Fatalf("POST /bans bad duration: %d %s", code, body)
	}

	// A scripted attack moves the metrics.
	failed0 := g.metric(t, `ftpguard_logins_total{result="failed"}`)
	bans0 := g.metric(t, "ftpguard_bans_total")
	banned0 := g.metric(t, `ftpguard_rejects_total{reason="banned"}`)
	if failed0 < 0 || bans0 != 2 || banned0 != 2 { // two admin bans, two refused connections so far
		t.Fatalf("before the attack: failed %v, bans %v, rejects{banned} %v", failed0, bans0, banned0)
	}
	offend(t, g, "127.0.0.63", budget)
	for range 2 {
		r := dialRaw(t, "127.0.0.63", g.Addr)
		r.expect(421)
	}
	if got := g.metric(t, `ftpguard_logins_total{result="failed"}`); got != failed0+budget {
		t.Errorf("logins failed: %v, want %v", got, failed0+budget)
	}
	if got := g.metric(t, "ftpguard_bans_total"); got != bans0+1 {
		t.Errorf("bans_total: %v, want %v", got, bans0+1)
	}
	if got := g.metric(t, "ftpguard_bans_active"); got != 1 {
		t.Errorf("bans_active: %v, want 1", got)
	}
	if got := g.metric(t, `ftpguard_rejects_total{reason="banned"}`); got != banned0+2 {
		t.Errorf("rejects{banned}: %v, want %v", got, banned0+2)
	}
	if got := g.metric(t, `ftpguard_logins_total{result="ok"}`); got != 1 {
		t.Errorf("logins ok: %v, want 1", got)
	}
	if got := g.metric(t, "ftpguard_backend_dial_seconds_count"); got < float64(budget+1) {
		t.Errorf("backend dials: %v", got)
	}

	// A live session, opened before the reload, finishes a transfer after it.
	c, err = ftpClient(t, "127.0.0.64", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Quit()
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	if got := g.metric(t, "ftpguard_sessions_active"); got != 1 {
		t.Errorf("sessions_active with one client: %v", got)
	}
	conf, _ := os.ReadFile(g.Config)
	os.WriteFile(g.Config, bytes.Replace(conf, []byte("failures = 3"), []byte("failures = 1"), 1), 0o600)
	code, out, errs = ftpguardCLI(t, "reload", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 0 || !strings.Contains(out, "reloaded ") {
		t.Fatalf("ftpguard reload: %d %q %q", code, out, errs)
	}
	resp, err := c.Retr(name)
	if err != nil {
		t.Fatalf("RETR after reload in a session opened before: %v", err)
	}
	got, err := io.ReadAll(resp)
	resp.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("RETR after reload: %d bytes, %v", len(got), err)
	}
	if g.metric(t, `ftpguard_bytes_relayed_total{direction="download"}`) < float64(len(want)) {
		t.Error("bytes_relayed{download} did not count the transfer")
	}
	offend(t, g, "127.0.0.65", 1) // the reloaded budget: one failure bans
	waitFor(t, "ban under the reloaded budget", func() bool { return g.Count(t, "ban", "key", "127.0.0.65/32") == 1 })

	// An invalid config is refused with the reason; the old one stays.
	os.WriteFile(g.Config, bytes.Replace(conf, []byte("failures = 3"), []byte("failures = 0"), 1), 0o600)
	code, _, errs = ftpguardCLI(t, "reload", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 1 || !strings.Contains(errs, "limits.failures: must be ≥ 1") || !strings.Contains(errs, "old config stays") {
		t.Fatalf("ftpguard reload of an invalid config: %d %q", code, errs)
	}
	os.WriteFile(g.Config, []byte("listen = \n"), 0o600)
	if code, body := g.admin(t, "POST", "/reload", adminToken, ""); code != 400 || !strings.Contains(body, "ftpguard.toml:1") {
		t.Fatalf("POST /reload of a broken file: %d %s", code, body)
	}
	if got := g.metric(t, `ftpguard_config_reloads_total{result="failed"}`); got != 2 {
		t.Errorf("reloads failed: %v, want 2", got)
	}
	if _, err := c.List(""); err != nil {
		t.Fatalf("session after the rejected reloads: %v", err)
	}
	os.WriteFile(g.Config, conf, 0o600)

	// status: a readable summary, exit 0 while healthy.
	code, out, errs = ftpguardCLI(t, "status", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 0 || !strings.Contains(out, "health    OK") || !strings.Contains(out, "banned 4") || !strings.Contains(out, "127.0.0.63/32") {
		t.Fatalf("ftpguard status: %d\n%s\n%s", code, out, errs)
	}

	logText, _ := os.ReadFile(g.LogPath)
	_, metrics := g.admin(t, "GET", "/metrics", adminToken, "")
	if strings.Contains(metrics, testUser) || strings.Contains(metrics, testPass) || bytes.Contains(logText, []byte(testPass)) {
		t.Error("a username or password appears in the metrics, or a password in the log")
	}
}

// TestAdminHealthzBackendDown: with the backend down, /healthz is 503 and
// `ftpguard status` exits 1, here over a unix-socket admin listener.
func TestAdminHealthzBackendDown(t *testing.T) {
	setupHost(t)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	startGuard(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), guardOpts{Admin: "unix:" + sock})
	code, out, errs := ftpguardCLI(t, "status", "-admin", "unix:"+sock)
	if code != 1 || !strings.Contains(out, "health    UNHEALTHY") || !strings.Contains(out, "UNREACHABLE") {
		t.Fatalf("ftpguard status, backend down: %d\n%s\n%s", code, out, errs)
	}
	code, out, _ = ftpguardCLI(t, "bans", "list", "-admin", "unix:"+sock)
	if code != 0 || out != "no bans in force\n" {
		t.Fatalf("bans list over the socket: %d %q", code, out)
	}
	// /healthz itself, through the socket.
	cl := &http.Client{Transport: &http.Transport{DialContext: unixDialer(sock)}, Timeout: 10 * time.Second}
	resp, err := cl.Get("http://localhost/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"ok": false`) || !strings.Contains(string(body), "connection refused") {
		t.Fatalf("GET /healthz, backend down: %d %s", resp.StatusCode, body)
	}
	// No admin endpoint at all: the error names the address and the reason.
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	code, _, errs = ftpguardCLI(t, "bans", "list", "-admin", dead)
	if code != 1 || errs != "ftpguard: no ftpguard admin endpoint at "+dead+": connection refused\n" {
		t.Fatalf("bans list, no endpoint: %d %q", code, errs)
	}
}

// unixDialer dials the unix socket path whatever address is asked.
func unixDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}
}

// TestFirewallPush: the real binary runs the [firewall] commands, with the
// placeholders substituted, for a budget ban, an admin ban and an admin
// unban, and pushes the bans in force again after a restart.
func TestFirewallPush(t *testing.T) {
	d := startVsftpd(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "firewall.log")
	fw := fmt.Sprintf(`
[firewall]
ban_command = ["/bin/sh", "-c", "echo \"$@\" >> %[1]s", "sh", "ban", "{ip}", "{prefix}", "{seconds}", "{family}"]
unban_command = ["/bin/sh", "-c", "echo \"$@\" >> %[1]s", "sh", "unban", "{prefix}"]
timeout = "2s"
`, out)
	o := guardOpts{Failures: 2, BanTime: "1h", Dir: dir, Extra: fw}
	g := adminGuard(t, d.Addr, o)
	lines := func() []string {
		b, _ := os.ReadFile(out)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	offend(t, g, "127.0.0.81", 2)
	if code, body := g.admin(t, "POST", "/bans", adminToken, `{"ip":"127.0.2.0/24","duration":"10m"}`); code != 201 {
		t.Fatalf("POST /bans: %d %s", code, body)
	}
	if code, body := g.admin(t, "DELETE", "/bans/127.0.2.0/24", adminToken, ""); code != 200 {
		t.Fatalf("DELETE /bans: %d %s", code, body)
	}
	waitFor(t, "three firewall commands", func() bool { return len(lines()) == 3 })
	// A ban that runs out is unbanned in the firewall (unban_expired).
	if code, body := g.admin(t, "POST", "/bans", adminToken, `{"ip":"127.0.3.0/24","duration":"1s"}`); code != 201 {
		t.Fatalf("POST /bans: %d %s", code, body)
	}
	waitFor(t, "five firewall commands", func() bool { return len(lines()) == 5 })
	got := lines()
	if !regexp.MustCompile(`^ban 127\.0\.0\.81 127\.0\.0\.81/32 (3600|3599) ip$`).MatchString(got[0]) ||
		!regexp.MustCompile(`^ban 127\.0\.2\.0 127\.0\.2\.0/24 (600|599) ip$`).MatchString(got[1]) || got[2] != "unban 127.0.2.0/24" ||
		got[3] != "ban 127.0.3.0 127.0.3.0/24 1 ip" || got[4] != "unban 127.0.3.0/24" {
		t.Fatalf("firewall commands:\n%s", strings.Join(got, "\n"))
	}
	if v := g.metric(t, `ftpguard_firewall_commands_total{action="ban",result="ok"}`); v != 3 {
		t.Errorf("firewall ban commands ok: %v", v)
	}
	if v := g.metric(t, `ftpguard_firewall_commands_total{action="unban",result="ok"}`); v != 2 {
		t.Errorf("firewall unban commands ok: %v", v)
	}
	if n := g.Count(t, "firewall command", "action", "unban", "expired", "true"); n != 1 {
		t.Errorf("%d unbans logged as expired, want 1", n)
	}

	// Restarted on the same state file: the ban in force is pushed again.
	g.cmd.Process.Signal(syscall.SIGTERM)
	<-g.exited
	g.exited <- nil
	startGuard(t, d.Addr, o)
	waitFor(t, "the ban pushed again at start", func() bool { return len(lines()) == 6 })
	if got := lines()[5]; !strings.HasPrefix(got, "ban 127.0.0.81 127.0.0.81/32 ") {
		t.Fatalf("after restart: %q", got)
	}
}
