//go:build integration

package integration

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestTrapUsernames: a PASS for a trap username (any spelling of its
// canonical form) is never forwarded: the client gets "530 Login
// incorrect." then 421, its address is banned at once (Reason "trap"), and
// vsftpd sees no failed login. USER for a trap name is answered as any
// (331: no enumeration). An owner who logged in to a name before it became
// a trap (known-good pair) still logs in, and legitimate users elsewhere
// are untouched.
func TestTrapUsernames(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 5})
	// The owner of fgtest logs in before fgtest is made a trap name.
	c, err := ftpClient(t, "127.0.0.70", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	conf, _ := os.ReadFile(g.Config)
	conf = append(conf, []byte("\n[user_limits]\ntrap_usernames = [\"root\", \"admin\", \""+strings.ToUpper(testUser)+"\"]\n")...)
	os.WriteFile(g.Config, conf, 0o600)
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reloaded", func() bool { return g.Count(t, "reloaded") == 1 })

	for i, name := range []string{"root", "ROOT", "Admin", testUser} {
		src := "127.0.0." + string(rune('1'+i)) + "1" // 127.0.0.11, .21, .31, .41
		r := dialRaw(t, src, g.Addr)
		r.expect(220)
		r.send("USER " + name)
		r.expect(331) // as for any name
		r.send("PASS guess")
		if text := r.expect(530); text != "Login incorrect." {
			t.Fatalf("%s: 530 %q, want the reply a wrong password gets", name, text)
		}
		if code, text := r.reply(); code != 421 {
			t.Fatalf("%s: after the 530: %d %q, want 421", name, code, text)
		}
		if code, _ := dialRaw(t, src, g.Addr).reply(); code != 421 {
			t.Fatalf("%s: %s not banned after a trap guess: %d", name, src, code)
		}
		waitFor(t, "the trap ban of "+src, func() bool { return g.Count(t, "ban", "key", src+"/32", "reason", "trap") == 1 })
	}
	if n := g.Count(t, "reject", "reason", "trap username"); n != 4 {
		t.Fatalf("%d trap rejects logged, want 4", n)
	}
	// The owner of fgtest (known-good from 127.0.0.70) is never trapped.
	c, err = ftpClient(t, "127.0.0.70", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatalf("known-good owner of a trap name: %v", err)
	}
	c.Quit()
	// Nor is a guess for an ordinary name: forwarded, counted as usual.
	r := dialRaw(t, "127.0.0.71", g.Addr)
	r.expect(220)
	r.send("USER alice", "PASS wrong")
	r.expect(331)
	r.expect(530)
	r.send("QUIT")
	r.expect(221)
	if n := d.FailedLogins(t); n != 1 {
		t.Fatalf("vsftpd saw %d failed logins, want 1 (alice's; none of the 4 trap guesses)", n)
	}
	if !bytes.Contains(mustRead(t, g.LogPath), []byte(`"reason":"trap"`)) {
		t.Fatal("no ban with reason trap in the log")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
