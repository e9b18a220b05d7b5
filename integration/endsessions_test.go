//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBanEndsSessions: an admin ban of 127.0.0.81 ends its session that
// has not logged in at once (421 naming the reason: its PASS never reaches
// the daemon), while its logged-in session goes on (end_sessions_on_ban
// "pre-login", the default). After a reload to "all", a ban of 127.0.0.82
// also ends its logged-in session, after the reply it awaits. Sessions of
// other addresses, and allowlisted ones inside a banned network, are
// untouched.
func TestBanEndsSessions(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 5})
	ban := func(ip string) {
		t.Helper()
		if code, out, errs := ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, ip, "30m"); code != 0 {
			t.Fatalf("bans add %s: %d %q %q", ip, code, out, errs)
		}
	}
	login := func(src string) *raw {
		r := dialRaw(t, src, g.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
		r.expect(230)
		return r
	}
	pre := dialRaw(t, "127.0.0.81", g.Addr)
	pre.expect(220)
	pre.send("USER " + testUser)
	pre.expect(331)
	in := login("127.0.0.81")
	other := login("127.0.0.83")
	ban("127.0.0.81")
	if text := pre.expect(421); !strings.Contains(text, "banned (admin)") {
		t.Fatalf("pre-login session: 421 %q, want the reason", text)
	}
	pre.send("PASS guess") // too late: the session is closed
	if code, _ := pre.reply(); code != 0 {
		t.Fatalf("pre-login session after its 421: reply %d, want the end", code)
	}
	in.send("NOOP") // logged in: kept under "pre-login"
	in.expect(200)

	conf, _ := os.ReadFile(g.Config)
	os.WriteFile(g.Config, bytes.Replace(conf, []byte("failure_delay = \"0s\""),
		[]byte("failure_delay = \"0s\"\nend_sessions_on_ban = \"all\"\nallow = [\"127.0.0.85/32\"]"), 1), 0o600)
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reloaded", func() bool { return g.Count(t, "reloaded") == 1 })
	in2 := login("127.0.0.82")
	in2.send("PWD")
	in2.expect(257)
	ban("127.0.0.82")
	if text := in2.expect(421); !strings.Contains(text, "banned (admin)") {
		t.Fatalf("logged-in session under \"all\": 421 %q", text)
	}
	if code, _ := in2.reply(); code != 0 {
		t.Fatalf("logged-in session after its 421: reply %d, want the end", code)
	}
	// Legitimate users first: another address's session is untouched, and
	// so is an allowlisted one inside a banned network.
	other.send("NOOP")
	other.expect(200)
	kept := login("127.0.0.85")
	ban("127.0.0.84/30")
	kept.send("NOOP")
	kept.expect(200)
	if n := d.FailedLogins(t); n != 0 {
		t.Fatalf("vsftpd saw %d failed logins, want 0", n)
	}
	if n := g.Count(t, "reject", "reason", "banned", "ban", "127.0.0.81/32"); n != 1 {
		t.Fatalf("%d sessions of 127.0.0.81 ended by its ban, want 1 (the logged-in one stays)", n)
	}
}

// TestBanEndsSessionsAfterTransfer: under end_sessions_on_ban = "all", a
// ban of a logged-in client in the middle of a download lets the download
// finish (all its bytes, then 226) and only then ends the session with 421.
func TestBanEndsSessionsAfterTransfer(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 5})
	conf, _ := os.ReadFile(g.Config)
	os.WriteFile(g.Config, bytes.Replace(conf, []byte("failure_delay = \"0s\""),
		[]byte("failure_delay = \"0s\"\nend_sessions_on_ban = \"all\""), 1), 0o600)
	if code, out, errs := ftpguardCLI(t, "reload", "-config", g.Config, "-admin", g.AdminAddr); code != 0 {
		t.Fatalf("reload: %d %q %q", code, out, errs)
	}
	r, dc, want := startDownload(t, g, "127.0.0.84", 32<<20) // more than the socket buffers hold
	// The download is under way (the client has read nothing yet) when
	// the ban comes.
	if code, out, errs := ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, "127.0.0.84", "30m"); code != 0 {
		t.Fatalf("bans add: %d %q %q", code, out, errs)
	}
	dc.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(dc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("download under a ban: %d of %d bytes, %v", len(got), len(want), err)
	}
	r.expect(226)
	if text := r.expect(421); !strings.Contains(text, "banned (admin)") {
		t.Fatalf("after the transfer: 421 %q", text)
	}
}

// startDownload logs in from src through g, opens a passive data
// connection and starts a RETR of a new random file of size bytes (removed
// at cleanup); it returns once the 150 has come, the client having read
// nothing yet.
func startDownload(t *testing.T, g *guard, src string, size int) (r *raw, dc net.Conn, want []byte) {
	t.Helper()
	name := fmt.Sprintf("ban-transfer-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, size)
	t.Cleanup(func() { os.Remove(path) })
	r = dialRaw(t, src, g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	r.send("TYPE I")
	r.expect(200)
	r.send("PASV")
	m := regexp.MustCompile(`(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)`).FindStringSubmatch(r.expect(227))
	var p [6]int
	for i := range p {
		fmt.Sscan(m[i+1], &p[i])
	}
	dc, err := dialer(src).Dial("tcp", fmt.Sprintf("%d.%d.%d.%d:%d", p[0], p[1], p[2], p[3], p[4]*256+p[5]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	r.send("RETR " + name)
	r.expect(150)
	return r, dc, want
}

// TestBanEndsSessionsSharedStore: a ban made on one instance ends the
// sessions it covers on another instance on the same Redis, which learns it
// from the store (the path a resync after a subscription gap takes too,
// thousands of bans at once: proxy.Server.EndBansSoon). Another address's
// session on that instance is untouched.
func TestBanEndsSessionsSharedStore(t *testing.T) {
	d := startVsftpd(t)
	url, _ := startRedis(t)
	opts := guardOpts{Failures: 5, Extra: fmt.Sprintf("[store]\nkind = \"redis\"\nurl = %q\n", url)}
	a, b := adminGuard(t, d.Addr, opts), startGuard(t, d.Addr, opts)
	pre := dialRaw(t, "127.0.0.87", b.Addr)
	pre.expect(220)
	pre.send("USER " + testUser)
	pre.expect(331)
	other := dialRaw(t, "127.0.0.88", b.Addr)
	other.expect(220)
	start := time.Now()
	if code, out, errs := ftpguardCLI(t, "bans", "add", "-config", a.Config, "-admin", a.AdminAddr, "127.0.0.87", "30m"); code != 0 {
		t.Fatalf("bans add on a: %d %q %q", code, out, errs)
	}
	if text := pre.expect(421); !strings.Contains(text, "banned (admin)") {
		t.Fatalf("b's session of the address banned on a: 421 %q, want the reason", text)
	}
	t.Logf("b ended the session %v after the ban on a", time.Since(start).Round(time.Millisecond))
	other.send("NOOP")
	other.expect(530) // vsftpd's answer before a login: the session is alive
	if n := b.Count(t, "reject", "reason", "banned", "ban", "127.0.0.87/32"); n != 1 {
		t.Fatalf("b logged %d sessions ended by the ban, want 1", n)
	}
	if n := d.FailedLogins(t); n != 0 {
		t.Fatalf("vsftpd saw %d failed logins, want 0", n)
	}
}
