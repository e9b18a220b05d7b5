//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
)

// TestTransfers logs in through ftpguard and lists, downloads and uploads a
// multi-MiB file, byte for byte, with the Go client (EPSV and PASV) and curl.
func TestTransfers(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{})
	name := "dl-" + fmt.Sprint(time.Now().UnixNano()) + ".bin"
	src, want := randomFile(t, testHome, name, 8<<20)
	t.Cleanup(func() { os.Remove(src) })

	for _, mode := range []struct {
		name string
		opts []ftp.DialOption
	}{
		{"EPSV", nil},
		{"PASV", []ftp.DialOption{ftp.DialWithDisabledEPSV(true)}},
	} {
		t.Run("go-client-"+mode.name, func(t *testing.T) {
			c, err := ftpClient(t, "127.0.0.2", g.Addr, mode.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Quit()
			if err := c.Login(testUser, testPass); err != nil {
				t.Fatalf("login: %v", err)
			}
			entries, err := c.List("")
			if err != nil {
				t.Fatalf("LIST: %v", err)
			}
			found := false
			for _, e := range entries {
				found = found || e.Name == name
			}
			if !found {
				t.Fatalf("LIST does not show %s: %d entries", name, len(entries))
			}
			r, err := c.Retr(name)
			if err != nil {
				t.Fatalf("RETR: %v", err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("RETR: %d bytes, err %v; want %d identical bytes", len(got), err, len(want))
			}
			up := "up-" + mode.name + "-" + name
			if err := c.Stor(up, bytes.NewReader(want)); err != nil {
				t.Fatalf("STOR: %v", err)
			}
			defer os.Remove(filepath.Join(testHome, up))
			stored, err := os.ReadFile(filepath.Join(testHome, up))
			if err != nil || !bytes.Equal(stored, want) {
				t.Fatalf("STOR: daemon has %d bytes (err %v); want %d identical bytes", len(stored), err, len(want))
			}
		})
	}

	for _, mode := range []struct{ name, flag string }{{"EPSV", ""}, {"PASV", "--disable-epsv"}} {
		t.Run("curl-"+mode.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			args := []string{"-sS", "--max-time", "30", "--interface", "127.0.0.3",
				fmt.Sprintf("ftp://%s:%s@%s/%s", testUser, testPass, g.Addr, name), "-o", out}
			if mode.flag != "" {
				args = append([]string{mode.flag}, args...)
			}
			if b, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
				t.Fatalf("curl download: %v: %s", err, b)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, want) {
				t.Fatalf("curl RETR: %d bytes; want %d identical bytes", len(got), len(want))
			}
			up := "curl-" + mode.name + "-" + name
			args = []string{"-sS", "--max-time", "30", "--interface", "127.0.0.3", "-T", src,
				fmt.Sprintf("ftp://%s:%s@%s/%s", testUser, testPass, g.Addr, up)}
			if mode.flag != "" {
				args = append([]string{mode.flag}, args...)
			}
			if b, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
				t.Fatalf("curl upload: %v: %s", err, b)
			}
			defer os.Remove(filepath.Join(testHome, up))
			stored, _ := os.ReadFile(filepath.Join(testHome, up))
			if !bytes.Equal(stored, want) {
				t.Fatalf("curl STOR: daemon has %d bytes; want %d identical bytes", len(stored), len(want))
			}
		})
	}
	if n := g.Count(t, "login ok"); n < 4 {
		t.Errorf("ftpguard logged %d \"login ok\" events; want ≥ 4", n)
	}
}

// TestBruteForceIsBanned guesses passwords from 127.0.0.2 until ftpguard
// refuses it: the daemon sees no more failures than the budget, the next
// connection from 127.0.0.2 gets 421 while 127.0.0.3 logs in, and no
// password appears in ftpguard's log.
func TestBruteForceIsBanned(t *testing.T) {
	const budget = 4
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})

	refused := false
	for i := 0; i < 3*budget && !refused; i++ {
		c, err := ftpClient(t, "127.0.0.2", g.Addr)
		if err != nil {
			if strings.Contains(err.Error(), "421") {
				refused = true
				break
			}
			t.Fatalf("dial: %v", err)
		}
		// Several guesses per connection, as brute-force tools do; vsftpd
		// itself hangs up after 3 (max_login_fails).
		for j := 0; j < 3; j++ {
			err = c.Login(testUser, fmt.Sprintf("guess-%d-%d", i, j))
			if err == nil {
				t.Fatal("a wrong password logged in")
			}
			if strings.Contains(err.Error(), "421") {
				refused = true
				break
			}
			if !strings.Contains(err.Error(), "530") {
				break // the daemon hung up; reconnect
			}
		}
		c.Quit()
	}
	if !refused {
		t.Fatal("127.0.0.2 was never refused")
	}

	r := dialRaw(t, "127.0.0.2", g.Addr)
	if code, text := r.reply(); code != 421 || !strings.Contains(text, "banned") {
		t.Fatalf("banned peer's greeting: %d %q; want 421 …banned…", code, text)
	}

	c, err := ftpClient(t, "127.0.0.3", g.Addr)
	if err != nil {
		t.Fatalf("innocent peer: %v", err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatalf("innocent peer's login: %v", err)
	}
	c.Quit()

	if n := d.FailedLogins(t); n > budget || n == 0 {
		t.Fatalf("vsftpd saw %d failed logins; want 1..%d (the budget)", n, budget)
	}
	if n := g.Count(t, "ban", "key", "127.0.0.2/32"); n != 1 {
		t.Fatalf("ftpguard logged %d bans of 127.0.0.2/32; want 1", n)
	}
	logText, _ := os.ReadFile(g.LogPath)
	if bytes.Contains(logText, []byte("guess-")) || bytes.Contains(logText, []byte(testPass)) {
		t.Fatal("a password appears in ftpguard's log")
	}
	t.Logf("vsftpd saw %d failed logins (budget %d); ban logged once", d.FailedLogins(t), budget)
}

// TestHangUpAfterPASSIsCounted sends PASS and hangs up at once: each such
// attempt still costs a token, so the peer ends up banned.
func TestHangUpAfterPASSIsCounted(t *testing.T) {
	const budget = 3
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})
	for i := 0; i < budget; i++ {
		r := dialRaw(t, "127.0.0.4", g.Addr)
		r.expect(220)
		r.send("USER " + testUser)
		r.expect(331)
		r.send(fmt.Sprintf("PASS hangup-%d", i))
		r.c.Close()
		want := i + 1
		waitFor(t, fmt.Sprintf("%d failures logged", want), func() bool { return g.Count(t, "login failed") >= want })
	}
	waitFor(t, "a ban", func() bool { return g.Count(t, "ban", "key", "127.0.0.4/32") == 1 })
	r := dialRaw(t, "127.0.0.4", g.Addr)
	if code, _ := r.reply(); code != 421 {
		t.Fatalf("after %d hang-ups, greeting %d; want 421", budget, code)
	}
}

// TestPipelinedGuessesAreEachCounted sends many PASS lines in one write:
// each is seen, only the budget reaches the daemon, and the rest are
// dropped, never forwarded.
func TestPipelinedGuessesAreEachCounted(t *testing.T) {
	const budget = 3
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})
	r := dialRaw(t, "127.0.0.5", g.Addr)
	r.expect(220)
	var lines []string
	for i := 0; i < 10; i++ {
		// Lower case and stray spaces: matched all the same.
		lines = append(lines, "  user "+testUser, fmt.Sprintf("pass pipelined-%d", i))
	}
	r.send(lines...)
	codes := r.codes()
	if len(codes) == 0 || codes[len(codes)-1] != 421 {
		t.Fatalf("replies %v; want the last to be 421", codes)
	}
	if n := d.FailedLogins(t); n > budget {
		t.Fatalf("vsftpd saw %d failed logins; want ≤ %d", n, budget)
	}
	waitFor(t, "a ban", func() bool { return g.Count(t, "ban", "key", "127.0.0.5/32") == 1 })
	t.Logf("replies %v; vsftpd saw %d failures", codes, d.FailedLogins(t))
}

// TestBanExpiresAndEscalates: a ban ends after ban_time, and the next ban
// of the same key lasts ban_factor times longer.
func TestBanExpiresAndEscalates(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 2, BanTime: "1s", BanFactor: 3})
	offend := func() {
		t.Helper()
		for i := 0; i < 2; i++ {
			r := dialRaw(t, "127.0.0.6", g.Addr)
			if code, _ := r.reply(); code == 421 {
				t.Fatal("refused before the budget was spent")
			}
			r.send("USER "+testUser, "PASS wrong")
			r.expect(331)
			r.expect(530)
			r.c.Close()
		}
	}
	greeting := func() int {
		r := dialRaw(t, "127.0.0.6", g.Addr)
		code, _ := r.reply()
		r.c.Close()
		return code
	}
	offend()
	waitFor(t, "first ban", func() bool { return g.Count(t, "ban", "count", "1") == 1 })
	if c := greeting(); c != 421 {
		t.Fatalf("banned: greeting %d; want 421", c)
	}
	time.Sleep(1200 * time.Millisecond) // first ban: 1s
	if c := greeting(); c != 220 {
		t.Fatalf("after the 1s ban: greeting %d; want 220", c)
	}
	offend()
	waitFor(t, "second ban", func() bool { return g.Count(t, "ban", "count", "2") == 1 })
	time.Sleep(1200 * time.Millisecond) // second ban: 3s
	if c := greeting(); c != 421 {
		t.Fatalf("1.2s into the 3s second ban: greeting %d; want 421", c)
	}
	time.Sleep(2200 * time.Millisecond)
	if c := greeting(); c != 220 {
		t.Fatalf("after the 3s second ban: greeting %d; want 220", c)
	}
}

// TestBackendDown: a dead backend gives the client 421 within dial_timeout.
func TestBackendDown(t *testing.T) {
	setupHost(t)
	g := startGuard(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), guardOpts{})
	r := dialRaw(t, "127.0.0.7", g.Addr)
	code, text := r.reply()
	if code != 421 || !strings.Contains(text, "cannot be reached") {
		t.Fatalf("dead backend: %d %q; want 421 …cannot be reached…", code, text)
	}
	if g.Count(t, "backend unreachable") != 1 {
		t.Fatal("no \"backend unreachable\" event logged")
	}
}

// TestConnsPerIP: connections beyond max_conns_per_ip get 421 and never
// reach the daemon; another address is unaffected.
func TestConnsPerIP(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{MaxConnsPerIP: 2})
	for i := 0; i < 2; i++ {
		dialRaw(t, "127.0.0.8", g.Addr).expect(220)
	}
	r := dialRaw(t, "127.0.0.8", g.Addr)
	if code, _ := r.reply(); code != 421 {
		t.Fatalf("third connection: %d; want 421", code)
	}
	dialRaw(t, "127.0.0.9", g.Addr).expect(220)
}

// TestLoginTimeout: a client that never logs in is closed with 421.
func TestLoginTimeout(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{LoginTimeout: "500ms"})
	r := dialRaw(t, "127.0.0.10", g.Addr)
	r.expect(220)
	r.send("USER " + testUser)
	r.expect(331)
	if text := r.expect(421); !strings.Contains(text, "Login timeout") {
		t.Fatalf("timeout reply %q", text)
	}
}

// TestCheckCommand: `ftpguard check` accepts config.example.toml and names
// the file, line and key of a bad value or an unknown key.
func TestCheckCommand(t *testing.T) {
	out, err := exec.Command(guardBin, "check", "-config", "../config.example.toml").CombinedOutput()
	if err != nil {
		t.Fatalf("check config.example.toml: %v: %s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("listen = \"127.0.0.1:2100\"\n[limits]\nfailures = 0\nbogus = 1\n"), 0o600)
	out, err = exec.Command(guardBin, "check", "-config", bad).CombinedOutput()
	if err == nil {
		t.Fatalf("check accepted a bad config: %s", out)
	}
	for _, want := range []string{bad + ":3 limits.failures: must be ≥ 1", bad + ":4 limits.bogus: unknown key"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	out, _ = exec.Command(guardBin, "version").CombinedOutput()
	if !strings.HasPrefix(string(out), "ftpguard ") {
		t.Errorf("version: %q", out)
	}
}

// TestDataConnectionFromForeignIP: a passive data connection from another
// address than the control connection's is refused; the owner's works.
func TestDataConnectionFromForeignIP(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{})
	r := dialRaw(t, "127.0.0.11", g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	r.send("EPSV")
	text := r.expect(229)
	i := strings.Index(text, "|||")
	var port int
	fmt.Sscanf(text[i+3:], "%d", &port)
	thief, err := dialer("127.0.0.12").Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err == nil {
		thief.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, rerr := thief.Read(make([]byte, 1))
		thief.Close()
		if n > 0 {
			t.Fatal("a foreign address read data from the passive port")
		}
		_ = rerr
	}
	waitFor(t, "foreign data connection refused", func() bool {
		return g.Count(t, "reject", "reason", "data connection from foreign address") == 1
	})
	owner, err := dialer("127.0.0.11").Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("owner's data connection: %v", err)
	}
	defer owner.Close()
	r.send("LIST")
	r.expect(150)
	owner.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, owner)
	r.expect(226)
}

// TestReloadAndDrain: SIGHUP applies a new config without dropping an open
// session (which then transfers), an invalid config is refused with its
// reason while the old one stays, and SIGTERM lets the open session finish
// its work before ftpguard exits.
func TestReloadAndDrain(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 5})
	c, err := ftpClient(t, "127.0.0.40", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(g.Config)
	os.WriteFile(g.Config, bytes.Replace(conf, []byte("failures = 5"), []byte("failures = 1"), 1), 0o600)
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reloaded", func() bool { return g.Count(t, "reloaded") == 1 })
	if _, err := c.List(""); err != nil {
		t.Fatalf("session opened before SIGHUP: %v", err)
	}
	// The new budget (1) applies: one failure bans 127.0.0.41.
	r := dialRaw(t, "127.0.0.41", g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS wrong")
	r.expect(331)
	r.expect(530)
	waitFor(t, "ban under the reloaded budget", func() bool { return g.Count(t, "ban", "key", "127.0.0.41/32") == 1 })

	os.WriteFile(g.Config, []byte("[limits]\nfailures = -1\n"), 0o600)
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reload rejected", func() bool { return g.Count(t, "reload rejected; keeping the old config") == 1 })

	g.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "draining", func() bool { return g.Count(t, "draining") == 1 })
	if _, err := net.DialTimeout("tcp", g.Addr, time.Second); err == nil {
		t.Error("ftpguard still accepts while draining")
	}
	if _, err := c.List(""); err != nil {
		t.Fatalf("open session during drain: %v", err)
	}
	c.Quit()
	select {
	case err := <-g.exited:
		g.exited <- err
		if err != nil {
			t.Fatalf("ftpguard exited with %v after drain", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ftpguard did not exit after its last session ended")
	}
}
