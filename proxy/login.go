package proxy

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/proxy/internal/pairing"
)

// The login policy: USER, PASS and ACCT, from the client's line to the
// daemon's reply. Read top to bottom: what is refused before forwarding
// and why (login), what each reply means for the guess it answers
// (settleLogin), and what a failure costs (failed: the tarpit, a ban
// mid-session). The limiter is called here only, and never while the
// session's lock is held.

// ticket is what the pairing entry of a login command carries to the
// command's reply: the username, and for PASS and ACCT the guess itself.
type ticket struct {
	user    string           // the username USER named, or the PASS was for
	attempt *limiter.Attempt // PASS, ACCT: settled once, by settleLogin; nil for USER
}

// release gives back the places of a guess that never reached the daemon
// (the session ended before it was sent). A nil ticket holds nothing.
func (t *ticket) release() {
	if t != nil && t.attempt != nil {
		t.attempt.Settle(time.Now(), limiter.OutcomeRelease)
	}
}

// login handles USER, PASS and ACCT and reports whether the session goes
// on. Only relayCommands calls it.
func (s *session) login(cmd ftpproto.Command) bool {
	if s.srv.config().RequireTLS && !s.tlsOn.Load() {
		return s.replyLocal(ftpproto.NewReply(530, "TLS required: use AUTH TLS before logging in."))
	}
	if cmd.Verb == "USER" {
		return s.loginUser(cmd)
	}
	// A PASS or ACCT goes to the daemon alone, after every reply before
	// it: the state it is judged by (userOK, acctAsked) comes from the
	// reply to the USER before it.
	if !s.awaitAlone() {
		return false
	}
	s.mu.Lock()
	userOK, asked, user := s.userOK, s.acctAsked, s.user
	s.mu.Unlock()
	switch {
	case s.loggedIn.Load():
		return s.replyLocal(ftpproto.NewReply(230, "Already logged in."))
	case cmd.Verb == "PASS" && !userOK:
		// Whose password it would be is the daemon's guess: not asked.
		return s.replyLocal(ftpproto.NewReply(503, "Login with USER first."))
	case cmd.Verb == "ACCT" && !asked:
		// Only in answer to a 332: elsewhere a daemon may take it for
		// something else (pure-ftpd answers 202).
		return s.replyLocal(ftpproto.NewReply(503, "Bad sequence of commands: no account was asked for."))
	}
	return s.guess(cmd, user)
}

// loginUser: USER carries no secret, so it takes no place in a budget (a
// pipelined USER+PASS must not hold the token its PASS needs), but a
// key the gate would refuse goes no further (refused), and a 530 to it may
// be penalised (settleLogin). The name becomes the session's user only when the daemon
// accepts it (proftpd keeps the earlier name after refusing a USER).
func (s *session) loginUser(cmd ftpproto.Command) bool {
	name := strings.TrimSpace(cmd.Arg)
	switch {
	case s.loggedIn.Load():
		// No daemon here lets a session log in again (vsftpd would answer
		// a PASS with "230 Already logged in.", a login of nobody); not
		// forwarded.
		return s.replyLocal(ftpproto.NewReply(530, "Can't change to another user."))
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		// pure-ftpd reads control bytes as "_": one account under many
		// names, each with a budget of its own.
		return s.replyLocal(ftpproto.NewReply(501, "Syntax error: control characters in the username."))
	}
	s.mu.Lock()
	s.acctAsked, s.userOK = false, false
	s.mu.Unlock()
	if s.refused(cmd.Verb) {
		return false
	}
	s.authAlone = true
	return s.forward(cmd, cmd.Verb, &ticket{user: logSafe(name)})
}

// guess begins the attempt of a PASS (for user) or an ACCT and forwards it
// if the budgets allow it.
//
//   - A username whose budget is spent or held by guesses in flight
//     (distributed guessing) is answered 530 by the proxy, truthfully (the
//     name, that logins from new addresses are paused, when to retry),
//     never forwarded and at no cost to the key: it is the owner as often
//     as an attacker, and the guess never reached the daemon.
//   - One more name than a key may try (spraying) is answered 530 after
//     the tarpit, never forwarded; that costs the key a token.
//   - A key whose tokens are all held by guesses in flight waits for one
//     (awaitPlace), FIFO, at most until login_timeout.
//   - A key with no place left is answered 421 and the session ends
//     (docs/design.md rule 3); so is every guess while the shared store is
//     down with fail_closed, and one that waited in vain or found the key's queue full.
//   - A PASS for a trap username from a key that never logged in to it
//     (trapGuess) is never forwarded and bans the key at once.
//   - A key the gate would refuse now (refused: a ban made, or a CrowdSec
//     decision or a [geo] deny rule that came, since the session began) is
//     answered 421 and the session ends; checked first, before any budget.
//   - In observe mode both are forwarded all the same, and counted.
func (s *session) guess(cmd ftpproto.Command, user string) bool {
	if s.refused(cmd.Verb) {
		return false
	}
	named := user
	if cmd.Verb != "PASS" {
		named = "" // ACCT: the address's budget alone
	}
	now := time.Now()
	if named != "" && s.srv.users.Trap(now, named, s.srv.lim.Key(s.peer.Addr())) {
		if refused, goOn := s.trapGuess(now, named); refused {
			return goOn
		}
	}
	a, v := s.srv.limiterFor(s.peer.Addr()).Begin(now, s.peer.Addr(), named, s.srv.users)
	if v.Busy {
		a, v = s.awaitPlace(a, v)
		now = time.Now()
	}
	if v.UserRefused && v.User.Busy && !v.User.TooManyNames {
		a, v = s.awaitUserPlace(a, v, named)
		now = time.Now()
	}
	switch {
	case v.OK():
	case v.UserRefused && v.User.Busy && !v.User.TooManyNames:
		if s.srv.enforce(s.log, "attempts in flight", "cmd", cmd.Verb, "user", user) {
			a.Settle(now, limiter.OutcomeRelease)
			s.finish(421, "Too many logins in progress for this account; try again later.")
			return false
		}
	case v.UserRefused:
		reason := "username throttled"
		if v.User.TooManyNames {
			reason = "too many usernames from key"
		}
		if s.srv.enforce(s.log, reason, "user", user, "user_remaining", v.User.Remaining) {
			if !v.User.TooManyNames {
				return s.pauseGuess(a, user, v.User.RetryIn)
			}
			return s.refuseGuess(a, user, reason)
		}
	default:
		if v.NewBan {
			s.logBan(v.Decision, user)
		}
		if refused := s.refusedByBudget(cmd.Verb, user, v.Decision, v.Wait != nil); refused {
			a.Settle(now, limiter.OutcomeRelease) // it holds nothing
			return false
		}
	}
	s.authAlone = true
	if v.OK() {
		// Not shed while the daemon weighs it (capacity.go). Only a guess
		// the budgets allow: in observe mode the others are forwarded as
		// well, and would let one key hold the whole table unsheddable.
		s.srv.guessing(s, true)
	}
	return s.forward(cmd, cmd.Verb, &ticket{user: user, attempt: a})
}

// refused asks every ban source about the peer before a login command
// (verb) is forwarded — the limiter's bans, its external source (CrowdSec
// decisions), the gate hook ([geo] rules) — as the gate asked at connect:
// a ban or a rule may have come since, and the key's own budget (or a
// [geo] budget rule's) knows nothing of the others. A refused key gets the
// 421 a session ended by a ban gets, and the session ends; in observe mode
// it goes on. It reports whether the command was refused.
func (s *session) refused(verb string) bool {
	e := s.srv.refusal(time.Now(), s.peer.Addr()) // sessions_ban.go
	if e == nil || !s.srv.enforce(s.log, e.reason, e.with("cmd", verb)...) {
		return false
	}
	s.finish(421, e.text)
	return true
}

// trapGuess handles a PASS for a trap username (UserConfig.TrapUsernames)
// from a key that is not known-good for it: the key is banned at once, an
// offence like a spent budget (escalated, Reason "trap"; an allowlisted key
// is not banned), and the guess is never forwarded: the client gets what a
// wrong password gets, "530 Login incorrect.", then 421 as any session
// banned mid-way. In observe mode the ban is made but the guess goes on as
// any other (refused false). It reports whether the guess was refused and,
// if so, whether the session goes on.
func (s *session) trapGuess(now time.Time, user string) (refused, goOn bool) {
	key := s.srv.lim.Key(s.peer.Addr())
	s.banning.Store(true) // the ban only marks this session: it ends after its 530 (sessions_ban.go)
	ban, err := s.srv.lim.BanKey(now, key, 0, limiter.ReasonTrap)
	s.banning.Store(false)
	allowlisted := errors.Is(err, limiter.ErrAllowlisted)
	switch {
	case allowlisted:
		s.log.Warn("trap username from an allowlisted address: not banned", "user", user, "key", key.String())
	case err != nil && !errors.Is(err, limiter.ErrStore):
		s.log.Error("trap username: ban failed", "user", user, "key", key.String(), "err", err)
	default: // a store error leaves the ban in force, not saved: logged by the limiter's counters
		s.logBan(limiter.Decision{Key: key, Ban: ban}, user)
	}
	if !s.srv.enforce(s.log, "trap username", "user", user, "key", key.String()) {
		return false, true
	}
	s.srv.obs.Login(false)
	s.awaitReplies(2 * time.Second)
	if !s.replyLocal(ftpproto.NewReply(530, "Login incorrect.")) || s.closing.Load() {
		return true, false
	}
	if allowlisted {
		return true, true
	}
	s.finish(421, "Too many failed logins from your address; closing control connection.")
	return true, false
}

// refusedByBudget reports whether a guess the address's budget refused
// (d; queued: a Busy guess that waited in its key's queue until
// login_timeout, rather than one the full queue turned away) is refused
// (421, the session ends), or, in observe mode, forwarded.
func (s *session) refusedByBudget(verb, user string, d limiter.Decision, queued bool) bool {
	var refused bool
	switch {
	case d.StoreDown:
		if refused = s.srv.enforce(s.log, "store unreachable (fail_closed)", "cmd", verb); refused {
			s.finish(421, "Service temporarily unavailable, try again later.")
		}
	case d.Busy && !queued:
		if refused = s.srv.enforce(s.log, "too many logins waiting", "cmd", verb, "key", d.Key.String()); refused {
			s.finish(421, "Too many logins waiting from your address; try again later.")
		}
	case d.Busy:
		if refused = s.srv.enforce(s.log, "attempts in flight", "cmd", verb, "key", d.Key.String()); refused {
			s.finish(421, "Too many logins in progress from your address; try again later.")
		}
	case !d.NewBan && d.Ban.Key.IsValid(): // banned before this guess (since refused asked)
		e := banEnding(d.Ban.Key, d.Ban.Reason)
		if refused = s.srv.enforce(s.log, e.reason, e.with("cmd", verb)...); refused {
			s.finish(421, e.text)
		}
	default:
		if refused = s.srv.enforce(s.log, "budget exhausted", "cmd", verb, "user", user, "key", d.Key.String()); refused {
			s.finish(421, "Too many failed logins from your address; try again later.")
		}
	}
	return refused
}

// placePoll is how often a guess waiting for a place of its key tries
// again without a signal: places freed by other instances on a shared
// store, or by the budget refilling, signal nothing here.
const placePoll = 200 * time.Millisecond

// awaitPlace waits while the guess a (verdict v) is Busy — every token of
// its key held by guesses in flight — in its key's FIFO queue: until the
// limiter signals that an attempt settled (or a ban, a reload) or
// placePoll has passed, then it tries again (docs/design.md rule 3). It
// stops at the login deadline (login_timeout from the session's start) or
// when the session ends, and returns the last attempt and verdict: a guess
// still Busy is refused by the caller. A guess the full queue turned away
// (v.Wait nil) does not wait; nor does any in observe mode, where Busy
// guesses are forwarded at once.
func (s *session) awaitPlace(a *limiter.Attempt, v limiter.Verdict) (*limiter.Attempt, limiter.Verdict) {
	cfg := s.srv.config()
	if v.Wait == nil {
		return a, v
	}
	if cfg.Observe {
		a.StopWaiting()
		return a, v
	}
	start := time.Now()
	deadline := time.NewTimer(s.start.Add(cfg.LoginTimeout).Sub(start))
	defer deadline.Stop()
	poll := time.NewTicker(placePoll)
	defer poll.Stop()
	for v.Busy && v.Wait != nil {
		select {
		case <-v.Wait:
		case <-poll.C:
		case <-deadline.C:
			return a, v
		case <-s.done:
			return a, v
		}
		a, v = a.Retry(time.Now())
	}
	s.log.Debug("waited for a place", "key", v.Key.String(), "for", time.Since(start), "ok", v.OK())
	return a, v
}

// awaitUserPlace makes a guess whose username's budget has places left,
// all held by guesses in flight (UserDecision.Busy), wait for one: it asks
// again every placePoll, at most until login_timeout, the session's end,
// or the budget is spent (then the caller answers as for a spent budget).
// Many new addresses logging in to one account at once (a fleet deployed
// together) wait their turn instead of being told the name is paused.
// The guess holds no place meanwhile. Not in observe mode: the guess is
// forwarded all the same.
func (s *session) awaitUserPlace(a *limiter.Attempt, v limiter.Verdict, named string) (*limiter.Attempt, limiter.Verdict) {
	cfg := s.srv.config()
	if cfg.Observe {
		return a, v
	}
	start := time.Now()
	deadline := time.NewTimer(s.start.Add(cfg.LoginTimeout).Sub(start))
	defer deadline.Stop()
	poll := time.NewTicker(placePoll)
	defer poll.Stop()
	for v.UserRefused && v.User.Busy && !v.User.TooManyNames {
		select {
		case <-poll.C:
		case <-deadline.C:
			return a, v
		case <-s.done:
			return a, v
		}
		a.Settle(time.Now(), limiter.OutcomeRelease) // it holds nothing
		a, v = s.srv.limiterFor(s.peer.Addr()).Begin(time.Now(), s.peer.Addr(), named, s.srv.users)
		if v.Busy {
			a, v = s.awaitPlace(a, v)
		}
	}
	s.log.Debug("waited for a place of the username", "for", time.Since(start), "ok", v.OK())
	return a, v
}

// pauseGuess answers a PASS for a username whose budget is spent, from a
// key that is not known-good for it: 530 with the truth (never "Login
// incorrect": the password was not checked), after the replies before it.
// The attempt is released: the refused address keeps its budget and is
// never banned or delayed for it (docs/design.md rule 3). It reports
// whether the session goes on.
func (s *session) pauseGuess(a *limiter.Attempt, user string, retry time.Duration) bool {
	a.Settle(time.Now(), limiter.OutcomeRelease)
	s.awaitReplies(2 * time.Second)
	return s.replyLocal(ftpproto.NewReply(530, pausedText(user, retry))) && !s.closing.Load()
}

// pausedText is the reply to a PASS pauseGuess refuses. The username is
// the client's own, bounded to 32 characters, printable and without
// quotes; retry is rounded up to the minute.
func pausedText(user string, retry time.Duration) string {
	var b strings.Builder
	n := 0
	for _, r := range user {
		if n == 32 {
			b.WriteString("…")
			break
		}
		if r == utf8.RuneError || !unicode.IsPrint(r) || r == '"' || r == '\\' {
			r = '?'
		}
		b.WriteRune(r)
		n++
	}
	when := "in under a minute"
	if retry >= time.Minute {
		m := int64((retry + time.Minute - 1) / time.Minute)
		if m >= 60 {
			when = fmt.Sprintf("in about %dh%02dm", m/60, m%60)
		} else {
			when = fmt.Sprintf("in about %dm", m)
		}
	}
	return fmt.Sprintf("Logins to \"%s\" from new addresses are paused after repeated failed logins elsewhere; retry %s.", b.String(), when)
}

// refuseGuess answers a PASS from a key that tried too many usernames:
// counted as a failure, then 530 after the replies before it and the tarpit (held even
// for an allowlisted key: the username is what is guessed), or 421 if the
// key is banned now. It reports whether the session goes on.
func (s *session) refuseGuess(a *limiter.Attempt, user, reason string) bool {
	d := a.Settle(time.Now(), limiter.OutcomeFailure)
	_, banned := s.failed("PASS", user, 530, reason, d)
	if banned {
		s.finish(421, "Too many failed logins from your address; closing control connection.")
		return false
	}
	s.awaitReplies(2 * time.Second)
	d.Allowlisted = false
	if hold := s.srv.lim.Tarpit(d); hold > 0 {
		s.sleep(hold)
	}
	return s.replyLocal(ftpproto.NewReply(530, "Login incorrect.")) && !s.closing.Load()
}

// awaitAlone waits until every command forwarded so far has its reply, so
// that a USER, PASS or ACCT goes to the daemon alone and the reply that
// settles it is its own, whatever a daemon leaves unanswered or answers
// twice (the verb table's Fits catches the latter). Pipelining clients
// lose one round trip to the daemon per login step. If the replies do not
// come within login_timeout the session ends with 421 (the attempts
// waiting are settled as failures). Only relayCommands calls it.
func (s *session) awaitAlone() bool {
	d := s.srv.config().LoginTimeout
	if s.awaitQueue(0, d) {
		s.authAlone = false
		return true
	}
	s.mu.Lock()
	ended := s.replyDone // the daemon left: the session ends anyway
	s.mu.Unlock()
	if !ended && !s.closing.Load() {
		s.srv.reject(s.log, "reply out of step", "waited", d)
		s.replyFinal(421, "Service not available: the FTP server did not answer; closing.")
	}
	return false
}

// settleLogin is the login policy's reading of the final reply r to a
// login command (r.Code 0: none came, the session ended first). It settles
// the entry's attempt and reports how long to hold the reply (tarpit) and
// whether the key is banned now (the session then ends with 421 after the
// reply). Called without the session's lock.
func (s *session) settleLogin(verb string, t *ticket, r ftpproto.Reply) (hold time.Duration, banned bool) {
	now := time.Now()
	s.banning.Store(true) // a ban now only marks the session: it ends after this reply (sessions_ban.go)
	defer s.banning.Store(false)
	if verb == "USER" {
		s.mu.Lock()
		s.acctAsked = r.Code == 332
		s.userOK = r.Code == 331 || r.Code == 332 || r.Code == 230
		if r.Code != 0 {
			s.user = t.user
		}
		s.mu.Unlock()
		switch {
		case r.Code == 230: // no password asked (e.g. anonymous)
			s.loggedInNow(t.user)
		case r.Code == 530 && s.srv.lim.CountsUserRejects():
			// A user list deny, an unknown user on some daemons: with no
			// attempt taken before it, a penalty.
			return s.failed(verb, t.user, r.Code, "user rejected", s.srv.lim.Penalize(now, s.peer.Addr()))
		}
		return 0, false
	}
	s.mu.Lock()
	s.acctAsked = verb == "PASS" && r.Code == 332
	s.mu.Unlock()
	defer s.srv.guessing(s, false) // sheddable again unless it logged in
	switch {
	case r.Code == 0:
		_, banned = s.failed(verb, t.user, 0, "no reply", t.attempt.Settle(now, limiter.OutcomeFailure))
		return 0, banned // the session is over: nothing to hold
	case r.Code == 230, r.Code == 202 && verb == "PASS":
		t.attempt.Settle(now, limiter.OutcomeSuccess)
		s.loggedInNow(t.user)
	case r.Code < 400: // 332: account needed, ACCT is counted itself; 202 to ACCT: no login
		t.attempt.Settle(now, limiter.OutcomeRelease)
	case refusedAfterGoodPassword(r): // proftpd full: see quirks.go
		t.attempt.Settle(now, limiter.OutcomeRelease)
		s.log.Info("login refused by the daemon after the password", "user", t.user, "code", r.Code, "reply", logSafe(r.Text()))
	default:
		return s.failed(verb, t.user, r.Code, "rejected", t.attempt.Settle(now, limiter.OutcomeFailure))
	}
	return 0, false
}

// loggedInNow records the session's login.
func (s *session) loggedInNow(user string) {
	if !s.loggedIn.Swap(true) {
		s.log.Info("login ok", "user", user)
		s.srv.obs.Login(true)
		s.srv.loginDone(s) // capacity.go: no longer sheddable; the key is known-good
	}
	s.touch()
	s.armClientDeadline()
}

// failed records a failed login whose Decision is d (code 0: no reply
// came) and reports whether the key is now banned — never in observe mode,
// where the ban is logged as a would-be refusal — and how long to hold the
// reply: the limiter's tarpit, none in observe mode.
func (s *session) failed(verb, user string, code int, why string, d limiter.Decision) (hold time.Duration, banned bool) {
	s.log.Warn("login failed", "user", user, "cmd", verb, "code", code, "why", why,
		"remaining", d.Remaining, "allowlisted", d.Allowlisted)
	s.srv.obs.Login(false)
	if d.NewBan {
		s.logBan(d, user)
	}
	if s.srv.config().Observe {
		if !d.Allowed && code != 0 {
			s.log.Warn("observe: would reject", "reason", "banned", "cmd", verb)
		}
		return 0, false
	}
	return s.srv.lim.Tarpit(d), !d.Allowed
}

func (s *session) logBan(d limiter.Decision, user string) {
	s.srv.obs.Ban()
	s.log.Warn("ban", "key", d.Key.String(), "user", user, "until", d.Ban.Until.Format(time.RFC3339),
		"for", time.Until(d.Ban.Until).Round(time.Second), "count", d.Ban.Count, "reason", d.Ban.Reason)
}

// settleEnd settles, as the session ends, the login entries left without
// a reply.
func (s *session) settleEnd(acts []pairing.Action[*ticket]) {
	for _, a := range acts {
		if a.Op == pairing.Settle {
			s.settleLogin(a.Verb, a.Data, ftpproto.Reply{})
		}
	}
}
