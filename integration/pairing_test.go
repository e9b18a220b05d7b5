//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"strings"
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

// guessCodes opens one session from src, sends lines and returns the code of
// every reply until the connection ends.
func guessCodes(t *testing.T, g *guard, src string, lines ...string) []int {
	t.Helper()
	r := dialRaw(t, src, g.Addr)
	r.expect(220)
	r.send(append(lines, "QUIT")...)
	defer r.c.Close()
	return r.codes()
}

// TestPairingRefusedUser: proftpd keeps the username of an
// earlier USER when a later USER is refused ("500 USER: command requires a
// parameter", "501 Login incorrect." for a name over ~256 bytes), and the
// PASS that follows is checked against the earlier name. ftpguard takes
// the PASS for the later name (session.user is set when USER is
// forwarded, whatever the daemon answered), so the guesses for the real
// account were charged to junk names, each with a fresh budget, and the
// account's budget never filled. Now a name is the session's only once the
// daemon accepts it, and a PASS after a refused USER is answered 503.
func TestPairingRefusedUser(t *testing.T) {
	const userBudget = 2
	d := startProftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 10, Extra: fmt.Sprintf("[user_limits]\nfailures = %d\n", userBudget)})

	// Honest guesses spend the account's budget...
	for i, src := range []string{"127.0.0.121", "127.0.0.122"} {
		guessCodes(t, g, src, "USER "+testUser, fmt.Sprintf("PASS honest-%d", i))
	}
	// ...and the next one is answered by ftpguard, not forwarded.
	if got := guessCodes(t, g, "127.0.0.123", "USER "+testUser, "PASS honest-3"); len(got) < 2 || got[1] != 530 {
		t.Fatalf("third honest guess: replies %v; want 331 530", got)
	}
	wrongFor := func(user string) int {
		b, err := os.ReadFile(d.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "USER "+user+" (Login failed): Incorrect password")
	}
	before := wrongFor(testUser)
	if before != userBudget {
		t.Fatalf("proftpd saw %d failed logins after the honest guesses; want %d", before, userBudget)
	}

	// The same guesses, each behind a refused USER with a junk name.
	var replies [][]int
	for i, src := range []string{"127.0.0.123", "127.0.0.123", "127.0.0.124", "127.0.0.124"} {
		junk := fmt.Sprintf("junk%d-%s", i, strings.Repeat("x", 300))
		replies = append(replies, guessCodes(t, g, src, "USER "+testUser, "USER "+junk, fmt.Sprintf("PASS stale-%d", i)))
	}
	if n := wrongFor(testUser); n > userBudget {
		t.Fatalf("proftpd saw %d wrong passwords for %s; want ≤ %d (its [user_limits] budget)\nreplies (USER, USER junk, PASS, QUIT): %v",
			n, testUser, userBudget, replies)
	}
}

// TestPairingNoSecondLogin: after a login, vsftpd answers
// every PASS "230 Already logged in." (and USER for another name "530
// Can't change to another user."). ftpguard took that 230 for a login of
// the last USER it forwarded: an attacker who owns one account marked its
// address known-good for any other account with a wrong password, and
// from then on guessed that account's password past its per-username
// budget. Now USER and PASS after a login are answered by ftpguard.
func TestPairingNoSecondLogin(t *testing.T) {
	const userBudget = 2
	const victim = "root"
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 10, Extra: fmt.Sprintf("[user_limits]\nfailures = %d\n", userBudget)})

	// The attacker logs in to its own account, then "logs in" as the
	// victim with a wrong password.
	mark := guessCodes(t, g, "127.0.0.131", "USER "+testUser, "PASS "+testPass, "USER "+victim, "PASS not-the-password")
	t.Logf("marking session replies: %v", mark)

	// Others spend the victim's budget...
	for i, src := range []string{"127.0.0.132", "127.0.0.133"} {
		guessCodes(t, g, src, "USER "+victim, fmt.Sprintf("PASS other-%d", i))
	}
	// ...so a further guess from an unmarked address is answered by
	// ftpguard.
	if got := guessCodes(t, g, "127.0.0.134", "USER "+victim, "PASS other-3"); len(got) < 2 || got[1] != 530 {
		t.Fatalf("guess from an unmarked address: replies %v; want 331 530", got)
	}
	if n := d.FailedLogins(t); n != userBudget {
		t.Fatalf("vsftpd saw %d failed logins after the budget was spent; want %d", n, userBudget)
	}

	// From the marked address the guesses still reach vsftpd.
	for i := 0; i < 3; i++ {
		guessCodes(t, g, "127.0.0.131", "USER "+victim, fmt.Sprintf("PASS marked-%d", i))
	}
	if n := d.FailedLogins(t); n > userBudget {
		t.Fatalf("vsftpd saw %d wrong passwords for %s; want ≤ %d (its [user_limits] budget); the marking session read %v",
			n, victim, userBudget, mark)
	}
}

// TestPairingSiteBeforeLogin: proftpd answers SITE CHMOD before login with
// two replies, which would put every later reply one command early.
// Before login ftpguard forwards only what logging in needs.
func TestPairingSiteBeforeLogin(t *testing.T) {
	d := startProftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 5})
	got := guessCodes(t, g, "127.0.0.65", "SITE CHMOD 777 x", "USER "+testUser, "PASS wrong", "NOOP")
	if fmt.Sprint(got) != "[530 331 530 200 221]" {
		t.Fatalf("replies %v; want [530 331 530 200 221] (SITE answered by ftpguard)", got)
	}
	if n := g.Count(t, "login failed"); n != 1 {
		t.Fatalf("%d failures counted; want 1", n)
	}
}
