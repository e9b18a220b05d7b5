//go:build integration

package integration

import (
	"fmt"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// offend makes src fail n logins through g.
func offend(t *testing.T, g *guard, src string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		r := dialRaw(t, src, g.Addr)
		if code, _ := r.reply(); code != 220 {
			t.Fatalf("offence %d: greeting %d", i, code)
		}
		r.send("USER "+testUser, "PASS wrong")
		r.expect(331)
		r.expect(530)
		r.c.Close()
	}
}

// lastEvent returns the last log event with msg and k = v.
func lastEvent(t *testing.T, g *guard, msg, k, v string) map[string]any {
	t.Helper()
	var last map[string]any
	for _, e := range g.Events(t) {
		if e["msg"] == msg && e[k] == v {
			last = e
		}
	}
	return last
}

// TestBanSurvivesKill9: ftpguard killed with SIGKILL right after a ban and
// restarted on the same state file still refuses the address, until the
// same moment, and the next ban of that address escalates.
func TestBanSurvivesKill9(t *testing.T) {
	d := startVsftpd(t)
	dir := t.TempDir()
	opts := guardOpts{Failures: 2, BanTime: "2s", BanFactor: 3, Dir: dir}
	g := startGuard(t, d.Addr, opts)
	offend(t, g, "127.0.0.50", 2)
	waitFor(t, "the ban", func() bool { return g.Count(t, "ban", "key", "127.0.0.50/32") == 1 })
	until := lastEvent(t, g, "ban", "key", "127.0.0.50/32")["until"]
	g.cmd.Process.Signal(syscall.SIGKILL)
	err := <-g.exited
	g.exited <- err

	g2 := startGuard(t, d.Addr, opts)
	r := dialRaw(t, "127.0.0.50", g2.Addr)
	if code, _ := r.reply(); code != 421 {
		t.Fatalf("after kill -9 and restart: greeting %d; want 421", code)
	}
	rej := lastEvent(t, g2, "reject", "peer", "127.0.0.50")
	if rej == nil || rej["until"] != until {
		t.Fatalf("after restart the ban ends at %v; want %v (as announced before the kill)", rej["until"], until)
	}
	time.Sleep(2100 * time.Millisecond) // the first ban (2s) ends
	offend(t, g2, "127.0.0.50", 2)
	waitFor(t, "the second ban", func() bool { return g2.Count(t, "ban", "key", "127.0.0.50/32") == 1 })
	b := lastEvent(t, g2, "ban", "key", "127.0.0.50/32")
	if b["count"] != float64(2) {
		t.Fatalf("second ban after restart: count %v; want 2", b["count"])
	}
	if b["for"] != float64(6*time.Second) {
		t.Fatalf("second ban lasts %v ns; want 6s (2s × 3)", b["for"])
	}
}

// startRedis runs a redis-server of the test's own on a free loopback port,
// without persistence, and stops it when the test ends. The returned stop
// function stops it earlier (idempotent).
func startRedis(t *testing.T) (url string, stop func()) {
	t.Helper()
	setupHost(t)
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed (run .ci/run, or apt-get install -y redis-server): %v", err)
	}
	port := freePort(t)
	cmd := exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	t.Cleanup(stop)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, "redis-server listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "redis://" + addr + "/0", stop
}

// TestSharedStore: two ftpguard instances on one Redis in front of one
// vsftpd. Failures spread over both ban the address on both, the ban made
// by one is enforced by the other at once, and with Redis stopped innocent
// clients still log in through both.
func TestSharedStore(t *testing.T) {
	const budget = 4
	d := startVsftpd(t)
	url, stopRedis := startRedis(t)
	opts := guardOpts{Failures: budget, Extra: fmt.Sprintf("[store]\nkind = \"redis\"\nurl = %q\n", url)}
	a, b := startGuard(t, d.Addr, opts), startGuard(t, d.Addr, opts)

	// Three failures through a, one through b: the shared budget is spent.
	offend(t, a, "127.0.0.60", budget-1)
	r := dialRaw(t, "127.0.0.60", b.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS wrong")
	r.expect(331)
	r.expect(530)
	r.c.Close()
	start := time.Now()
	waitFor(t, "the ban on b", func() bool { return b.Count(t, "ban", "key", "127.0.0.60/32") == 1 })
	// a learns of b's ban through Redis: poll its gate.
	var seen time.Duration
	waitFor(t, "a refusing the address banned by b", func() bool {
		r := dialRaw(t, "127.0.0.60", a.Addr)
		code, _ := r.reply()
		r.c.Close()
		seen = time.Since(start)
		return code == 421
	})
	t.Logf("ban made on b refused by a within %v (includes b's own ban and the probe connections)", seen)
	if n := d.FailedLogins(t); n > budget {
		t.Fatalf("vsftpd saw %d failed logins through two instances; want ≤ %d", n, budget)
	}

	// Redis goes away: innocent clients still log in through both.
	stopRedis()
	for _, g := range []*guard{a, b} {
		c, err := ftpClient(t, "127.0.0.61", g.Addr)
		if err != nil {
			t.Fatalf("with Redis down: %v", err)
		}
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatalf("with Redis down, login: %v", err)
		}
		c.Quit()
	}
	// And the ban already known stays enforced.
	r = dialRaw(t, "127.0.0.60", b.Addr)
	if code, _ := r.reply(); code != 421 {
		t.Fatalf("with Redis down, the banned address got %d; want 421", code)
	}
}
