package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// maxReplyLine bounds one line of a backend reply (the whole reply is
// bounded by Config.MaxReply): a broken or hostile daemon cannot make the
// proxy buffer without end.
const maxReplyLine = 16 << 10

// maxPending bounds the commands forwarded and not yet answered. A client
// that pipelines without reading replies waits for room (and is closed if
// none comes within DataTimeout), so it cannot make the queue grow.
const maxPending = 128

// pending is a command forwarded to the backend and awaiting its final reply,
// or a reply of the proxy's own waiting for its turn.
type pending struct {
	verb    string // the forwarded verb; "" for the greeting
	counted bool   // an Attempt is held for it (PASS, ACCT) and must be settled
	user    string // the username a USER named or a PASS was for
	// userHeld: the PASS holds a place in user's budget (Users.Attempt),
	// released when it is settled.
	userHeld bool
	local    *ftpproto.Reply // non-nil: the proxy's own reply, written in order
}

// session is one client connection and its backend connection.
//
// Two goroutines run a session: relayCommands reads the client and writes
// the backend; relayReplies reads the backend and writes the client. A FIFO
// of pending commands pairs each reply with the command it answers, so
// pipelined commands are each seen and each attempt is settled once.
type session struct {
	srv     *Server
	raw     net.Conn // the client's socket (behind go-proxyproto, maybe)
	client  net.Conn // raw, or the TLS conn over it after AUTH TLS; guarded by mu once TLS can start
	backend net.Conn
	peer    netip.AddrPort // the client's true address
	ends    endpoints
	log     *slog.Logger
	start   time.Time

	loggedIn  atomic.Bool
	transfers atomic.Int32
	closing   atomic.Bool
	tlsOn     atomic.Bool // the control connection is TLS
	btls      *tls.Config // FTPS to the daemon, with this session's cache; nil: plain
	// pregreeted is the daemon's greeting, already read when FTPS to the
	// daemon was set up; relayed first.
	pregreeted *ftpproto.Reply
	protP      atomic.Bool // PROT P: data connections with the client are TLS
	clientEOF  atomic.Bool
	closeOnce  sync.Once
	done       chan struct{}  // closed by abort
	data       sync.WaitGroup // data-connection goroutines

	// mu guards the fields below and serialises writes to the client.
	mu        sync.Mutex
	queue     []pending
	user      string
	lastCode  int
	wbuf      []byte
	drained   chan struct{} // see awaitQueue
	drainAt   int           // awaitQueue's limit
	replyDone bool          // relayReplies has ended
	acctAsked bool          // the daemon's latest reply to USER or PASS was 332
	userOK    bool          // the daemon accepted the latest USER (331, 332, 230): user is its name

	// Owned by relayCommands alone.
	first   firstBytes // the client's reader, remembering its first bytes
	cr      *ftpproto.CommandReader
	preauth int
	epsvAll bool
	cbuf    []byte
	// authAlone: a USER, PASS or ACCT was forwarded; the next command
	// waits for its reply (see awaitAlone).
	authAlone bool

	xfer     dataGate   // data legs still relaying to the client (quirks.go)
	dmu      sync.Mutex // guards the data legs
	dataLn   net.Listener
	dataConn map[net.Conn]struct{}
	dataDone bool // the session ended: no new data legs
}

func newSession(srv *Server, raw, client, backend net.Conn, e endpoints, log *slog.Logger) *session {
	return &session{
		srv:      srv,
		raw:      raw,
		client:   client,
		backend:  backend,
		peer:     e.peer,
		ends:     e,
		log:      log,
		start:    time.Now(),
		queue:    []pending{{verb: ""}}, // the greeting comes first
		first:    firstBytes{r: client},
		done:     make(chan struct{}),
		dataConn: make(map[net.Conn]struct{}),
	}
}

// run relays the session until either side ends it, then settles every
// attempt still awaiting a reply as a failure.
func (s *session) run() {
	if s.pregreeted != nil {
		s.mu.Lock()
		s.writeLocked(*s.pregreeted)
		s.mu.Unlock()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.relayReplies()
		s.mu.Lock()
		s.replyDone = true
		s.signalDrainedLocked()
		s.mu.Unlock()
	}()
	s.relayCommands()
	<-done
	s.abort()
	s.data.Wait()
	s.settle()
	s.mu.Lock()
	user := s.user
	s.mu.Unlock()
	s.log.Info("session end", "user", user, "logged_in", s.loggedIn.Load(),
		"duration", time.Since(s.start).Round(time.Millisecond))
}

// abort closes every connection of the session; both relay goroutines then
// end. Safe to call many times and from any goroutine.
func (s *session) abort() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.closing.Store(true)
		s.raw.Close()
		s.backend.Close()
		s.closeData(true)
	})
}

// settle counts each attempt left without a final reply (hang-up, backend
// close, timeout) as a failure: DESIGN rule 1.
func (s *session) settle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, p := range s.queue {
		if p.counted {
			if u := s.srv.users; u != nil && p.verb == "PASS" {
				u.Failure(now, p.user, s.srv.lim.Key(s.peer.Addr()))
			}
			s.failedLocked(now, p.verb, 0, "no reply")
		}
		if p.userHeld {
			s.srv.users.Release(p.user)
		}
	}
	s.queue = nil
}

// ---- client → backend ----

func (s *session) relayCommands() {
	s.cr = ftpproto.NewCommandReader(&s.first, s.srv.config().MaxLine)
	for {
		s.armClientDeadline()
		cmd, err := s.cr.ReadCommand()
		if err != nil {
			if s.commandError(err) {
				continue
			}
			break
		}
		if !s.command(cmd) {
			break
		}
	}
	if s.closing.Load() {
		s.linger()
	}
}

// armClientDeadline sets the client's read deadline: the login deadline
// before login, none while a data transfer runs, else the idle timeout.
func (s *session) armClientDeadline() {
	cfg := s.srv.config()
	var d time.Time
	switch {
	case !s.loggedIn.Load():
		d = s.start.Add(cfg.LoginTimeout)
	case s.transfers.Load() > 0:
	default:
		d = time.Now().Add(cfg.IdleTimeout)
	}
	s.raw.SetReadDeadline(d)
}

// commandError handles a failed command read and reports whether the
// session goes on.
func (s *session) commandError(err error) bool {
	cfg := s.srv.config()
	switch {
	case errors.Is(err, ftpproto.ErrBadLine):
		if s.first.isProxyV2() {
			s.srv.reject(s.log, "PROXY header from untrusted source")
			s.finish(421, "PROXY protocol not accepted from your address.")
			return false
		}
		s.log.Info("bad command", "err", err)
		if !s.countPreauth() {
			return false
		}
		s.replyLocal(ftpproto.NewReply(500, "Syntax error: invalid byte in command line."))
		return true
	case errors.Is(err, ftpproto.ErrLineTooLong):
		s.srv.reject(s.log, "line too long", "max_line", cfg.MaxLine)
		s.finish(500, "Command line too long; closing control connection.")
		return false
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		s.hangUp()
		return false
	case errors.Is(err, os.ErrDeadlineExceeded):
		if s.closing.Load() {
			return false
		}
		if s.loggedIn.Load() {
			if s.transfers.Load() > 0 {
				return true // a transfer began while we waited
			}
			s.log.Info("timeout", "kind", "idle", "after", cfg.IdleTimeout)
			s.finish(421, "Idle timeout; closing control connection.")
			return false
		}
		s.log.Info("timeout", "kind", "login", "after", cfg.LoginTimeout)
		s.finish(421, "Login timeout; closing control connection.")
		return false
	default:
		if !s.closing.Load() && !errors.Is(err, net.ErrClosed) {
			s.log.Info("client read error", "err", err)
		}
		s.abort()
		return false
	}
}

// hangUp handles the client's end of input. Replies to commands already
// forwarded still come back (they settle attempts), then the session ends.
func (s *session) hangUp() {
	s.clientEOF.Store(true)
	s.mu.Lock()
	waiting := len(s.queue) > 0
	s.mu.Unlock()
	if !waiting {
		s.abort()
		return
	}
	if tc, ok := s.backend.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	s.backend.SetReadDeadline(time.Now().Add(s.srv.config().DialTimeout))
}

// countPreauth counts a command before login; over the cap, the session
// is closed.
func (s *session) countPreauth() bool {
	if s.loggedIn.Load() {
		return true
	}
	s.preauth++
	if max := s.srv.config().MaxPreauthCommands; s.preauth > max {
		s.srv.reject(s.log, "max_preauth_commands", "max", max)
		s.finish(421, "Too many commands before login; closing control connection.")
		return false
	}
	return true
}

// command decides what to do with one parsed client command and reports
// whether the session goes on.
func (s *session) command(cmd ftpproto.Command) bool {
	if s.closing.Load() {
		return false
	}
	if !s.countPreauth() {
		return false
	}
	s.log.Debug("command", "cmd", cmd.String())
	if !knownShape(cmd.Verb) {
		// Not forwarded: a daemon may answer such a verb with nothing
		// (pure-ftpd), and every later reply would answer the command
		// before its own.
		return s.replyLocal(ftpproto.NewReply(500, "Syntax error, command unrecognized."))
	}
	if s.authAlone {
		if !s.awaitAlone() {
			return false
		}
		s.authAlone = false
	}
	if !s.loggedIn.Load() && !preLoginVerb(cmd.Verb) {
		// What a daemon answers before login is its own business (proftpd
		// answers SITE CHMOD twice); it gets only what logging in needs.
		return s.replyLocal(ftpproto.NewReply(530, "Please log in with USER and PASS first."))
	}
	if cmd.Verb == "USER" || cmd.Verb == "PASS" || cmd.Verb == "ACCT" {
		if s.srv.config().RequireTLS && !s.tlsOn.Load() {
			return s.replyLocal(ftpproto.NewReply(530, "TLS required: use AUTH TLS before logging in."))
		}
	}
	switch cmd.Verb {
	case "USER":
		name := strings.TrimSpace(cmd.Arg)
		switch {
		case s.loggedIn.Load():
			// No daemon here lets a session log in again (vsftpd would
			// answer a PASS with "230 Already logged in.", a login of
			// nobody); not forwarded.
			return s.replyLocal(ftpproto.NewReply(530, "Can't change to another user."))
		case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			// pure-ftpd reads control bytes as "_": one account under
			// many names, each with a budget of its own.
			return s.replyLocal(ftpproto.NewReply(501, "Syntax error: control characters in the username."))
		}
		s.mu.Lock()
		s.acctAsked, s.userOK = false, false
		s.mu.Unlock()
		// USER carries no secret: it takes no place in the budget (a
		// pipelined USER+PASS must not hold the token its PASS needs), but
		// a banned key goes no further, and a 530 to it is penalised. The
		// name becomes the session's user only when the daemon accepts it
		// (proftpd keeps the earlier name after refusing a USER).
		if d := s.srv.lim.Check(time.Now(), s.peer.Addr()); !d.Allowed && !d.StoreDown &&
			s.srv.enforce(s.log, "banned", "cmd", cmd.Verb, "key", d.Key.String()) {
			s.finish(421, "Too many failed logins from your address; try again later.")
			return false
		}
		s.authAlone = true
		return s.forward(cmd, pending{verb: cmd.Verb, user: logSafe(name)})
	case "PASS", "ACCT":
		if !s.awaitAlone() {
			return false
		}
		s.mu.Lock() // user was set by the reply to USER, which awaitAlone waited for
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
		var held bool
		if cmd.Verb == "PASS" {
			var refused bool
			if refused, held = s.refusedForUser(user); refused {
				return !s.closing.Load()
			}
		}
		if !s.attempt(cmd.Verb) {
			if held {
				s.srv.users.Release(user)
			}
			return false
		}
		s.authAlone = true
		return s.forward(cmd, pending{verb: cmd.Verb, counted: true, user: user, userHeld: held})
	case "AUTH":
		return s.startTLS(cmd)
	case "PBSZ", "PROT", "CCC":
		return s.tlsCommand(cmd)
	case "REIN":
		return s.replyLocal(ftpproto.NewReply(502, "REIN not implemented."))
	case "PORT", "EPRT":
		return s.activeMode(cmd)
	case "PASV":
		if s.epsvAll {
			return s.replyLocal(ftpproto.NewReply(503, "EPSV ALL in effect; PASV refused."))
		}
		if !s.announceAddr().Is4() {
			return s.replyLocal(ftpproto.NewReply(500, "PASV needs IPv4; use EPSV."))
		}
		return s.forward(ftpproto.Command{Verb: "PASV"}, pending{verb: "PASV"})
	case "EPSV":
		switch strings.ToUpper(strings.TrimSpace(cmd.Arg)) {
		case "ALL":
			s.epsvAll = true
			return s.forward(ftpproto.Command{Verb: "EPSV", Arg: "ALL"}, pending{verb: "EPSV ALL"})
		case "", "1", "2":
			// The proxy chooses the backend's family; the client's
			// family is the one it reached us with.
			return s.forward(ftpproto.Command{Verb: "EPSV"}, pending{verb: "EPSV"})
		default:
			return s.replyLocal(ftpproto.NewReply(501, "Syntax error in EPSV argument."))
		}
	case "ABOR":
		s.closeData(false)
	case "PROXY":
		// A PROXY protocol header from a source not trusted to send one:
		// an attempt to choose its own address.
		s.srv.reject(s.log, "PROXY header from untrusted source")
		s.finish(421, "PROXY protocol not accepted from your address.")
		return false
	}
	return s.forward(cmd, pending{verb: cmd.Verb})
}

// awaitAlone waits until every command forwarded so far has its reply, so
// that a USER, PASS or ACCT goes to the daemon alone and the reply that
// settles it is its own, whatever a daemon leaves unanswered or answers
// twice (replyFits catches the latter). Pipelining clients lose one round
// trip to the daemon per login step. If the replies do not come within
// login_timeout the session ends with 421 (the attempts waiting are
// settled as failures). Only relayCommands calls it.
func (s *session) awaitAlone() bool {
	d := s.srv.config().LoginTimeout
	if s.awaitQueue(0, d) {
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

// refusedForUser applies the per-username budgets before a PASS for user: a
// username whose budget is spent or held by guesses in flight (distributed
// guessing), or one more name than a key may try (spraying), is answered
// 530 by the proxy after the tarpit delay, never forwarded, and still
// costs the key a token. It reports whether the PASS was answered here,
// and whether it holds a place in the username's budget (to release when
// it is settled).
func (s *session) refusedForUser(user string) (refused, held bool) {
	u := s.srv.users
	if u == nil {
		return false, false
	}
	now := time.Now()
	key := s.srv.lim.Key(s.peer.Addr())
	ud := u.Attempt(now, user, key)
	if !ud.Throttled && !ud.TooManyNames {
		return false, ud.Held
	}
	reason := "user budget spent"
	if ud.TooManyNames {
		reason = "too many usernames from key"
	}
	if !s.srv.enforce(s.log, reason, "user", user, "user_remaining", ud.Remaining) {
		return false, false // observe mode: forwarded, counted on its reply
	}
	u.Failure(now, user, key)
	s.mu.Lock()
	banned, hold := s.failedOrPenalizedLocked(now, "PASS", 530, reason, true)
	banned = banned && !s.srv.config().Observe
	s.mu.Unlock()
	if banned {
		s.finish(421, "Too many failed logins from your address; closing control connection.")
		return true, false
	}
	s.awaitReplies(2 * time.Second)
	if hold = max(hold, s.srv.config().FailureDelay); hold > 0 {
		t := time.NewTimer(hold)
		select {
		case <-t.C:
		case <-s.done:
		}
		t.Stop()
	}
	s.replyLocal(ftpproto.NewReply(530, "Login incorrect."))
	return true, false
}

// attempt takes a place in the peer's budget before a login command is
// forwarded. When none is left the command is never forwarded: the client
// gets 421 and the session ends (DESIGN rule 3).
func (s *session) attempt(verb string) bool {
	d := s.srv.lim.Attempt(time.Now(), s.peer.Addr())
	if d.Allowed {
		return true
	}
	if d.NewBan {
		s.mu.Lock()
		s.logBanLocked(d)
		s.mu.Unlock()
	}
	switch {
	case d.StoreDown:
		if s.srv.enforce(s.log, "store unreachable (fail_closed)", "cmd", verb) {
			s.finish(421, "Service temporarily unavailable, try again later.")
			return false
		}
	case d.Busy:
		if s.srv.enforce(s.log, "attempts in flight", "cmd", verb, "key", d.Key.String()) {
			s.finish(421, "Too many logins in progress from your address; try again later.")
			return false
		}
	default:
		if s.srv.enforce(s.log, "budget exhausted", "cmd", verb, "user", s.user, "key", d.Key.String()) {
			s.finish(421, "Too many failed logins from your address; try again later.")
			return false
		}
	}
	return true // observe mode: forwarded all the same, and still counted
}

// forward queues p and sends cmd's canonical form to the backend: never
// the client's raw bytes (DESIGN: one canonical command per parsed line).
func (s *session) forward(cmd ftpproto.Command, p pending) bool {
	if !s.awaitQueue(maxPending-1, s.srv.config().DataTimeout) {
		if !s.closing.Load() {
			s.srv.reject(s.log, "replies not read", "pending", maxPending)
			s.replyFinal(421, "Too many commands awaiting replies; closing control connection.")
		}
		return false
	}
	s.mu.Lock()
	s.queue = append(s.queue, p)
	s.mu.Unlock()
	s.cbuf = cmd.AppendWire(s.cbuf[:0])
	s.backend.SetWriteDeadline(time.Now().Add(s.srv.config().DataTimeout))
	if _, err := s.backend.Write(s.cbuf); err != nil {
		if !s.closing.Load() {
			s.log.Warn("backend write failed", "err", err)
			s.replyFinal(421, "Service not available, connection to the FTP server lost.")
		}
		s.abort()
		return false
	}
	return true
}

// replyLocal answers the client with a reply of the proxy's own, after the
// replies to commands forwarded before it.
func (s *session) replyLocal(r ftpproto.Reply) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return s.writeLocked(r)
	}
	s.queue = append(s.queue, pending{local: &r})
	return true
}

// finish is replyFinal after the replies to commands already forwarded
// (waiting 2 s at most). Only relayCommands calls it.
func (s *session) finish(code int, text string) {
	s.awaitReplies(2 * time.Second)
	s.replyFinal(code, text)
}

// replyFinal writes a last reply at once, out of turn, and ends the
// session: the backend is closed now, the client when relayCommands has
// lingered (see linger).
func (s *session) replyFinal(code int, text string) {
	s.mu.Lock()
	s.writeLocked(ftpproto.NewReply(code, text))
	s.closing.Store(true)
	s.mu.Unlock()
	s.backend.Close()
}

// awaitReplies waits, at most for d, until every command forwarded so far
// has its final reply, so that a last reply of the proxy's own comes after
// them. Only relayCommands calls it.
func (s *session) awaitReplies(d time.Duration) { s.awaitQueue(0, d) }

// awaitQueue waits, at most for d, until at most max commands await their
// replies, and reports whether that is so. Only relayCommands calls it.
func (s *session) awaitQueue(max int, d time.Duration) bool {
	s.mu.Lock()
	if len(s.queue) <= max || s.replyDone {
		ok := len(s.queue) <= max
		s.mu.Unlock()
		return ok
	}
	ch := make(chan struct{})
	s.drained, s.drainAt = ch, max
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) <= max
}

// signalDrainedLocked wakes awaitReplies when the queue is empty or no
// more replies will come.
func (s *session) signalDrainedLocked() {
	if s.drained != nil && (len(s.queue) <= s.drainAt || s.replyDone) {
		close(s.drained)
		s.drained = nil
	}
}

// linger half-closes the client and discards what it still sends for a
// moment before the close, so that the final reply is read rather than lost
// to the reset that closing a socket with unread input causes.
func (s *session) linger() {
	closeWrite(s.client)
	s.raw.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, s.client, 1<<20)
	s.abort()
}

// writeLocked writes r to the client within a bounded time, so a client
// that never reads cannot hold the session's goroutines.
func (s *session) writeLocked(r ftpproto.Reply) bool {
	if s.closing.Load() {
		return false
	}
	s.wbuf = r.AppendWire(s.wbuf[:0])
	s.client.SetWriteDeadline(time.Now().Add(s.srv.config().DataTimeout))
	if _, err := s.client.Write(s.wbuf); err != nil {
		s.log.Info("client write failed", "err", err)
		s.abort()
		return false
	}
	s.lastCode = r.Code
	return true
}

// ---- backend → client ----

func (s *session) relayReplies() {
	cfg := s.srv.config()
	rr := ftpproto.NewReplyReader(s.backend, maxReplyLine, cfg.MaxReply)
	// A daemon that accepts and never greets is given dial_timeout.
	greeted := s.pregreeted != nil
	if !greeted {
		s.backend.SetReadDeadline(time.Now().Add(cfg.DialTimeout))
	}
	for {
		r, err := rr.ReadReply()
		if err != nil {
			if !greeted && errors.Is(err, os.ErrDeadlineExceeded) && !s.clientEOF.Load() && !s.closing.Load() {
				s.log.Error("backend did not greet", "after", cfg.DialTimeout)
				s.replyFinal(421, "Service not available, the FTP server did not answer.")
				s.abort()
				return
			}
			s.backendError(err)
			return
		}
		if !greeted && r.Code >= 200 {
			greeted = true
			if !s.clientEOF.Load() {
				s.backend.SetReadDeadline(time.Time{})
			}
		}
		if !s.reply(r) {
			s.abort()
			return
		}
	}
}

func (s *session) backendError(err error) {
	if s.closing.Load() {
		return // whoever began closing ends the session (see linger)
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		s.mu.Lock()
		last := s.lastCode
		s.mu.Unlock()
		s.log.Info("backend closed the connection", "last_reply", last)
		if last != 421 && last != 221 {
			s.replyFinal(421, "Service not available, the FTP server closed the connection.")
		}
	case errors.Is(err, os.ErrDeadlineExceeded) && s.clientEOF.Load():
		// The client had gone; the backend did not answer in time.
	default:
		var pe ftpproto.ProtocolError
		if errors.Is(err, ftpproto.ErrReplyTooLong) || errors.Is(err, ftpproto.ErrLineTooLong) || errors.As(err, &pe) {
			s.log.Error("invalid reply from backend", "err", err)
			s.replyFinal(421, "Service not available, invalid reply from the FTP server.")
		} else {
			s.log.Info("backend read error", "err", err)
		}
	}
	s.abort()
}

// reply relays one backend reply, settling the command it answers. It
// reports whether the session goes on.
func (s *session) reply(r ftpproto.Reply) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		// Unsolicited, e.g. the daemon's own 421 timeout.
		return s.writeLocked(r) && r.Code != 421
	}
	if r.Code < 200 {
		return s.writeLocked(r) // preliminary: the command awaits more
	}
	if answersAbort(s.queue, r) {
		s.queue = s.queue[1:] // pure-ftpd: the aborted transfer gets no reply (quirks.go)
	}
	p := s.queue[0]
	if !replyFits(p.verb, r.Code) {
		// The daemon answered a command twice or not at all: from here on
		// replies would settle the wrong commands. The attempts still
		// waiting are settled as failures when the session ends.
		s.srv.reject(s.log, "reply out of step", "cmd", p.verb, "code", r.Code, "reply", logSafe(r.Text()))
		s.writeLocked(ftpproto.NewReply(421, "Service not available: the FTP server's replies are out of step; closing."))
		return false
	}
	out, keep, banned := r, true, false
	var hold time.Duration
	switch p.verb {
	case "": // greeting
		keep = r.Code == 220
	case "USER":
		s.acctAsked = r.Code == 332
		s.userOK = r.Code == 331 || r.Code == 332 || r.Code == 230
		s.user = p.user
		switch {
		case r.Code == 230: // no password asked (e.g. anonymous)
			s.loginOKLocked(now, p, r)
		case r.Code == 530 && s.srv.config().CountUserRejects:
			banned, hold = s.failedLocked(now, p.verb, r.Code, "user rejected")
		}
	case "PASS", "ACCT":
		s.acctAsked = p.verb == "PASS" && r.Code == 332
		switch {
		case r.Code == 230, r.Code == 202 && p.verb == "PASS":
			s.loginOKLocked(now, p, r)
		case r.Code < 400: // 332: account needed; ACCT is counted itself. 202 to ACCT: no login
			s.srv.lim.Release(now, s.peer.Addr())
		case refusedAfterGoodPassword(r): // proftpd full: see quirks.go
			s.srv.lim.Release(now, s.peer.Addr())
			s.log.Info("login refused by the daemon after the password", "user", s.user, "code", r.Code, "reply", logSafe(r.Text()))
		default:
			if u := s.srv.users; u != nil && p.verb == "PASS" {
				u.Failure(now, p.user, s.srv.lim.Key(s.peer.Addr()))
			}
			banned, hold = s.failedLocked(now, p.verb, r.Code, "rejected")
		}
		if p.userHeld { // settled: its place in the username's budget is free
			s.srv.users.Release(p.user)
			s.queue[0].userHeld = false
		}
	case "PASV", "EPSV":
		if r.Code == 227 || r.Code == 229 {
			out = s.openPassive(p.verb, r)
		}
	case "FEAT":
		out = s.rewriteFEAT(r)
	case "QUIT":
		keep = false
	}
	if r.Code < 300 && transferVerb(p.verb) {
		// The data first, then the reply that says it is complete (quirks.go).
		s.mu.Unlock()
		s.xfer.wait(s.srv.config().DataTimeout, s.done)
		s.mu.Lock()
	}
	if hold > 0 && !banned {
		// Tarpit: hold the failure reply. The entry stays at the head of
		// the queue (so nothing overtakes it) but is settled already.
		s.queue[0].counted = false
		s.mu.Unlock()
		t := time.NewTimer(hold)
		select {
		case <-t.C:
		case <-s.done:
		}
		t.Stop()
		s.mu.Lock()
	}
	s.queue = s.queue[1:]
	if !s.writeLocked(out) {
		return false
	}
	for len(s.queue) > 0 && s.queue[0].local != nil {
		if !s.writeLocked(*s.queue[0].local) {
			return false
		}
		s.queue = s.queue[1:]
	}
	s.signalDrainedLocked()
	if banned && s.srv.config().Observe {
		s.log.Warn("observe: would reject", "reason", "banned", "cmd", p.verb)
		banned = false
	}
	if banned {
		s.writeLocked(ftpproto.NewReply(421, "Too many failed logins from your address; closing control connection."))
		return false
	}
	if s.clientEOF.Load() && len(s.queue) == 0 {
		return false
	}
	return keep
}

func (s *session) loginOKLocked(now time.Time, p pending, r ftpproto.Reply) {
	if p.counted {
		s.srv.lim.Success(now, s.peer.Addr())
	}
	if u := s.srv.users; u != nil && p.verb == "PASS" {
		u.Success(now, p.user, s.srv.lim.Key(s.peer.Addr()))
	}
	if r.Code == 230 || r.Code == 202 {
		if !s.loggedIn.Swap(true) {
			s.log.Info("login ok", "user", s.user)
			s.srv.obs.Login(true)
		}
		s.armClientDeadline()
	}
}

// failedLocked records one failed attempt and reports whether the peer is
// now banned. code 0 means no reply came.
func (s *session) failedLocked(now time.Time, verb string, code int, why string) (banned bool, hold time.Duration) {
	return s.failedOrPenalizedLocked(now, verb, code, why, verb == "USER")
}

// failedOrPenalizedLocked records a failure: of an attempt (Failure), or
// with no attempt taken before it (penalty: Penalize).
func (s *session) failedOrPenalizedLocked(now time.Time, verb string, code int, why string, penalty bool) (banned bool, hold time.Duration) {
	var d limiter.Decision
	if penalty {
		d = s.srv.lim.Penalize(now, s.peer.Addr())
	} else {
		d = s.srv.lim.Failure(now, s.peer.Addr())
	}
	s.log.Warn("login failed", "user", s.user, "cmd", verb, "code", code, "why", why,
		"remaining", d.Remaining, "allowlisted", d.Allowlisted)
	s.srv.obs.Login(false)
	if d.NewBan {
		s.logBanLocked(d)
	}
	return !d.Allowed, s.srv.config().tarpit(d)
}

// tarpit is how long to hold the reply to a failed login of a key: the
// failure delay doubled for each failure of the key within its budget
// (1s, 2s, 4s, …), capped. Allowlisted keys are not delayed.
func (c *Config) tarpit(d limiter.Decision) time.Duration {
	if c.FailureDelay <= 0 || d.Allowlisted || c.Observe {
		return 0
	}
	n := min(max(c.Budget-d.Remaining-1, 0), 20)
	return min(c.FailureDelay<<n, c.MaxFailureDelay)
}

func (s *session) logBanLocked(d limiter.Decision) {
	s.srv.obs.Ban()
	s.log.Warn("ban", "key", d.Key.String(), "user", s.user, "until", d.Ban.Until.Format(time.RFC3339),
		"for", d.Ban.Until.Sub(time.Now()).Round(time.Second), "count", d.Ban.Count, "reason", d.Ban.Reason)
}

// logSafe bounds a client-chosen string before it goes into logs.
func logSafe(v string) string {
	const max = 128
	if len(v) > max {
		v = v[:max] + "…"
	}
	return v
}
