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
