package integration

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"testing"
)

// Replies must stay paired with the commands they answer, or a PASS is
// settled by another command's reply and wrong passwords reach the daemon
// uncounted. These drive the real proftpd and pure-ftpd into the ways they
// answer out of step (found by an adversarial review of ftpguard), each
// with a budget of 2: the daemon must see at most 2 wrong passwords, and
// the address must end up banned.

// guessUntilBanned opens sessions from src through g, each sending lines
// and reading every reply until the connection ends, until ftpguard greets
// with 421 (at most max sessions). It returns the replies of each session.
func guessUntilBanned(t *testing.T, g *guard, src string, max int, lines func(i int) []string) [][]string {
	t.Helper()
	var all [][]string
	for i := 0; i < max; i++ {
		r := dialRaw(t, src, g.Addr)
		if code, _ := r.reply(); code == 421 {
			return all
		}
		r.send(lines(i)...)
		var got []string
		for {
			code, text := r.reply()
			if code == 0 {
				break
			}
			got = append(got, fmt.Sprintf("%d %s", code, text))
		}
		r.c.Close()
		all = append(all, got)
	}
	t.Fatalf("%s still admitted after %d sessions: %q", src, max, all)
	return nil
}

// TestPairingTelnetEcho: proftpd echoes a username's 0xFF bytes undoubled
// ("331 Password required for a\xff\xfa"); read as Telnet IAC SB, that
// echo once swallowed every reply up to a later echoed IAC SE.
func TestPairingTelnetEcho(t *testing.T) {
	const budget = 2
	d := startProftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})
	sessions := guessUntilBanned(t, g, "127.0.0.61", 4, func(i int) []string {
		// IAC IAC from the client is one 0xFF, forwarded doubled; proftpd
		// undoubles it and echoes it raw.
		return []string{"USER a\xff\xff\xfa", "USER " + testUser, fmt.Sprintf("PASS guess-%d-1", i), "USER b\xff\xff\xf0",
			"NOOP", "USER " + testUser, fmt.Sprintf("PASS guess-%d-2", i), "NOOP", "QUIT"}
	})
	if n := d.FailedLogins(t); n > budget {
		t.Fatalf("proftpd saw %d wrong passwords; want ≤ %d\nsessions: %q", n, budget, sessions)
	}
	t.Logf("proftpd saw %d wrong passwords, then 127.0.0.61 was refused; the first session read %q", d.FailedLogins(t), sessions[0])
}

// TestPairingSilentVerb: pure-ftpd sends no reply at all to a verb such as
// "!"; forwarded, it put every later reply one command late. ftpguard
// answers it (500) and never forwards it.
func TestPairingSilentVerb(t *testing.T) {
	const budget = 2
	d := startPureftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})
	sessions := guessUntilBanned(t, g, "127.0.0.62", 4, func(i int) []string {
		return []string{"!", "X-Y", "USER " + testUser, "NOOP", fmt.Sprintf("PASS guess-%d", i), "NOOP", "QUIT"}
	})
	if n := d.FailedLogins(t); n > budget {
		t.Fatalf("pure-ftpd got %d wrong passwords; want ≤ %d\nsessions: %q", n, budget, sessions)
	}
	if got := sessions[0]; len(got) < 2 || got[0][:4] != "500 " || got[1][:4] != "500 " {
		t.Fatalf("first session read %q; want 500 to \"!\" and \"X-Y\" from ftpguard", got)
	}
	t.Logf("pure-ftpd got %d wrong passwords, then 127.0.0.62 was refused; the first session read %q", d.FailedLogins(t), sessions[0])
}

// TestPairingAcct: pure-ftpd answers ACCT before any login with "202 Please
// tell me who you are"; taken for a login, it refilled the budget with
// success_resets = true after every wrong password. ftpguard forwards ACCT
// only after a 332.
func TestPairingAcct(t *testing.T) {
	const budget = 2
	d := startPureftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})
	conf, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	conf = bytes.Replace(conf, []byte("[limits]\n"), []byte("[limits]\nsuccess_resets = true\n"), 1)
	if err := os.WriteFile(g.Config, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reloaded", func() bool { return g.Count(t, "reloaded") == 1 })
	sessions := guessUntilBanned(t, g, "127.0.0.63", 4, func(i int) []string {
		return []string{"USER " + testUser, fmt.Sprintf("PASS guess-%d", i), "ACCT x", "QUIT"}
	})
	if n := d.FailedLogins(t); n > budget {
		t.Fatalf("pure-ftpd got %d wrong passwords; want ≤ %d\nsessions: %q", n, budget, sessions)
	}
	if n := g.Count(t, "login ok"); n != 0 {
		t.Fatalf("%d \"login ok\" without a password that worked\nsessions: %q", n, sessions)
	}
	if got := sessions[0]; len(got) < 3 || got[2][:4] != "503 " {
		t.Fatalf("first session read %q; want 503 to ACCT from ftpguard", got)
	}
	t.Logf("pure-ftpd got %d wrong passwords, then 127.0.0.63 was refused; the first session read %q", d.FailedLogins(t), sessions[0])
}
