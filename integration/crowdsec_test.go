//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/crowdsec"
	"github.com/ftpguard/ftpguard/internal/lapitest"
)

// crowdsecGuard starts a real LAPI (internal/lapitest; in CI a missing
// CrowdSec fails) and ftpguard (admin on, budget failures) joined to it
// both ways, polling every second.
func crowdsecGuard(t *testing.T, backend string, failures int, extra string) (*lapitest.LAPI, *guard) {
	t.Helper()
	l := lapitest.Start(t)
	dir := t.TempDir()
	key, pw := filepath.Join(dir, "bouncer.key"), filepath.Join(dir, "watcher.pw")
	if err := os.WriteFile(key, []byte(l.Key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pw, []byte(l.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := adminGuard(t, backend, guardOpts{Failures: failures, Extra: extra + fmt.Sprintf(`
[crowdsec]
lapi_url = %q
bouncer_key_file = %q
poll_interval = "1s"
machine_id = "ftpguard"
password_file = %q
`, l.URL, key, pw)})
	waitFor(t, "a first poll of the LAPI", func() bool {
		return g.metric(t, `ftpguard_crowdsec_polls_total{result="ok"}`) >= 1
	})
	return l, g
}

// greeting dials addr from src and returns the first reply's code (0: the
// connection ended without one).
func greeting(t *testing.T, src, addr string) int {
	t.Helper()
	r := dialRaw(t, src, addr)
	defer r.c.Close()
	code, _ := r.reply()
	return code
}

// waitGreeting polls greeting until it is want and returns how long that
// took (bounded: 15 s, several poll intervals on a loaded machine).
func waitGreeting(t *testing.T, src, addr string, want int) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if greeting(t, src, addr) == want {
			return time.Since(start)
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("%s: greeting not %d within 15s", src, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCrowdSec: ftpguard joined to a real CrowdSec LAPI both ways, with
// the real binary in front of vsftpd.
//   - cscli decisions add --ip → 421 at connect (the daemon never dialed)
//     within a poll interval; a range, and an IPv6 address named by a
//     trusted PROXY header, likewise; other addresses are served
//     (legitimate users first); bans list shows SOURCE crowdsec; bans del
//     names cscli; cscli decisions delete → served again.
//   - a brute force ftpguard bans → the LAPI lists the ban with its
//     duration (scenario ftpguard/ftp-bf).
//   - the LAPI stopped: ftpguard keeps serving, keeps the decisions it
//     has, and counts the failed polls.
func TestCrowdSec(t *testing.T) {
	const budget = 3
	d := startVsftpd(t)
	l, g := crowdsecGuard(t, d.Addr, budget, "[proxy_protocol]\ntrusted = [\"127.0.0.30/32\"]\n")
	const victim, attacker, bystander = "127.0.0.91", "127.0.0.92", "127.0.0.93"

	login := func(src string) {
		t.Helper()
		c, err := ftpClient(t, src, g.Addr)
		if err != nil {
			t.Fatalf("%s: dial: %v", src, err)
		}
		defer c.Quit()
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatalf("%s: login: %v", src, err)
		}
	}
	login(victim)

	t.Run("bouncer", func(t *testing.T) {
		added := time.Now()
		l.Cscli(t, "decisions", "add", "--ip", victim, "--duration", "10m", "--reason", "integration")
		lat := waitGreeting(t, victim, g.Addr, 421)
		t.Logf("cscli decisions add --ip %s → 421 at connect after %v (poll_interval 1s; cscli itself took %v of it)",
			victim, lat.Round(time.Millisecond), time.Since(added)-lat)
		login(bystander) // another address is served

		l.Cscli(t, "decisions", "add", "--range", "127.0.1.0/24", "--duration", "10m")
		l.Cscli(t, "decisions", "add", "--ip", "2001:db8::91", "--duration", "10m")
		waitGreeting(t, "127.0.1.5", g.Addr, 421)
		if code := greeting(t, "127.0.2.5", g.Addr); code != 220 {
			t.Errorf("127.0.2.5 outside the range: %d, want 220", code)
		}
		start := time.Now()
		for {
			r := dialViaBalancer(t, "127.0.0.30", g.Addr, "[2001:db8::91]:40000")
			code, text := r.reply()
			r.c.Close() // or max_conns_per_ip would refuse it after 10 tries
			if code == 421 && strings.Contains(text, "banned") {
				break
			}
			if time.Since(start) > 15*time.Second {
				t.Fatalf("IPv6 2001:db8::91 through the balancer: %d, want 421", code)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if code, _ := dialViaBalancer(t, "127.0.0.30", g.Addr, "[2001:db8::92]:40000").reply(); code != 220 {
			t.Errorf("IPv6 2001:db8::92: %d, want 220", code)
		}
		if n := g.Count(t, "reject", "reason", "banned", "peer", victim); n == 0 {
			t.Error("no \"banned\" reject logged for the CrowdSec decision")
		}

		// The admin API and the CLI show the source; bans del points to cscli.
		code, body := g.admin(t, "GET", "/bans", adminToken, "")
		var bans []struct{ Key, Source, Reason string }
		if err := json.Unmarshal([]byte(body), &bans); code != 200 || err != nil {
			t.Fatalf("GET /bans: %d %v %s", code, err, body)
		}
		found := map[string]string{}
		for _, b := range bans {
			found[b.Key] = b.Source
		}
		for _, k := range []string{victim + "/32", "127.0.1.0/24", "2001:db8::91/128"} {
			if found[k] != crowdsec.Source {
				t.Errorf("GET /bans: %s has source %q, want crowdsec (%s)", k, found[k], body)
			}
		}
		tf := filepath.Join(t.TempDir(), "tok")
		os.WriteFile(tf, []byte(adminToken), 0o600)
		rc, out, errOut := ftpguardCLI(t, "bans", "list", "-admin", g.AdminAddr, "-token-file", tf)
		if rc != 0 || !strings.Contains(out, "SOURCE") || !strings.Contains(out, victim+"/32     crowdsec") {
			t.Errorf("bans list: %d\n%s%s", rc, out, errOut)
		}
		t.Logf("ftpguard bans list:\n%s", out)
		rc, out, errOut = ftpguardCLI(t, "bans", "del", victim, "-admin", g.AdminAddr, "-token-file", tf)
		if rc == 0 || !strings.Contains(out+errOut, "cscli decisions delete --ip "+victim) {
			t.Errorf("bans del of a CrowdSec decision: %d %s%s; want a failure naming cscli", rc, out, errOut)
		}
		t.Logf("ftpguard bans del %s: exit %d: %s", victim, rc, strings.TrimSpace(out+errOut))

		deleted := time.Now()
		l.Cscli(t, "decisions", "delete", "--ip", victim)
		lat = waitGreeting(t, victim, g.Addr, 220)
		t.Logf("cscli decisions delete --ip %s → served again after %v (after cscli returned: %v)", victim,
			time.Since(deleted).Round(time.Millisecond), lat.Round(time.Millisecond))
		login(victim)
		if v := g.metric(t, "ftpguard_crowdsec_decisions"); v < 2 {
			t.Errorf("ftpguard_crowdsec_decisions = %v, want ≥ 2 (the range, the IPv6 address)", v)
		}
	})

	t.Run("watcher", func(t *testing.T) {
		bruteForce(t, g.Addr, attacker, 1, budget+1)
		waitFor(t, "ftpguard's ban of the attacker", func() bool { return g.Count(t, "ban", "key", attacker+"/32") >= 1 })
		banned := time.Now()
		if vf := d.FailedLogins(t); vf > budget {
			t.Errorf("vsftpd saw %d failed logins, budget %d", vf, budget)
		}
		type listed struct {
			Decisions []struct{ Duration, Origin, Scenario, Scope, Type, Value string }
		}
		var dur string
		var scenario string
		for dur == "" {
			var alerts []listed
			if err := json.Unmarshal([]byte(l.Cscli(t, "decisions", "list", "-o", "json")), &alerts); err != nil {
				t.Fatalf("cscli decisions list -o json: %v", err)
			}
			for _, a := range alerts {
				for _, x := range a.Decisions {
					if x.Value == attacker && x.Type == "ban" {
						dur, scenario = x.Duration, x.Scenario
					}
				}
			}
			if time.Since(banned) > 15*time.Second {
				t.Fatal("ftpguard's ban is not in cscli decisions list within 15s")
			}
			if dur == "" {
				time.Sleep(50 * time.Millisecond)
			}
		}
		t.Logf("ftpguard ban of %s → in cscli decisions list after %v: duration %s, scenario %s", attacker,
			time.Since(banned).Round(time.Millisecond), dur, scenario)
		left, err := crowdsec.ParseDuration(dur)
		if err != nil || left > time.Hour || left < time.Hour-time.Minute {
			t.Errorf("LAPI ban duration %q, want ≈ 1h (ban_time)", dur)
		}
		if scenario != crowdsec.Scenario {
			t.Errorf("scenario %q, want %q", scenario, crowdsec.Scenario)
		}
		if v := g.metric(t, `ftpguard_crowdsec_watcher_bans_total{result="pushed"}`); v != 1 {
			t.Errorf("watcher pushed = %v, want 1 (one ban)", v)
		}

		// The pushed ban comes back as a decision (origin crowdsec): lifting
		// ftpguard's own ban warns that CrowdSec still holds one, and the
		// address is served once it is deleted there too.
		waitFor(t, "the pushed ban back from the LAPI", func() bool {
			_, body := g.admin(t, "GET", "/bans", adminToken, "")
			var bans []struct{ Key, Source string }
			json.Unmarshal([]byte(body), &bans)
			for _, b := range bans {
				if b.Key == attacker+"/32" && b.Source == crowdsec.Source {
					return true
				}
			}
			return false
		})
		tf := filepath.Join(t.TempDir(), "tok")
		os.WriteFile(tf, []byte(adminToken), 0o600)
		rc, out, errOut := ftpguardCLI(t, "bans", "del", attacker, "-admin", g.AdminAddr, "-token-file", tf)
		if rc != 0 || !strings.Contains(out, "unbanned") || !strings.Contains(errOut, "cscli decisions delete --ip "+attacker) {
			t.Errorf("bans del of ftpguard's ban also held by CrowdSec: %d %s%s; want unbanned and a warning naming cscli", rc, out, errOut)
		}
		if code := greeting(t, attacker, g.Addr); code != 421 {
			t.Errorf("with the CrowdSec decision still in force: greeting %d, want 421", code)
		}
		l.Cscli(t, "decisions", "delete", "--ip", attacker)
		waitGreeting(t, attacker, g.Addr, 220)
	})

	t.Run("outage", func(t *testing.T) {
		l.Stop(t)
		failed := g.metric(t, `ftpguard_crowdsec_polls_total{result="failed"}`)
		waitFor(t, "a failed poll counted", func() bool {
			return g.metric(t, `ftpguard_crowdsec_polls_total{result="failed"}`) > failed
		})
		if v := g.metric(t, "ftpguard_crowdsec_lapi_up"); v != 0 {
			t.Errorf("ftpguard_crowdsec_lapi_up = %v with the LAPI down", v)
		}
		waitFor(t, "the outage logged", func() bool {
			return g.Count(t, "crowdsec: decision stream poll failed; keeping the decisions held") >= 1
		})
		if code := greeting(t, "127.0.1.5", g.Addr); code != 421 {
			t.Errorf("LAPI down: the range's decision is no longer enforced (%d)", code)
		}
		login(bystander)
		t.Logf("LAPI down: decisions held %v, last success %v s ago", g.metric(t, "ftpguard_crowdsec_decisions"),
			float64(time.Now().Unix())-g.metric(t, "ftpguard_crowdsec_last_poll_success_timestamp_seconds"))
	})
}
