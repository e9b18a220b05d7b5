//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
)

// TestOwnerNotPunishedForAttack: issue 12, against a real vsftpd. An
// attacker from 127.0.0.221–224 spends the username budget of fgtest
// ([user_limits] failures = 2) with guesses under several spellings: only
// two reach vsftpd (fgtest, FGTEST, FgTest… are one account, one budget).
// The owner, from a fresh address 127.0.0.230 with the right password, is
// told the truth (not "Login incorrect"), retries ten times, is never
// refused with 421 nor banned; `ftpguard users list` shows fgtest
// throttled; after `ftpguard users reset FGTEST` the list is empty and the
// owner logs in from the same address.
//
// Before: every spelling had a budget of its own (all guesses reached
// vsftpd), and the owner's retries were "530 Login incorrect." that cost
// its address a token each, so a few retries banned it.
func TestOwnerNotPunishedForAttack(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 3, Extra: "[user_limits]\nfailures = 2\n"})

	spellings := []string{"fgtest", "FGTEST", "FgTest", "fGtEsT"}
	paused := 0
	for i, name := range spellings {
		r := dialRaw(t, fmt.Sprintf("127.0.0.%d", 221+i), g.Addr)
		r.expect(220)
		r.send("USER "+name, "PASS attacker-"+name)
		r.expect(331)
		code, text := r.reply()
		if code != 530 {
			t.Fatalf("guess as %s: %d %q; want 530", name, code, text)
		}
		if strings.Contains(text, "paused") {
			paused++
		}
		r.c.Close()
	}
	if n := d.FailedLogins(t); n != 2 {
		t.Fatalf("vsftpd saw %d failed logins for %d spellings of fgtest; want 2 (one account, one budget)", n, len(spellings))
	}
	if paused != len(spellings)-2 {
		t.Fatalf("%d guesses answered as paused; want %d", paused, len(spellings)-2)
	}

	const owner = "127.0.0.230"
	for i := range 10 {
		r := dialRaw(t, owner, g.Addr)
		if code, text := r.reply(); code != 220 {
			t.Fatalf("owner's connection %d: %d %q; want 220 (never refused)", i, code, text)
		}
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
		code, text := r.reply()
		if code != 530 || strings.Contains(text, "incorrect") ||
			!strings.Contains(text, `Logins to "fgtest" from new addresses are paused`) || !strings.Contains(text, "retry in") {
			t.Fatalf("owner's retry %d: %d %q; want the truthful 530", i, code, text)
		}
		r.send("QUIT")
		r.expect(221)
		r.c.Close()
	}
	if n := g.Count(t, "ban"); n != 0 {
		t.Fatalf("%d bans after the owner's retries; want none", n)
	}
	if code, body := g.admin(t, "GET", "/bans", adminToken, ""); code != 200 || strings.Contains(body, owner) {
		t.Fatalf("GET /bans: %d %s", code, body)
	}

	code, out, errs := ftpguardCLI(t, "users", "list", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 0 || !strings.Contains(out, "fgtest") || !strings.Contains(out, "0/2") {
		t.Fatalf("users list: %d\n%s%s", code, out, errs)
	}
	if code, body := g.admin(t, "GET", "/users", adminToken, ""); code != 200 || !strings.Contains(body, `"name": "fgtest"`) {
		t.Fatalf("GET /users: %d %s", code, body)
	}
	if code, _ := g.admin(t, "GET", "/users", "", ""); code != 401 {
		t.Fatalf("GET /users without the token: %d", code)
	}
	code, out, errs = ftpguardCLI(t, "users", "reset", "-config", g.Config, "-admin", g.AdminAddr, "FGTEST")
	if code != 0 || !strings.Contains(out, `reset "fgtest"`) {
		t.Fatalf("users reset FGTEST: %d\n%s%s", code, out, errs)
	}
	code, out, errs = ftpguardCLI(t, "users", "list", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 0 || strings.Contains(out, "fgtest") || !strings.Contains(out, "no usernames throttled") {
		t.Fatalf("users list after reset: %d\n%s%s", code, out, errs)
	}

	c, err := ftpClient(t, owner, g.Addr)
	if err != nil {
		t.Fatalf("owner's connection after reset: %v", err)
	}
	defer c.Quit()
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatalf("owner's login after reset: %v", err)
	}
	if n := g.Count(t, "reject", "reason", "username throttled"); n != 10+len(spellings)-2 {
		t.Errorf("%d refusals with reason \"username throttled\"; want %d", n, 10+len(spellings)-2)
	}
	t.Logf("%d spellings: 2 reached vsftpd; owner refused truthfully 10 times, never banned, in after reset", len(spellings))
}
