//go:build integration

package integration

import (
	"strings"
	"testing"
)

// TestWidenedBan: three /64 keys of one /48 (IPv6 clients named by a
// trusted balancer's PROXY header) spend their budgets; the ban widens to
// the /48, so a fourth address of it is refused at the gate (the daemon
// sees none of its guesses); bans list shows the widened ban and what led
// to it; bans del lifts it. An address of the neighbouring /48 and the
// balancer itself are never banned.
func TestWidenedBan(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 1,
		Extra: "[proxy_protocol]\ntrusted = [\"127.0.0.30/32\"]\n"})
	guess := func(client string) (int, int) {
		r := dialViaBalancer(t, "127.0.0.30", g.Addr, client)
		first, _ := r.reply()
		if first != 220 {
			return first, 0
		}
		r.send("USER "+testUser, "PASS wrong")
		r.expect(331)
		code, _ := r.reply()
		r.c.Close()
		return first, code
	}
	for _, c := range []string{"[2001:db8:1:1::7]:4000", "[2001:db8:1:2::7]:4000", "[2001:db8:1:3::7]:4000"} {
		if first, code := guess(c); first != 220 || code != 530 {
			t.Fatalf("%s: %d then %d, want 220 then 530", c, first, code)
		}
	}
	waitFor(t, "the widened ban", func() bool { return g.Count(t, "ban", "key", "2001:db8:1::/48") == 1 })
	before := d.FailedLogins(t)
	if first, _ := guess("[2001:db8:1:4::7]:4000"); first != 421 {
		t.Fatalf("a fresh address of the widened /48: %d, want 421 at the gate", first)
	}
	if n := d.FailedLogins(t); n != before || n != 3 {
		t.Fatalf("vsftpd saw %d failed logins (before %d), want 3: none from the widened /48's fourth address", n, before)
	}
	_, out, _ := ftpguardCLI(t, "bans", "list", "-config", g.Config, "-admin", g.AdminAddr)
	if !strings.Contains(out, "2001:db8:1::/48") || !strings.Contains(out, "widened: 3 keys banned in 2001:db8:1::/48") {
		t.Fatalf("bans list does not show the widened ban and its cause:\n%s", out)
	}
	// Legitimate users first: the next /48 and the balancer are untouched.
	r := dialViaBalancer(t, "127.0.0.30", g.Addr, "[2001:db8:2::7]:4000")
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	if code, out, errs := ftpguardCLI(t, "bans", "del", "-config", g.Config, "-admin", g.AdminAddr, "2001:db8:1::/48"); code != 0 {
		t.Fatalf("bans del: %d %q %q", code, out, errs)
	}
	r = dialViaBalancer(t, "127.0.0.30", g.Addr, "[2001:db8:1:4::7]:4000")
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
}

// TestWidenedBanFleet: two instances sharing Redis; three /64 keys of one
// /48 spend their budgets, alternately through a and b. Each instance made
// at most two of the bans, yet the /48 is banned — once, for the fleet —
// and a fourth address of it is refused at the gate of both instances:
// the daemon sees none of its guesses.
func TestWidenedBanFleet(t *testing.T) {
	d := startVsftpd(t)
	url, _ := startRedis(t)
	extra := "[proxy_protocol]\ntrusted = [\"127.0.0.31/32\"]\n\n[store]\nkind = \"redis\"\nurl = \"" + url + "\"\n"
	fleet := []*guard{startGuard(t, d.Addr, guardOpts{Failures: 1, Extra: extra}),
		startGuard(t, d.Addr, guardOpts{Failures: 1, Extra: extra})}
	for i, c := range []string{"[2001:db8:5:1::7]:4000", "[2001:db8:5:2::7]:4000", "[2001:db8:5:3::7]:4000"} {
		g := fleet[i%2]
		r := dialViaBalancer(t, "127.0.0.31", g.Addr, c)
		r.expect(220)
		r.send("USER "+testUser, "PASS wrong")
		r.expect(331)
		r.expect(530)
		r.c.Close()
		// The next instance must have learned this ban before the next
		// guess, as it would in a fleet where guesses are seconds apart.
		next := fleet[(i+1)%2]
		key := strings.TrimSuffix(strings.TrimPrefix(c, "["), "7]:4000") + "/64"
		waitFor(t, "the ban of "+key+" learned by the other instance", func() bool {
			return next.Count(t, "ban", "key", key) >= 1
		})
	}
	waitFor(t, "the widened ban on both instances", func() bool {
		return fleet[0].Count(t, "ban", "key", "2001:db8:5::/48") >= 1 && fleet[1].Count(t, "ban", "key", "2001:db8:5::/48") >= 1
	})
	made := fleet[0].Count(t, "ban", "key", "2001:db8:5::/48", "origin", "widened") +
		fleet[1].Count(t, "ban", "key", "2001:db8:5::/48", "origin", "widened")
	if made != 1 {
		t.Fatalf("the /48 was widened %d times by the fleet; want once", made)
	}
	before := d.FailedLogins(t)
	for _, g := range fleet {
		r := dialViaBalancer(t, "127.0.0.31", g.Addr, "[2001:db8:5:4::7]:4000")
		if code, _ := r.reply(); code != 421 {
			t.Fatalf("a fresh address of the widened /48 through %s: %d, want 421 at the gate", g.Addr, code)
		}
		r.c.Close()
	}
	if n := d.FailedLogins(t); n != before || n != 3 {
		t.Fatalf("vsftpd saw %d failed logins (before %d), want 3", n, before)
	}
	t.Logf("3 keys of 2001:db8:5::/48 banned over two instances: the /48 widened once, refused at both gates; vsftpd saw %d failed logins", d.FailedLogins(t))
}
