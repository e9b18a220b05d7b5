package proxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// banSources stands for the ban sources a session's peer may meet after
// it connected: an external source's decision (CrowdSec), the gate hook
// (a [geo] deny rule), per address. Safe for concurrent use.
type banSources struct {
	mu   sync.Mutex
	ext  map[netip.Addr]bool
	gate map[netip.Addr]bool
}

func (b *banSources) set(m *map[netip.Addr]bool, addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if *m == nil {
		*m = map[netip.Addr]bool{}
	}
	(*m)[netip.MustParseAddr(addr)] = true
}

// wire makes srv's limiter and gate hook ask b.
func (b *banSources) wire(srv *Server) {
	srv.lim.SetExternal(func(a netip.Addr, now time.Time) (limiter.Ban, bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if !b.ext[a] {
			return limiter.Ban{}, false
		}
		return limiter.Ban{Key: netip.PrefixFrom(a, 32), Until: now.Add(time.Hour), Reason: "crowdsec: test/scenario"}, true
	})
	srv.SetGate(func(a netip.Addr) (bool, string) {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.gate[a], "rule 1 (deny XA)"
	})
}

// TestLoginAsksEveryBanSource: a ban that comes after a session connected
// — a CrowdSec decision, an admin ban while the guess would be decided by
// a [geo] budget rule's limiter (which knows nothing of it), a [geo] deny
// rule — refuses the next USER or PASS with the 421 a ban's end gives,
// and the daemon never sees it. In observe mode, and for an allowlisted
// peer, the guess goes on.
func TestLoginAsksEveryBanSource(t *testing.T) {
	ban := func(p *testProxy, b *banSources) {
		if _, err := p.lim.BanKey(time.Now(), netip.MustParsePrefix("127.0.0.1/32"), time.Hour, ""); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name      string
		cfg       Config
		lcfg      limiter.Config
		geoBudget bool   // guesses take a [geo] budget rule's limiter
		before    string // sent before the ban comes
		arrive    func(*testProxy, *banSources)
		after     string // the command the ban must stop
		want      int
		text      string // in the reply
		daemon    int    // lines of the after command's verb the daemon saw
	}{
		{"decision between USER and PASS", Config{}, testLimits, false, "USER u",
			func(_ *testProxy, b *banSources) { b.set(&b.ext, "127.0.0.1") }, "PASS bad", 421, "banned (crowdsec)", 0},
		{"decision before USER", Config{}, testLimits, false, "",
			func(_ *testProxy, b *banSources) { b.set(&b.ext, "127.0.0.1") }, "USER u", 421, "banned (crowdsec)", 0},
		{"admin ban, guess on a geo budget rule's limiter", Config{}, testLimits, true, "USER u",
			ban, "PASS bad", 421, "banned (admin)", 0},
		{"geo deny rule between USER and PASS", Config{}, testLimits, false, "USER u",
			func(_ *testProxy, b *banSources) { b.set(&b.gate, "127.0.0.1") }, "PASS bad", 421, "from your network", 0},
		{"observe mode: forwarded", Config{Observe: true}, testLimits, false, "USER u",
			func(p *testProxy, b *banSources) { b.set(&b.ext, "127.0.0.1"); b.set(&b.gate, "127.0.0.1"); ban(p, b) },
			"PASS bad", 530, "Login incorrect", 1},
		{"allowlisted: forwarded", Config{}, limiter.Config{Failures: 3, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, false, "USER u",
			func(p *testProxy, b *banSources) { b.set(&b.ext, "127.0.0.1"); b.set(&b.gate, "127.0.0.1") },
			"PASS bad", 530, "Login incorrect", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, nil)
			var b banSources
			own, err := limiter.New(testLimits, nil)
			if err != nil {
				t.Fatal(err)
			}
			p := startProxyWith(t, f.ln.Addr().String(), tc.cfg, tc.lcfg, func(srv *Server) {
				b.wire(srv)
				if tc.geoBudget {
					srv.SetLimiterFor(func(netip.Addr) *limiter.Limiter { return own })
				}
			})
			c := dial(t, p.addr)
			c.expect(220)
			if tc.before != "" {
				c.send(tc.before + "\r\n")
				c.expect(331)
			}
			tc.arrive(p, &b)
			c.send(tc.after + "\r\n")
			if r := c.expect(tc.want); !strings.Contains(r.Text(), tc.text) {
				t.Errorf("reply %q, want %q in it", r.Text(), tc.text)
			}
			if tc.want == 421 {
				c.expectEOF()
			}
			verb, _, _ := strings.Cut(tc.after, " ")
			if n := f.count(verb + " "); n != tc.daemon {
				t.Errorf("the daemon saw %d %s, want %d", n, verb, tc.daemon)
			}
		})
	}
}

// TestRecheck: after a reload, Recheck ends the open sessions whose peer
// the gate refuses now and did not before it (Refusals) — a [geo] deny
// rule (the gate hook), a CrowdSec decision (the limiter's external
// source) — as a ban would: before login only, or with all the logged-in
// ones too. A session refused before the reload (a logged-in one a ban
// spared) is left alone; other peers' sessions and an allowlisted peer's
// are untouched; observe mode ends none and notes none as refused.
func TestRecheck(t *testing.T) {
	f := startFake(t, nil)
	var b banSources
	lcfg := testLimits
	lcfg.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}
	p := startProxyWith(t, f.ln.Addr().String(), Config{}, lcfg, b.wire)
	pre := dialFrom(t, "127.0.0.2", p.addr)
	pre.expect(220)
	pre.send("USER u\r\n")
	pre.expect(331)
	in := loginFrom(t, "127.0.0.2", p.addr)
	other := loginFrom(t, "127.0.0.3", p.addr)
	allowed := dialFrom(t, "127.0.0.4", p.addr)
	allowed.expect(220)
	waitUntil(t, "four sessions", func() bool { return len(p.srv.live.all()) == 4 })

	if n := p.srv.Recheck(Refusals{}, true, false); n != 0 {
		t.Fatalf("Recheck with nothing refused ended %d sessions", n)
	}
	b.set(&b.gate, "127.0.0.2")
	b.set(&b.gate, "127.0.0.4")
	p.srv.SetConfig(Config{Backend: f.ln.Addr().String(), Observe: true})
	if r := p.srv.Refusals(); len(r.m) != 0 {
		t.Fatalf("observe mode notes %d sessions as refused, want none", len(r.m))
	}
	if n := p.srv.Recheck(Refusals{}, true, false); n != 0 {
		t.Fatalf("observe mode: Recheck ended %d sessions", n)
	}
	p.srv.SetConfig(Config{Backend: f.ln.Addr().String()})
	if n := p.srv.Recheck(Refusals{}, false, false); n != 1 {
		t.Fatalf("pre-login: Recheck ended %d sessions, want 1", n)
	}
	if r := pre.expect(421); !strings.Contains(r.Text(), "from your network") {
		t.Fatalf("pre-login session of a denied peer: %q", r.Text())
	}
	pre.expectEOF()
	in.send("NOOP\r\n") // logged in: kept unless all
	in.expect(200)

	before := p.srv.Refusals() // the logged-in session of 127.0.0.2 is refused, and was spared
	if n := p.srv.Recheck(before, true, false); n != 0 {
		t.Fatalf("a reload to all ended %d sessions refused before it, want 0", n)
	}
	in.send("NOOP\r\n")
	in.expect(200)
	b.set(&b.ext, "127.0.0.3") // comes with the reload
	if n := p.srv.Recheck(before, true, true); n != 1 {
		t.Fatalf("a decision for 127.0.0.3: Recheck ended %d sessions, want 1", n)
	}
	if r := other.expect(421); !strings.Contains(r.Text(), "banned (crowdsec)") {
		t.Fatalf("session of a peer CrowdSec banned: %q", r.Text())
	}
	other.expectEOF()
	if n := p.srv.Recheck(Refusals{}, true, false); n != 1 {
		t.Fatalf("all, nothing noted before: Recheck ended %d sessions, want 1", n)
	}
	if r := in.expect(421); !strings.Contains(r.Text(), "from your network") {
		t.Fatalf("logged-in session of a denied peer: %q", r.Text())
	}
	in.expectEOF()
	allowed.send("NOOP\r\n") // allowlisted: the gate hook is never asked
	allowed.expect(200)
	logs := p.logs.String()
	for _, want := range []string{"reason=geo rule=\"rule 1 (deny XA)\" logged_in=false",
		"reason=geo rule=\"rule 1 (deny XA)\" logged_in=true", "reason=banned ban=127.0.0.3/32 logged_in=true",
		"observe: would reject"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// cutFake is a daemon whose downloads never end: on RETR it takes the data
// connection, says 150, sends 64 KiB, then waits for the proxy to close
// the connection (closed is told) and says 426.
func cutFake(t *testing.T, closed chan<- struct{}) *fakeFTPD {
	return endlessFake(t, closed, false, 64<<10)
}

// TestEndSessionsAllNow: with now, a ban cuts a logged-in session in the
// middle of a download: 421 at once (not after the transfer's reply, which
// would come only after data_timeout), both data legs closed, and nothing
// left running (goleak, TestMain). Without all it is left alone.
func TestEndSessionsAllNow(t *testing.T) {
	closed := make(chan struct{}, 1)
	f := cutFake(t, closed)
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: time.Hour}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	dc := c.pasvData()
	c.send("RETR big\r\n")
	c.expect(150)
	if _, err := io.ReadFull(dc, make([]byte, 64<<10)); err != nil {
		t.Fatalf("the download did not start: %v", err)
	}
	key := netip.MustParsePrefix("127.0.0.1/32")
	if n := p.srv.EndSessions(key, "admin", false, true); n != 0 {
		t.Fatalf("pre-login only: %d logged-in sessions ended", n)
	}
	if n := p.srv.EndSessions(key, "admin", true, true); n != 1 {
		t.Fatalf("all-now: %d sessions ended, want 1", n)
	}
	if r := c.expect(421); !strings.Contains(r.Text(), "banned (admin)") {
		t.Fatalf("421 %q", r.Text())
	}
	c.expectEOF()
	dc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, dc); err != nil {
		t.Fatalf("the client's data connection was not closed: %v", err)
	}
	select {
	case <-closed: // the daemon's data connection closed by the proxy
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon's data connection is still open")
	}
	if !strings.Contains(p.logs.String(), "reason=banned ban=127.0.0.1/32 logged_in=true") {
		t.Errorf("no reject logged:\n%s", p.logs.String())
	}
}

// holdFake is a daemon that answers STAT only once release is closed (a
// reply the session awaits while a ban comes), and DELE with 250.
func holdFake(t *testing.T, release <-chan struct{}) *fakeFTPD {
	return startFake(t, func(c net.Conn, line string) bool {
		switch verb, _, _ := strings.Cut(line, " "); verb {
		case "STAT":
			<-release
			fmt.Fprint(c, "211 status.\r\n")
		case "DELE":
			fmt.Fprint(c, "250 deleted.\r\n")
		default:
			return false
		}
		return true
	})
}

// TestEndedForwardsNothing: a session a ban marked to end after the reply
// it awaits forwards nothing more to the daemon — not the commands the
// client pipelines meanwhile — and ends right after that reply: before,
// they were forwarded, and a client that kept one command in flight was
// never ended.
func TestEndedForwardsNothing(t *testing.T) {
	release := make(chan struct{})
	f := holdFake(t, release)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	seen := make(chan string, 16)
	hook := func(where, arg string) {
		if where == "command" {
			seen <- arg
		}
	}
	testHook.Store(&hook)
	defer testHook.Store(nil)
	c := loginFrom(t, "127.0.0.1", p.addr)
	c.send("STAT\r\n")
	waitUntil(t, "the daemon to get STAT", func() bool { return f.count("STAT") == 1 })
	if n := p.srv.EndSessions(netip.MustParsePrefix("127.0.0.1/32"), "admin", true, false); n != 1 {
		t.Fatalf("EndSessions ended %d sessions, want 1", n)
	}
	waitUntil(t, "the session marked", func() bool {
		ss := p.srv.live.all()
		return len(ss) == 1 && ss[0].ended.Load() != nil
	})
	c.send("DELE x\r\nNOOP\r\nHELP\r\n")
	for v := range seen { // HELP read: DELE and NOOP went through command
		if v == "HELP" {
			break
		}
	}
	close(release)
	if got := fmt.Sprint(c.replies()); got != "[211 421]" {
		t.Errorf("replies after the ban: %s, want [211 421]", got)
	}
	if n := f.count("DELE") + f.count("NOOP") + f.count("HELP"); n != 0 {
		t.Errorf("the daemon got %d commands sent after the ban", n)
	}
}

// TestEndedOne421: a session ended after a reply — marked by a ban, or
// banned by its own guess — while its next login command waits for that
// reply gets one 421, not two (the command's refusal wrote a second one
// when it came before the session was closed). The race is narrow: 100
// rounds each.
func TestEndedOne421(t *testing.T) {
	key := netip.MustParsePrefix("127.0.0.1/32")
	tests := []struct {
		name string
		lcfg limiter.Config
		send string
		ban  bool // a ban marks the session while USER awaits its reply
		want string
	}{
		{"a ban marks it", testLimits, "USER u\r\nPASS x\r\n", true, "[331 421]"},
		{"its own guess bans", limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour}, "USER u\r\nPASS bad\r\nPASS bad\r\n", false, "[331 530 421]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 100 {
				release := make(chan struct{})
				f := startFake(t, func(c net.Conn, line string) bool {
					if strings.HasPrefix(line, "USER") {
						<-release
						fmt.Fprint(c, "331 Please specify the password.\r\n")
						return true
					}
					return false
				})
				p := startProxy(t, f.ln.Addr().String(), Config{}, tc.lcfg)
				c := dial(t, p.addr)
				c.expect(220)
				c.send(tc.send)
				waitUntil(t, "the daemon to get USER", func() bool { return f.count("USER") == 1 })
				if tc.ban {
					if _, err := p.lim.BanKey(time.Now(), key, time.Hour, ""); err != nil {
						t.Fatal(err)
					}
					p.srv.EndSessions(key, "admin", false, false)
					waitUntil(t, "the session marked", func() bool {
						ss := p.srv.live.all()
						return len(ss) == 1 && ss[0].ended.Load() != nil
					})
				}
				close(release)
				if got := fmt.Sprint(c.replies()); got != tc.want {
					t.Fatalf("round %d: replies %s, want %s", i, got, tc.want)
				}
			}
		})
	}
}

// TestEndBans: one call ends the sessions a whole batch of bans covers (a
// CrowdSec poll's decisions), each with the reason of the most specific ban
// covering it, among thousands that cover nobody; an allowlisted peer's
// and uncovered peers' sessions go on.
func TestEndBans(t *testing.T) {
	f := startFake(t, nil)
	lcfg := testLimits
	lcfg.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}
	p := startProxy(t, f.ln.Addr().String(), Config{}, lcfg)
	cl := map[string]*client{}
	for _, a := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		cl[a] = dialFrom(t, a, p.addr)
		cl[a].expect(220)
	}
	waitUntil(t, "four sessions", func() bool { return len(p.srv.live.all()) == 4 })
	var bans []Ban
	for i := range 10000 {
		bans = append(bans, Ban{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32), "cs0: none"})
	}
	bans = append(bans, Ban{netip.MustParsePrefix("127.0.0.0/30"), "cs2: range"},
		Ban{netip.MustParsePrefix("127.0.0.2/32"), "cs1: host"}, Ban{netip.MustParsePrefix("127.0.0.4/32"), "cs3: allowed"},
		Ban{netip.Prefix{}, "invalid"})
	if n := p.srv.EndBans(bans, false, false); n != 2 {
		t.Fatalf("EndBans ended %d sessions, want 2", n)
	}
	for a, want := range map[string]string{"127.0.0.2": "banned (cs1)", "127.0.0.3": "banned (cs2)"} {
		if r := cl[a].expect(421); !strings.Contains(r.Text(), want) {
			t.Errorf("%s: %q, want %q in it", a, r.Text(), want)
		}
		cl[a].expectEOF()
	}
	for _, a := range []string{"127.0.0.4", "127.0.0.5"} {
		cl[a].send("NOOP\r\n")
		cl[a].expect(200)
	}
}

// TestEndBansSoon: bans queued one at a time, as a resync of the shared
// store reports them, end the sessions they cover in a pass over the
// sessions for all the bans queued meanwhile, not a pass a ban. The
// registry is held while they are queued, so the first pass waits: every
// ban queued by then goes into the second, and two passes are the most.
func TestEndBansSoon(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	cl := map[string]*client{}
	for _, a := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		cl[a] = dialFrom(t, a, p.addr)
		cl[a].expect(220)
	}
	waitUntil(t, "three sessions", func() bool { return len(p.srv.live.all()) == 3 })
	p.srv.live.mu.Lock()
	for i := range 5000 {
		p.srv.EndBansSoon(Ban{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32), "redis: none"}, false, false)
		if i == 2500 {
			p.srv.EndBansSoon(Ban{netip.MustParsePrefix("127.0.0.2/32"), "shared"}, false, false)
			p.srv.EndBansSoon(Ban{netip.MustParsePrefix("127.0.0.3/32"), "other"}, true, false)
		}
	}
	p.srv.live.mu.Unlock()
	for a, want := range map[string]string{"127.0.0.2": "banned (shared)", "127.0.0.3": "banned (other)"} {
		if r := cl[a].expect(421); !strings.Contains(r.Text(), want) {
			t.Errorf("%s: %q, want %q in it", a, r.Text(), want)
		}
		cl[a].expectEOF()
	}
	cl["127.0.0.4"].send("NOOP\r\n")
	cl["127.0.0.4"].expect(200)
	waitUntil(t, "the queue drained", func() bool {
		p.srv.endq.mu.Lock()
		defer p.srv.endq.mu.Unlock()
		return !p.srv.endq.busy
	})
	// One pass of the first ban (or none), then one a mode (all: two).
	if n := p.srv.endq.passes.Load(); n > 3 {
		t.Errorf("%d passes over the sessions for 5,002 bans; want at most 3", n)
	}
}

// TestEndBansSoonPanic: a panic while the queue is worked off is recovered,
// logged and counted, not the process's end; what was queued is dropped
// (those sessions are refused at their next login command), and the next
// ban is worked off by a new goroutine.
func TestEndBansSoonPanic(t *testing.T) {
	f := startFake(t, nil)
	obs := &panicCounter{}
	p := startObserved(t, f.ln.Addr().String(), Config{}, obs)
	c := dialFrom(t, "127.0.0.2", p.addr)
	c.expect(220)
	waitUntil(t, "the session", func() bool { return len(p.srv.live.all()) == 1 })
	hook := func(where, _ string) {
		if where == "endQueued" {
			panic("injected panic")
		}
	}
	testHook.Store(&hook)
	p.srv.EndBansSoon(Ban{netip.MustParsePrefix("127.0.0.9/32"), "shared"}, false, false)
	waitUntil(t, "the panic counted", func() bool { return obs.n.Load() == 1 })
	testHook.Store(nil)
	if !strings.Contains(p.logs.String(), "panic recovered; queued bans' sessions not ended") {
		t.Errorf("the panic was not logged:\n%s", p.logs.String())
	}
	p.srv.EndBansSoon(Ban{netip.MustParsePrefix("127.0.0.2/32"), "shared"}, false, false)
	if r := c.expect(421); !strings.Contains(r.Text(), "banned (shared)") {
		t.Fatalf("after the panic: %q", r.Text())
	}
}

// TestEndedOneReject: two bans ending one session (two sources at once:
// an admin ban and a CrowdSec poll, each ending it on a goroutine of its
// own) log and count one reject, as the client gets one 421; the second
// used to log a reject of its own.
func TestEndedOneReject(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dialFrom(t, "127.0.0.2", p.addr)
	c.expect(220)
	waitUntil(t, "the session", func() bool { return len(p.srv.live.all()) == 1 })
	ss := p.srv.live.all()[0]
	ss.endFor(banEnding(netip.MustParsePrefix("127.0.0.2/32"), "admin"), false)
	ss.endFor(banEnding(netip.MustParsePrefix("127.0.0.0/24"), "crowdsec: x"), false)
	if r := c.expect(421); !strings.Contains(r.Text(), "banned (admin)") {
		t.Fatalf("421 %q, want the first ban's", r.Text())
	}
	c.expectEOF()
	if n := strings.Count(p.logs.String(), "reason=banned"); n != 1 {
		t.Fatalf("%d rejects logged, want 1:\n%s", n, p.logs.String())
	}
}

// loginHook is an Observer that calls on (if set) at each successful
// login, from inside the session's settling of its PASS's reply.
type loginHook struct {
	nopObserver
	on atomic.Pointer[func()]
}

func (o *loginHook) Login(ok bool) {
	if f := o.on.Load(); ok && f != nil {
		(*f)()
	}
}

// TestBanWhileSettling: a ban that comes from elsewhere (an admin, a
// CrowdSec poll) while a session is settling its login's reply ends it
// too, after that reply: before, a session settling a reply was skipped as
// if its own guess had made the ban, and under "all" a session that had
// just logged in stayed open.
func TestBanWhileSettling(t *testing.T) {
	f := startFake(t, nil)
	obs := &loginHook{}
	p := startProxyWith(t, f.ln.Addr().String(), Config{}, testLimits, func(srv *Server) { srv.SetObserver(obs) })
	key := netip.MustParsePrefix("127.0.0.1/32")
	var ended atomic.Int64
	ban := func() {
		if _, err := p.lim.BanKey(time.Now(), key, time.Hour, ""); err != nil {
			t.Error(err)
		}
		ended.Store(int64(p.srv.EndSessions(key, "admin", true, false)))
	}
	obs.on.Store(&ban)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	c.send("NOOP\r\nQUIT\r\n")
	if got := fmt.Sprint(c.replies()); got != "[421]" {
		t.Errorf("after the login: replies %s, want [421]", got)
	}
	if n := ended.Load(); n != 1 {
		t.Errorf("EndSessions ended %d sessions, want 1", n)
	}
}
