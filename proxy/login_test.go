package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// TestSettleLogin: the login policy's reading of each reply to USER, PASS
// and ACCT, without sockets: what it settles the attempt as (counted in
// the limiter), how long it holds the reply, whether the key is banned,
// and the session state the next login command is judged by.
func TestSettleLogin(t *testing.T) {
	const full = "Sorry, the maximum number of allowed clients (1) are already connected."
	tests := []struct {
		name     string
		verb     string
		code     int // 0: no reply came
		text     string
		lcfg     limiter.Config
		observe  bool
		failures int // "login failed" events
		hold     time.Duration
		banned   bool
		loggedIn bool
		userOK   bool
		asked    bool
		free     bool // the attempt's place is given back: another guess is allowed at once
	}{
		{name: "USER 331: the name is the session's", verb: "USER", code: 331, userOK: true},
		{name: "USER 332: an account will be asked", verb: "USER", code: 332, userOK: true, asked: true},
		{name: "USER 230: logged in without a password", verb: "USER", code: 230, userOK: true, loggedIn: true},
		{name: "USER 530, not counted", verb: "USER", code: 530},
		{name: "USER 530, counted: a penalty", verb: "USER", code: 530, failures: 1,
			lcfg: limiter.Config{CountUserRejects: true}},
		{name: "PASS 230: a success", verb: "PASS", code: 230, loggedIn: true, free: true},
		{name: "PASS 202: a success", verb: "PASS", code: 202, loggedIn: true, free: true},
		{name: "PASS 332: released, ACCT is counted itself", verb: "PASS", code: 332, asked: true, free: true},
		{name: "ACCT 202: released, no login", verb: "ACCT", code: 202, free: true},
		{name: "PASS 530 from a full proftpd: released", verb: "PASS", code: 530, text: full, free: true},
		{name: "PASS 530: a failure, held by the tarpit", verb: "PASS", code: 530, failures: 1, hold: 100 * time.Millisecond,
			lcfg: limiter.Config{FailureDelay: 100 * time.Millisecond}},
		{name: "PASS 530 spending the budget: banned", verb: "PASS", code: 530, failures: 1, banned: true,
			lcfg: limiter.Config{Failures: 1}},
		{name: "PASS 530 in observe mode: never held nor closed", verb: "PASS", code: 530, failures: 1, observe: true,
			lcfg: limiter.Config{Failures: 1, FailureDelay: time.Second}},
		{name: "PASS without a reply: a failure, nothing to hold", verb: "PASS", failures: 1,
			lcfg: limiter.Config{FailureDelay: 100 * time.Millisecond}},
		{name: "ACCT 530: a failure", verb: "ACCT", code: 530, failures: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lcfg := tt.lcfg
			if lcfg.Failures == 0 {
				lcfg.Failures = 3
			}
			if tt.free {
				// One token: a place not given back would refuse the next
				// guess (Busy).
				lcfg.Failures = 1
			}
			lcfg.Window, lcfg.BanTime = time.Hour, time.Hour
			s, logs := testSession(t, Config{Observe: tt.observe}, lcfg)
			now := time.Now()
			tk := &ticket{user: "u"}
			if tt.verb != "USER" {
				tk.attempt, _ = s.srv.lim.Begin(now, s.peer.Addr(), "u", nil)
			}
			r := ftpproto.Reply{}
			if tt.code != 0 {
				text := tt.text
				if text == "" {
					text = "reply"
				}
				r = ftpproto.NewReply(tt.code, text)
			}
			hold, banned := s.settleLogin(tt.verb, tk, r)
			if hold != tt.hold || banned != tt.banned {
				t.Errorf("hold %v, banned %v; want %v, %v", hold, banned, tt.hold, tt.banned)
			}
			if n := strings.Count(logs.String(), `msg="login failed"`); n != tt.failures {
				t.Errorf("%d failures logged; want %d\n%s", n, tt.failures, logs)
			}
			if s.loggedIn.Load() != tt.loggedIn || s.userOK != tt.userOK || s.acctAsked != tt.asked {
				t.Errorf("loggedIn %v, userOK %v, acctAsked %v; want %v, %v, %v",
					s.loggedIn.Load(), s.userOK, s.acctAsked, tt.loggedIn, tt.userOK, tt.asked)
			}
			if tt.free {
				next, v := s.srv.lim.Begin(now, s.peer.Addr(), "u", nil)
				defer next.Settle(now, limiter.OutcomeRelease)
				if !v.OK() {
					t.Errorf("the place was not given back: the next guess is refused (%+v)", v.Decision)
				}
			}
			// Settling twice does nothing.
			if tk.attempt != nil {
				if d := tk.attempt.Settle(now, limiter.OutcomeFailure); d != (limiter.Decision{}) {
					t.Errorf("a second Settle did something: %+v", d)
				}
			}
		})
	}
}

// testSession is a session of a Server on lim with no backend: enough for
// the login policy.
func testSession(t *testing.T, cfg Config, lcfg limiter.Config) (*session, *syncBuf) {
	t.Helper()
	lim, err := limiter.New(lcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	cfg.Backend = "127.0.0.1:1"
	srv, err := New(cfg, lim, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	t.Cleanup(func() { c1.Close(); c2.Close() })
	s := newSession(srv, c1, c1, c2, endpoints{peer: netip.MustParseAddrPort("192.0.2.1:4000")}, srv.log)
	return s, logs
}

func TestPausedText(t *testing.T) {
	tests := []struct {
		user  string
		retry time.Duration
		want  string
	}{
		{"alice", 3 * time.Minute, `Logins to "alice" from new addresses are paused after repeated failed logins elsewhere; retry in about 3m.`},
		{"alice", 2*time.Minute + time.Second, `"alice" from new addresses are paused after repeated failed logins elsewhere; retry in about 3m.`},
		{"bob", 59 * time.Second, `retry in under a minute.`},
		{"bob", 0, `retry in under a minute.`},
		{"bob", 90*time.Minute + 1, `retry in about 1h31m.`},
		{`a"b\c` + "\x7f\xff", time.Hour, `Logins to "a?b?c??" from`},
		{"josé", time.Minute, `Logins to "josé" from new addresses are paused after repeated failed logins elsewhere; retry in about 1m.`},
		{strings.Repeat("x", 40), time.Minute, `Logins to "` + strings.Repeat("x", 32) + `…" from`},
	}
	for _, tt := range tests {
		got := pausedText(tt.user, tt.retry)
		if !strings.Contains(got, tt.want) || strings.Contains(got, "incorrect") {
			t.Errorf("pausedText(%q, %v) = %q, want it to hold %q", tt.user, tt.retry, got, tt.want)
		}
	}
}

// TestUserThrottleOwner: two wrong guesses from anywhere spend the
// account's budget; its owner, logging in from an address that never
// logged in before, is told the truth (not "Login incorrect"), retries ten
// times at no cost to its address (full budget, no ban, never 421), and
// gets in once an admin resets the username, under any spelling. Before,
// each retry was a "530 Login incorrect." that cost the address a token:
// the third banned the owner.
func TestUserThrottleOwner(t *testing.T) {
	f := startFake(t, nil)
	lcfg := limiter.Config{Failures: 3, Window: time.Hour, BanTime: time.Hour}
	p := startProxy(t, f.ln.Addr().String(), trusting("127.0.0.0/8"), lcfg)
	users, err := limiter.NewUsers(limiter.UserConfig{Failures: 2, Window: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	p.srv.SetUsers(users)
	login := func(src, user, pass string) ftpproto.Reply {
		c := dialWithHeader(t, p.addr, 2, src)
		c.expect(220)
		c.send("USER " + user + "\r\nPASS " + pass + "\r\n")
		c.expect(331)
		r, _ := c.r.ReadReply()
		c.send("QUIT\r\n")
		c.r.ReadReply()
		c.c.Close()
		return r
	}
	for i, spelling := range []string{"victim", "VICTIM"} {
		if r := login(fmt.Sprintf("203.0.113.%d:1000", i+1), spelling, "guess"); r.Code != 530 || r.Text() != "Login incorrect." {
			t.Fatalf("guess %d: %v", i, r.Lines)
		}
	}
	const owner = "198.51.100.9"
	for i := range 10 {
		r := login(owner+":2000", "Victim", "good")
		if r.Code != 530 || strings.Contains(r.Text(), "incorrect") ||
			!strings.Contains(r.Text(), `Logins to "Victim" from new addresses are paused`) || !strings.Contains(r.Text(), "retry in about") {
			t.Fatalf("owner's retry %d: %v; want the truthful 530", i, r.Lines)
		}
	}
	if n := f.count("PASS good"); n != 0 {
		t.Fatalf("the daemon saw %d owner logins while throttled", n)
	}
	now := time.Now()
	if bans := p.lim.Bans(now); len(bans) != 0 {
		t.Fatalf("bans after the owner's retries: %+v", bans)
	}
	// The owner's address keeps its whole budget: as many places as a
	// fresh address's.
	remaining := func(addr string) int {
		a, v := p.lim.Begin(now, netip.MustParseAddr(addr), "", nil)
		defer a.Settle(now, limiter.OutcomeRelease)
		return v.Remaining
	}
	if got, want := remaining(owner), remaining("198.51.100.200"); got != want {
		t.Fatalf("owner's address has %d tokens after 10 refused retries; a fresh one %d", got, want)
	}
	if n := strings.Count(p.logs.String(), `reason="username throttled"`); n != 10 {
		t.Errorf("%d refusals logged with reason \"username throttled\"; want 10", n)
	}
	if got := users.Throttled(now); len(got) != 1 || got[0].Name != "victim" {
		t.Fatalf("Throttled = %+v", got)
	}
	if found, err := users.Reset("VicTim"); !found || err != nil {
		t.Fatalf("Reset = %v, %v", found, err)
	}
	if r := login(owner+":2001", "Victim", "good"); r.Code != 230 {
		t.Fatalf("owner after reset: %v", r.Lines)
	}
}
