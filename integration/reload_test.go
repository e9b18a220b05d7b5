//go:build integration

package integration

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
)

// The reload matrix (docs/operating.md, "Reload, and what a session
// keeps"): each reloadable key is changed with sessions in flight —
// logged in, mid-transfer, a PASS awaiting the daemon's reply — and they
// behave as documented. Reloads by SIGHUP and by POST /reload, against
// vsftpd.

// rewrite replaces each old with its new in g's config file, failing if
// one is missing.
func (g *guard) rewrite(t *testing.T, pairs ...string) {
	t.Helper()
	b, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(pairs); i += 2 {
		if !bytes.Contains(b, []byte(pairs[i])) {
			t.Fatalf("config has no %q", pairs[i])
		}
		b = bytes.Replace(b, []byte(pairs[i]), []byte(pairs[i+1]), 1)
	}
	if err := os.WriteFile(g.Config, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// sighup reloads g by SIGHUP and waits for its n-th "reloaded".
func (g *guard) sighup(t *testing.T, n int) {
	t.Helper()
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "reloaded", func() bool { return g.Count(t, "reloaded") == n })
}

// eventIndex returns the place of the first log event with msg (and the
// attributes kv) in g's log, or -1.
func (g *guard) eventIndex(t *testing.T, msg string, kv ...string) int {
	for i, e := range g.Events(t) {
		if e["msg"] != msg {
			continue
		}
		ok := true
		for j := 0; j+1 < len(kv); j += 2 {
			if fmt.Sprint(e[kv[j]]) != kv[j+1] {
				ok = false
			}
		}
		if ok {
			return i
		}
	}
	return -1
}

// TestReloadLimitsPassInFlight: a [limits] reload (failures, window,
// ipv4_prefix) while a PASS awaits vsftpd's reply (delay_failed_login
// holds it): the attempt settles against the key and budget it was taken
// on (limiter.Attempt remembers them) — its failure bans 127.0.0.61/32, the
// key of the old prefix, not the new /24 — and later guesses count against
// the new key and budget.
func TestReloadLimitsPassInFlight(t *testing.T) {
	d := startVsftpd(t, "delay_failed_login=4")
	g := startGuard(t, d.Addr, guardOpts{Failures: 2})
	r := dialRaw(t, "127.0.0.61", g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS wrong1")
	r.expect(331)
	r.expect(530) // one failure of 127.0.0.61/32 left
	r.send("USER "+testUser, "PASS wrong2")
	r.expect(331)
	waitFor(t, "the second PASS at the daemon (its place taken)", func() bool {
		b, _ := os.ReadFile(d.LogPath) // log_ftp_protocol: vsftpd logs each command it reads
		return bytes.Count(b, []byte(`"PASS `)) == 2
	})
	g.rewrite(t, "failures = 2", "failures = 3", `window = "10m"`, `window = "20m"`, "[limits]\n", "[limits]\nipv4_prefix = 24\n")
	g.sighup(t, 1)
	r.expect(530) // the daemon's answer to the PASS in flight
	if reload, failed := g.eventIndex(t, "reloaded"), g.Count(t, "login failed", "peer", "127.0.0.61"); failed != 2 {
		t.Fatalf("%d failures logged, want 2", failed)
	} else if last := lastIndex(g, t, "login failed"); last < reload {
		t.Fatalf("the second PASS was answered before the reload (event %d < %d): no PASS in flight; lengthen delay_failed_login", last, reload)
	}
	waitFor(t, "the ban of the key the attempt was taken on", func() bool {
		return g.Count(t, "ban", "key", "127.0.0.61/32") == 1
	})
	if n := g.Count(t, "ban", "key", "127.0.0.0/24"); n != 0 {
		t.Fatalf("the attempt taken before the reload banned the new key 127.0.0.0/24")
	}
	// A neighbour is in the new /24 key, with the new budget (3): it is not
	// banned by .61's ban, and its guesses count against 127.0.0.0/24.
	n := dialRaw(t, "127.0.0.62", g.Addr)
	n.expect(220)
	for i := 0; i < 3; i++ {
		n.send("USER "+testUser, "PASS wrong")
		n.expect(331)
		n.expect(530)
	}
	waitFor(t, "the ban of the new key", func() bool { return g.Count(t, "ban", "key", "127.0.0.0/24") == 1 })
}

// lastIndex returns the place of the last log event with msg.
func lastIndex(g *guard, t *testing.T, msg string) int {
	last := -1
	for i, e := range g.Events(t) {
		if e["msg"] == msg {
			last = i
		}
	}
	return last
}

// TestReloadImplicitTLSOff: [tls] mode implicit → off with a PROT P session
// mid-transfer, an implicit session and an explicit one logged in: the
// transfer finishes, and each session's next RETR is TLS (the client's
// PROT P data handshake succeeds) — never clear text; the implicit port is
// closed; a new session is offered no TLS; nothing panics. Before, the port
// stayed open and its first ClientHello took the process down. A reload
// back to implicit TLS opens the port again (before: only a restart did).
func TestReloadImplicitTLSOff(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Extra: testCert(t, "implicit")})
	waitFor(t, "the implicit listener", func() bool {
		for _, e := range g.Events(t) {
			if a, ok := e["implicit_tls"].(string); ok {
				g.ImplicitAddr = a
			}
		}
		return g.ImplicitAddr != ""
	})
	name := fmt.Sprintf("reload-tls-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 4<<20)
	t.Cleanup(func() { os.Remove(path) })
	tlsConf := func() *tls.Config {
		// ServerName: the session cache's key, the same for the control and
		// the data connections, so that data connections resume.
		return &tls.Config{InsecureSkipVerify: true, ServerName: "ftpguard.test", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	}
	implicit, err := ftpClient(t, "127.0.0.71", g.ImplicitAddr, ftp.DialWithTLS(tlsConf()))
	if err != nil {
		t.Fatal(err)
	}
	explicit, err := ftpClient(t, "127.0.0.72", g.Addr, ftp.DialWithExplicitTLS(tlsConf()))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*ftp.ServerConn{implicit, explicit} {
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
	}
	retr := func(c *ftp.ServerConn, what string) {
		t.Helper()
		rr, err := c.Retr(name)
		if err != nil {
			t.Fatalf("%s: RETR after the reload: %v", what, err)
		}
		got, err := io.ReadAll(rr)
		rr.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: RETR after the reload: %d bytes, %v; want %d identical bytes over TLS", what, len(got), err, len(want))
		}
	}

	// Mid-transfer: part of the file read, then the reload, then the rest.
	rr, err := explicit.Retr(name)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(rr, head); err != nil {
		t.Fatal(err)
	}
	g.rewrite(t, `mode = "implicit"`, `mode = "off"`)
	g.sighup(t, 1)
	rest, err := io.ReadAll(rr)
	rr.Close()
	if got := append(head, rest...); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("transfer across the reload: %d bytes, %v; want %d identical bytes", len(got), err, len(want))
	}
	retr(explicit, "explicit PROT P session")
	retr(implicit, "implicit session")

	if c, err := net.DialTimeout("tcp", g.ImplicitAddr, 2*time.Second); err == nil {
		c.Close()
		t.Fatal("the implicit port is still open after a reload to mode = \"off\"")
	}
	if g.Count(t, "stopped listening", "key", "tls.implicit_listen") != 1 {
		t.Error("the implicit listener's close was not logged")
	}
	r := dialRaw(t, "127.0.0.73", g.Addr)
	r.expect(220)
	r.send("AUTH TLS")
	r.expect(534)
	if err := explicit.NoOp(); err != nil {
		t.Fatalf("explicit session after the reload: %v", err)
	}
	select {
	case err := <-g.exited:
		g.exited <- err
		t.Fatalf("ftpguard exited: %v", err)
	default:
	}
	if n := g.metric(t, "ftpguard_panics_total"); n != 0 {
		t.Fatalf("ftpguard_panics_total = %v", n)
	}
	implicit.Quit()
	explicit.Quit()

	// And back: a reload to implicit TLS opens its port again.
	g.rewrite(t, `mode = "off"`, `mode = "implicit"`)
	g.sighup(t, 2)
	var again string
	waitFor(t, "the implicit listener reopened", func() bool {
		n := 0
		for _, e := range g.Events(t) {
			if a, ok := e["implicit_tls"].(string); ok && e["msg"] == "listening" {
				if n++; n == 2 {
					again = a
				}
			}
		}
		return again != ""
	})
	c, err := ftpClient(t, "127.0.0.74", again, ftp.DialWithTLS(tlsConf()))
	if err != nil {
		t.Fatalf("implicit TLS turned back on by reload: %v", err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	retr(c, "implicit session after turning implicit TLS back on")
	c.Quit()
}

// TestReloadSessions: [sessions] login_timeout and max_conns reloaded by
// POST /reload with sessions open: no open session is dropped to fit a lower
// max_conns (the logged-in ones go on), a shorter login_timeout ends a
// session not logged in at its next command, and new sessions get it; once
// the table holds only logged-in sessions at the new max_conns, a newcomer
// is refused (with pre-login sessions in the table it would shed the oldest
// of them instead: docs/operating.md, "Capacity").
func TestReloadSessions(t *testing.T) {
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Sessions: "max_conns = 3"})
	login := func(src string) *ftp.ServerConn {
		c, err := ftpClient(t, src, g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
		return c
	}
	in, in2 := login("127.0.0.81"), login("127.0.0.83")
	waiting := dialRaw(t, "127.0.0.82", g.Addr)
	waiting.expect(220)

	g.rewrite(t, "max_conns = 3", "max_conns = 2", `login_timeout = "30s"`, `login_timeout = "1s"`)
	if code, body := g.admin(t, "POST", "/reload", adminToken, ""); code != 200 {
		t.Fatalf("POST /reload = %d %s", code, body)
	}
	if _, err := in.List(""); err != nil {
		t.Fatalf("logged-in session after lowering max_conns: %v", err)
	}
	// Not logged in: its next command is answered (vsftpd: 530 before
	// login), then the session ends at the new login_timeout.
	waiting.send("NOOP")
	waiting.expect(530)
	if text := waiting.expect(421); !strings.Contains(text, "Login timeout") {
		t.Fatalf("session not logged in after login_timeout 30s → 1s: %q", text)
	}
	waitFor(t, "the timed-out session gone", func() bool { return g.metric(t, "ftpguard_sessions_active") == 2 })
	over := dialRaw(t, "127.0.0.84", g.Addr)
	if text := over.expect(421); !strings.Contains(text, "Too many connections") {
		t.Fatalf("over the reloaded max_conns, only logged-in sessions open: %q", text)
	}
	in2.Quit()
	waitFor(t, "room under max_conns = 2", func() bool { return g.metric(t, "ftpguard_sessions_active") < 2 })
	fresh := dialRaw(t, "127.0.0.85", g.Addr)
	fresh.expect(220)
	if text := fresh.expect(421); !strings.Contains(text, "Login timeout") { // the new login_timeout
		t.Fatalf("new session under login_timeout = 1s: %q", text)
	}
	if _, err := in.List(""); err != nil {
		t.Fatalf("logged-in session at the end: %v", err)
	}
	in.Quit()
}

// procSlacks returns the timer slack of each thread of process pid (as
// root: another process's need CAP_SYS_NICE).
func procSlacks(t *testing.T, pid int) map[string]time.Duration {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Duration{}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + task.Name() + "/timerslack_ns")
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread ended
		}
		if err != nil {
			t.Fatal(err)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		got[task.Name()] = time.Duration(ns)
	}
	return got
}

// TestReloadTimerSlack: every thread of ftpguard, the Go runtime's among
// them, runs with timer_slack (1ms by default), also the threads started
// for sessions, and a reload changes it ("0s": the slack it was started
// with, here this test's).
func TestReloadTimerSlack(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{})
	started, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	initial, _ := strconv.ParseInt(strings.TrimSpace(string(started)), 10, 64)
	check := func(want time.Duration) {
		t.Helper()
		// Sessions at once from several addresses: threads are started.
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := ftpClient(t, fmt.Sprintf("127.0.0.%d", 91+i), g.Addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Quit()
				if err := c.Login(testUser, testPass); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		slacks := procSlacks(t, g.cmd.Process.Pid)
		if len(slacks) < 3 {
			t.Fatalf("%d threads", len(slacks))
		}
		for tid, d := range slacks {
			if d != want {
				t.Errorf("thread %s: slack %v, want %v", tid, d, want)
			}
		}
	}
	check(time.Millisecond)
	if g.Count(t, "timer slack set", "timer_slack", "1ms") != 1 {
		t.Error(`no "timer slack set" timer_slack=1ms logged at start`)
	}
	g.rewrite(t, `mode = "enforce"`, "mode = \"enforce\"\ntimer_slack = \"5ms\"")
	g.sighup(t, 1)
	check(5 * time.Millisecond)
	g.rewrite(t, `timer_slack = "5ms"`, `timer_slack = "0s"`)
	g.sighup(t, 2)
	check(time.Duration(initial))
}
