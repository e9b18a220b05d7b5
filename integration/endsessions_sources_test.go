//go:build integration

package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/geotest"
)

// endMode sets [limits] end_sessions_on_ban to mode in g's config (the
// harness writes none: the default "pre-login") and reloads g by SIGHUP,
// its n-th reload.
func (g *guard) endMode(t *testing.T, mode string, n int) {
	t.Helper()
	b, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("end_sessions_on_ban = %q", mode)
	if m := regexp.MustCompile(`end_sessions_on_ban = "[a-z-]+"`).Find(b); m != nil {
		g.rewrite(t, string(m), line)
	} else {
		g.rewrite(t, `failure_delay = "0s"`, `failure_delay = "0s"`+"\n"+line)
	}
	g.sighup(t, n)
}

// rawLogin logs in from src through g with a raw connection.
func rawLogin(t *testing.T, src, addr string) *raw {
	t.Helper()
	r := dialRaw(t, src, addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	return r
}

// rawUser connects from src and sends USER: a session awaiting its PASS.
func rawUser(t *testing.T, src, addr string) *raw {
	t.Helper()
	r := dialRaw(t, src, addr)
	r.expect(220)
	r.send("USER " + testUser)
	r.expect(331)
	return r
}

// TestBanEndsSessionsCrowdSec: a CrowdSec decision (cscli decisions add,
// a real LAPI) is a ban like ftpguard's own for the sessions already open.
//   - end_sessions_on_ban = "off": a decision that comes between USER and
//     PASS stops the PASS — 421 "banned (crowdsec)", never forwarded.
//   - "all": the decided address's session awaiting its PASS and its
//     logged-in session both get 421 "banned (crowdsec)" at the bouncer's
//     next poll; another address's session, and an allowlisted one inside a
//     decided range, go on.
//
// vsftpd sees no failed login in either.
func TestBanEndsSessionsCrowdSec(t *testing.T) {
	d := startVsftpd(t)
	l, g := crowdsecGuard(t, d.Addr, 5, "")
	const decided, other, allowed = "127.0.10.4", "127.0.10.5", "127.0.10.9"
	reloads := 0
	reload := func(mode string) {
		reloads++
		g.endMode(t, mode, reloads)
	}

	t.Run("between USER and PASS", func(t *testing.T) {
		reload("off")
		r := rawUser(t, "127.0.10.2", g.Addr)
		l.Cscli(t, "decisions", "add", "--ip", "127.0.10.2", "--duration", "10m", "--reason", "integration")
		waitGreeting(t, "127.0.10.2", g.Addr, 421) // in force: the bouncer has polled
		r.send("PASS wrong-password")
		if code, text := r.reply(); code != 421 || !strings.Contains(text, "banned (crowdsec)") {
			t.Fatalf("PASS after the decision: %d %q, want 421 banned (crowdsec)", code, text)
		}
		if code, _ := r.reply(); code != 0 {
			t.Fatalf("after the 421: reply %d, want the end", code)
		}
		if n := d.FailedLogins(t); n != 0 {
			t.Fatalf("vsftpd saw %d failed logins, want 0", n)
		}
		t.Logf("decision between USER and PASS: PASS answered 421 by ftpguard; vsftpd saw %d failed logins", d.FailedLogins(t))
	})

	t.Run("ends sessions", func(t *testing.T) {
		g.rewrite(t, `failure_delay = "0s"`, `failure_delay = "0s"`+"\n"+fmt.Sprintf("allow = [%q]", allowed+"/32"))
		reload("all")
		pre := rawUser(t, decided, g.Addr)
		in := rawLogin(t, decided, g.Addr)
		in.send("PWD")
		in.expect(257)
		kept := rawLogin(t, other, g.Addr)
		listed := rawLogin(t, allowed, g.Addr)
		added := time.Now()
		l.Cscli(t, "decisions", "add", "--ip", decided, "--duration", "10m", "--reason", "integration")
		l.Cscli(t, "decisions", "add", "--range", "127.0.10.8/30", "--duration", "10m")
		for name, r := range map[string]*raw{"awaiting PASS": pre, "logged in": in} {
			if code, text := r.reply(); code != 421 || !strings.Contains(text, "banned (crowdsec)") {
				t.Fatalf("%s session of %s: %d %q, want 421 banned (crowdsec)", name, decided, code, text)
			}
		}
		t.Logf("cscli decisions add --ip %s → both its sessions got 421 after %v (poll_interval 1s)", decided,
			time.Since(added).Round(time.Millisecond))
		pre.send("PASS wrong-password") // too late: closed
		if code, _ := pre.reply(); code != 0 {
			t.Fatalf("session after its 421: reply %d, want the end", code)
		}
		// Legitimate users first: another address, and an allowlisted one
		// inside a decided range, are untouched.
		for name, r := range map[string]*raw{other: kept, allowed: listed} {
			r.send("NOOP")
			if code, text := r.reply(); code != 200 {
				t.Fatalf("%s after the decisions: %d %q, want 200", name, code, text)
			}
		}
		if code := greeting(t, decided, g.Addr); code != 421 {
			t.Fatalf("new connection of %s: %d, want 421", decided, code)
		}
		if n := g.Count(t, "reject", "reason", "banned", "ban", decided+"/32"); n != 2 {
			t.Errorf("%d sessions of %s ended, want 2", n, decided)
		}
		if n := d.FailedLogins(t); n != 0 {
			t.Fatalf("vsftpd saw %d failed logins, want 0", n)
		}
		t.Logf("vsftpd saw %d failed logins", d.FailedLogins(t))
	})
}

// TestBanEndsSessionsOnReload: a reload that adds a [geo] deny rule for
// the country of open sessions ends them as a new ban would. Under the
// default "pre-login" the session awaiting its PASS gets 421 at once (its
// PASS never reaches the daemon) and the logged-in one goes on. A later
// reload to "all" that denies another country ends that country's
// logged-in session, but not the one the first rule spared (its refusal
// did not come with this reload). Sessions of a country no rule names, and
// an allowlisted address in a denied one, go on.
func TestBanEndsSessionsOnReload(t *testing.T) {
	country := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geotest.Country(country, map[string]string{"127.0.11.0/24": "XD", "127.0.12.0/24": "XE",
		"127.0.13.0/24": "XF"}); err != nil {
		t.Fatal(err)
	}
	d := startVsftpd(t)
	db := fmt.Sprintf("country_database = %q\n", country)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 5, Extra: "\n[geo]\n" + db})
	pre := rawUser(t, "127.0.11.7", g.Addr)
	spared := rawLogin(t, "127.0.11.8", g.Addr)
	listed := rawLogin(t, "127.0.11.9", g.Addr)
	kept := rawLogin(t, "127.0.12.7", g.Addr)
	later := rawLogin(t, "127.0.13.7", g.Addr)
	deny := func(c string) string { return fmt.Sprintf("\n[[geo.rule]]\naction = \"deny\"\ncountries = [%q]\n", c) }
	noop := func(what string, rs map[string]*raw) {
		t.Helper()
		for name, r := range rs {
			r.send("NOOP")
			if code, text := r.reply(); code != 200 {
				t.Fatalf("%s: %s: NOOP %d %q, want 200", what, name, code, text)
			}
		}
	}

	g.rewrite(t, `failure_delay = "0s"`, `failure_delay = "0s"`+"\nallow = [\"127.0.11.9/32\"]", db, db+deny("XD"))
	g.sighup(t, 1)
	if code, text := pre.reply(); code != 421 || !strings.Contains(text, "from your network") {
		t.Fatalf("session awaiting PASS in a country denied by the reload: %d %q, want 421", code, text)
	}
	pre.send("PASS wrong-password")
	if code, _ := pre.reply(); code != 0 {
		t.Fatalf("after its 421: reply %d, want the end", code)
	}
	noop("after the reload denying XD", map[string]*raw{"logged in, XD (pre-login mode)": spared,
		"allowlisted, XD": listed, "XE": kept, "XF": later})

	g.rewrite(t, db, db+deny("XF"))
	g.endMode(t, "all", 2)
	if code, text := later.reply(); code != 421 || !strings.Contains(text, "from your network") {
		t.Fatalf("logged-in session of XF after the reload to all denying XF: %d %q, want 421", code, text)
	}
	noop("after the reload to all denying XF", map[string]*raw{"logged in, XD (refused before this reload)": spared,
		"allowlisted, XD": listed, "XE": kept})
	for _, src := range []string{"127.0.11.10", "127.0.13.10"} {
		if code := greeting(t, src, g.Addr); code != 421 {
			t.Fatalf("new connection from %s (denied): %d, want 421", src, code)
		}
	}
	if n := g.Count(t, "reject", "reason", "geo", "logged_in", "false"); n != 1 {
		t.Errorf("%d pre-login sessions ended by the reloads, want 1", n)
	}
	if n := g.Count(t, "reject", "reason", "geo", "logged_in", "true"); n != 1 {
		t.Errorf("%d logged-in sessions ended by the reloads, want 1", n)
	}
	if n := d.FailedLogins(t); n != 0 {
		t.Fatalf("vsftpd saw %d failed logins, want 0", n)
	}
	t.Logf("reloads adding deny rules: 1 pre-login session ended (pre-login mode), then 1 logged-in one (all); vsftpd saw %d failed logins", d.FailedLogins(t))
}

// TestBanEndsSessionsAllNow: under "all-now" a ban (ftpguard bans add)
// cuts a logged-in session in the middle of a download: the 421 comes
// next (not the transfer's 226), the download does not complete, and the
// proxy's goroutines go back to their count before the session (no leak).
// Both data paths: relayed, and carried by the kernel (data_path =
// "nftables"), where the ban resets the data connection both ways — before,
// the kernel carried the whole 64 MiB to the banned client.
func TestBanEndsSessionsAllNow(t *testing.T) {
	d := startVsftpd(t)
	for _, c := range []struct {
		path   string
		prefix string // the test's client addresses
	}{{"relay", "127.0.12."}, {"nftables", "127.0.13."}} {
		t.Run(c.path, func(t *testing.T) {
			o := guardOpts{Failures: 5}
			if c.path == "nftables" {
				o = kernelOpts(dataTable(t), o)
			}
			banEndsAllNow(t, d, adminGuard(t, d.Addr, o), c.prefix, c.path == "nftables")
		})
	}
}

// banEndsAllNow is TestBanEndsSessionsAllNow through g; the clients come
// from prefix + 2, 3 and 250.
func banEndsAllNow(t *testing.T, d *ftpd, g *guard, prefix string, kernel bool) {
	g.endMode(t, "all-now", 1)
	other := rawLogin(t, prefix+"3", g.Addr)
	// A first ban, of an address with no session, so that whatever a ban
	// starts once is running before the count is taken.
	if code, out, errs := ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, prefix+"250", "30m"); code != 0 {
		t.Fatalf("bans add: %d %q %q", code, out, errs)
	}
	before := g.metric(t, "go_goroutines")
	const size = 64 << 20 // far more than the socket buffers hold
	r, dc, _ := startDownload(t, g, prefix+"2", size)
	type reply struct {
		code int
		text string
		at   time.Time
	}
	next := make(chan reply, 1) // the reply after the 150, read as it comes
	go func() {
		code, text := r.reply()
		next <- reply{code, text, time.Now()}
	}()
	banned := time.Now()
	if code, out, errs := ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, prefix+"2", "30m"); code != 0 {
		t.Fatalf("bans add: %d %q %q", code, out, errs)
	}
	rep := <-next
	code, text, at := rep.code, rep.text, rep.at
	if code != 421 || !strings.Contains(text, "banned (admin)") {
		t.Fatalf("mid-download under all-now: %d %q, want 421 banned (admin) before any 226", code, text)
	}
	if code, _ := r.reply(); code != 0 {
		t.Fatalf("after the 421: reply %d, want the end", code)
	}
	dc.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.Copy(io.Discard, dc)
	if got >= size {
		t.Fatalf("the download completed (%d bytes) despite all-now", got)
	}
	if kernel {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the kernel-carried download ended with %v; want connection reset", err)
		}
		waitFor(t, "\"kernel transfer cut\" logged", func() bool { return g.Count(t, "kernel transfer cut") == 1 })
	}
	var made time.Time // when ftpguard made the ban: its log line
	for _, e := range g.Events(t) {
		if e["msg"] == "ban" && e["key"] == prefix+"2/32" {
			made, _ = time.Parse(time.RFC3339Nano, e["time"].(string))
		}
	}
	t.Logf("ban made → 421 on the control connection %v later (%v after bans add started); the client got %d of %d bytes",
		at.Sub(made).Round(time.Microsecond), at.Sub(banned).Round(time.Millisecond), got, size)
	waitFor(t, "the session gone", func() bool { return g.metric(t, "ftpguard_sessions_active") == 1 })
	// The bytes of the cut transfer are counted, the kernel's as the
	// relay's: at least what the client read, at most the file.
	if kernel {
		waitFor(t, "the cut transfer's bytes counted", func() bool { return g.Count(t, "kernel transfer bytes") == 1 })
	}
	if n := g.metric(t, `ftpguard_bytes_relayed_total{direction="download"}`); n < float64(got) || n > size {
		t.Errorf("counted %v bytes of the download; the client read %d of %d", n, got, size)
	} else {
		t.Logf("counted %v bytes of the download; the client read %d", n, got)
	}
	waitFor(t, "goroutines back to their count before the session", func() bool {
		return g.metric(t, "go_goroutines") <= before
	})
	other.send("NOOP")
	other.expect(200)
	if n := g.Count(t, "reject", "reason", "banned", "ban", prefix+"2/32", "logged_in", "true"); n != 1 {
		t.Errorf("%d logged-in sessions ended, want 1", n)
	}
	if n := d.FailedLogins(t); n != 0 {
		t.Fatalf("vsftpd saw %d failed logins, want 0", n)
	}
}

// TestBanEndsSessionsOff: under "off" a ban (ftpguard bans add) ends no
// open session — neither the logged-in one nor those before login — but
// the next USER or PASS of each is refused with 421 "banned (admin)" and
// never reaches the daemon.
func TestBanEndsSessionsOff(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 5})
	g.endMode(t, "off", 1)
	const src = "127.0.12.5"
	in := rawLogin(t, src, g.Addr)
	awaiting := rawUser(t, src, g.Addr)
	fresh := dialRaw(t, src, g.Addr)
	fresh.expect(220)
	if code, out, errs := ftpguardCLI(t, "bans", "add", "-config", g.Config, "-admin", g.AdminAddr, src, "30m"); code != 0 {
		t.Fatalf("bans add: %d %q %q", code, out, errs)
	}
	if code := greeting(t, src, g.Addr); code != 421 { // the ban is in force
		t.Fatalf("new connection after the ban: %d, want 421", code)
	}
	in.send("NOOP")
	in.expect(200)
	if n := g.Count(t, "reject", "reason", "banned", "logged_in", "false") + g.Count(t, "reject", "reason", "banned", "logged_in", "true"); n != 0 {
		t.Fatalf("%d sessions ended under off, want 0", n)
	}
	awaiting.send("PASS wrong-password")
	if code, text := awaiting.reply(); code != 421 || !strings.Contains(text, "banned (admin)") {
		t.Fatalf("PASS after the ban: %d %q, want 421 banned (admin)", code, text)
	}
	fresh.send("USER " + testUser)
	if code, text := fresh.reply(); code != 421 || !strings.Contains(text, "banned (admin)") {
		t.Fatalf("USER after the ban: %d %q, want 421 banned (admin)", code, text)
	}
	for _, r := range []*raw{awaiting, fresh} {
		if code, _ := r.reply(); code != 0 {
			t.Fatalf("after the 421: reply %d, want the end", code)
		}
	}
	in.send("NOOP") // still there
	in.expect(200)
	for _, cmd := range []string{"PASS", "USER"} {
		if n := g.Count(t, "reject", "reason", "banned", "cmd", cmd); n != 1 {
			t.Errorf("%d %s refused as banned, want 1", n, cmd)
		}
	}
	if n := d.FailedLogins(t); n != 0 {
		t.Fatalf("vsftpd saw %d failed logins, want 0", n)
	}
	t.Logf("off: no session ended; PASS and USER after the ban refused by ftpguard; vsftpd saw %d failed logins", d.FailedLogins(t))
}
