package proxy

import (
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
