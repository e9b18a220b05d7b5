//go:build integration

package integration

import (
	"fmt"
	"sync"
	"testing"
)

// TestDistributedGuessing: 50 addresses (127.0.1.1–127.0.1.50), each under
// its per-address budget, guess one account. The guesses that reach the
// daemon stay within the account's budget, while the owner, logging in
// from its known address, keeps getting in throughout.
func TestDistributedGuessing(t *testing.T) {
	const userBudget = 10
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 5, Extra: fmt.Sprintf("[user_limits]\nfailures = %d\n", userBudget)})
	owner := func() {
		t.Helper()
		c, err := ftpClient(t, "127.0.0.80", g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Quit()
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatalf("owner's login during the attack: %v", err)
		}
	}
	owner() // the owner's address becomes known-good
	guesses, refusedLocally := 0, 0
	for round := 0; round < 2; round++ {
		for i := 1; i <= 50; i++ {
			r := dialRaw(t, fmt.Sprintf("127.0.1.%d", i), g.Addr)
			r.expect(220)
			r.send("USER "+testUser, fmt.Sprintf("PASS botnet-%d-%d", round, i))
			r.expect(331)
			if code, _ := r.reply(); code != 530 {
				t.Fatalf("guess from 127.0.1.%d: %d; want 530", i, code)
			}
			r.c.Close()
			guesses++
			if i%10 == 0 {
				owner()
			}
		}
	}
	waitFor(t, "every refusal logged", func() bool {
		refusedLocally = g.Count(t, "reject", "reason", "username throttled")
		return refusedLocally+d.FailedLogins(t) >= guesses
	})
	if n := d.FailedLogins(t); n > userBudget {
		t.Fatalf("the daemon saw %d failed logins from 50 addresses; want ≤ %d (the account's budget)", n, userBudget)
	}
	if g.Count(t, "ban") != 0 {
		t.Fatal("an address under its own budget was banned")
	}
	t.Logf("%d guesses from 50 addresses: %d reached vsftpd (user budget %d), %d answered 530 by ftpguard; owner logged in %d times",
		guesses, d.FailedLogins(t), userBudget, refusedLocally, 11)
}

// TestDistributedGuessingFleet: the same botnet spread over two ftpguard
// instances that share Redis. The account's budget holds for the fleet,
// not once per instance.
func TestDistributedGuessingFleet(t *testing.T) {
	const userBudget = 6
	d := startVsftpd(t)
	url, _ := startRedis(t)
	extra := fmt.Sprintf("[store]\nkind = \"redis\"\nurl = %q\n\n[user_limits]\nfailures = %d\n", url, userBudget)
	fleet := []*guard{
		startGuard(t, d.Addr, guardOpts{Failures: 5, Extra: extra}),
		startGuard(t, d.Addr, guardOpts{Failures: 5, Extra: extra}),
	}
	const guesses = 30
	for i := 1; i <= guesses; i++ {
		r := dialRaw(t, fmt.Sprintf("127.0.4.%d", i), fleet[i%2].Addr)
		r.expect(220)
		r.send("USER "+testUser, fmt.Sprintf("PASS fleet-%d", i))
		r.expect(331)
		if code, _ := r.reply(); code != 530 {
			t.Fatalf("guess from 127.0.4.%d: %d; want 530", i, code)
		}
		r.c.Close()
	}
	refused := func() int {
		return fleet[0].Count(t, "reject", "reason", "username throttled") + fleet[1].Count(t, "reject", "reason", "username throttled")
	}
	waitFor(t, "every refusal logged", func() bool { return refused()+d.FailedLogins(t) >= guesses })
	if n := d.FailedLogins(t); n > userBudget {
		t.Fatalf("the daemon saw %d failed logins through two instances; want ≤ %d (the account's budget, shared)", n, userBudget)
	}
	t.Logf("%d guesses over two instances: %d reached vsftpd (shared user budget %d), %d answered 530 by ftpguard (%d by a, %d by b)",
		guesses, d.FailedLogins(t), userBudget, refused(),
		fleet[0].Count(t, "reject", "reason", "username throttled"), fleet[1].Count(t, "reject", "reason", "username throttled"))
}

// TestDistributedGuessingBurst: guesses for one account sent at the same
// moment from 8 addresses. The username's budget was only checked before a
// PASS went out and charged when the 530 came back, so while pure-ftpd
// took its seconds over the first, all 8 reached it (found by an
// adversarial review). Now each guess in flight holds a place in the
// budget (Users.Attempt): at most the budget reaches the daemon.
func TestDistributedGuessingBurst(t *testing.T) {
	const userBudget = 2
	const attackers = 8
	d := startPureftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 10, Extra: fmt.Sprintf("[user_limits]\nfailures = %d\n", userBudget)})

	var conns []*raw
	for i := 0; i < attackers; i++ {
		r := dialRaw(t, fmt.Sprintf("127.0.0.%d", 141+i), g.Addr)
		r.expect(220)
		r.send("USER " + testUser)
		r.expect(331)
		conns = append(conns, r)
	}
	var wg sync.WaitGroup
	codes := make([]int, attackers)
	for i, r := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.c.Write([]byte(fmt.Sprintf("PASS burst-%d\r\n", i)))
			codes[i], _ = r.reply()
		}()
	}
	wg.Wait()
	if n := d.FailedLogins(t); n > userBudget {
		t.Fatalf("pure-ftpd got %d wrong passwords for %s from %d addresses at once; want ≤ %d (its [user_limits] budget); replies to PASS: %v",
			n, testUser, attackers, userBudget, codes)
	}
	t.Logf("%d guesses at once from %d addresses: %d reached pure-ftpd (user budget %d); replies %v",
		attackers, attackers, d.FailedLogins(t), userBudget, codes)
}
