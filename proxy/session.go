package proxy

import (
	"context"
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
	"github.com/ftpguard/ftpguard/proxy/internal/pairing"
)

// maxReplyLine bounds one line of a backend reply (the whole reply is
// bounded by Config.MaxReply): a broken or hostile daemon cannot make the
// proxy buffer without end.
const maxReplyLine = 16 << 10

// maxPending bounds the entries awaiting their turn: commands forwarded
// and not yet answered, and replies of the proxy's own waiting behind
// them. A client that pipelines without reading replies, or sends lines the
// proxy answers itself while a command is unanswered, is not read until
// there is room (and is closed if none comes within DataTimeout), so it
// cannot make the queue grow.
const maxPending = 128

// pairs is the pairing machine of a session; its entries carry the
// tickets of login commands.
type pairs = pairing.Machine[*ticket]

type action = pairing.Action[*ticket]

// session is one client connection and its backend connection.
//
// Two goroutines run a session: relayCommands reads the client and writes
// the backend; relayReplies reads the backend and writes the client. They
// step one pairing machine (proxy/internal/pairing), which pairs each reply
// with the command it answers — so pipelined commands are each seen and
// each attempt is settled once — and carry out its actions. The login
// policy (login.go) settles attempts; no limiter call is made under mu.
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
	banning   atomic.Bool                        // settling a login's reply or a trap: a ban now only marks it (sessions_ban.go)
	ended     atomic.Pointer[ending]             // a ban (or the gate) ends the session, after the reply awaited (sessions_ban.go)
	tlsOn     atomic.Bool                        // the control connection is TLS
	hsCancel  atomic.Pointer[context.CancelFunc] // ends the AUTH TLS handshake under way (tls.go); nil: none
	btls      *tls.Config                        // FTPS to the daemon, with this session's cache; nil: plain
	// pregreeted is the daemon's greeting, already read when FTPS to the
	// daemon was set up; relayed first.
	pregreeted *ftpproto.Reply
	protP      atomic.Bool // PROT P: data connections with the client are TLS
	tlsCfg     *tls.Config // the client's TLS, with this session's ticket keys (tls.go: sessionTLS); set before PROT P
	clientEOF  atomic.Bool
	// active is when the session last did something — a command read, the
	// login, the end of a transfer (unix ns): idle_timeout counts from it.
	active atomic.Int64
	// rdl is the client's read deadline in force (unix ns; 0: none), set
	// only through setClientDeadline, under rdlMu with the socket's.
	rdl       atomic.Int64
	rdlMu     sync.Mutex
	attempted atomic.Bool            // a PASS or ACCT reached the daemon
	endWhy    atomic.Pointer[string] // why it ends without a login (capacity.go); nil: other
	slot      *capSlot               // its place in the session table; guarded by srv.mu
	closeOnce sync.Once
	done      chan struct{}  // closed by abort
	data      sync.WaitGroup // data-connection goroutines

	// mu guards the fields below and serialises writes to the client:
	// the machine is stepped, and its Write actions carried out, under it.
	mu        sync.Mutex
	pair      *pairs
	user      string
	lastCode  int
	wbuf      []byte
	wake      chan struct{} // closed when the queue shrinks; see awaitQueue
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
	dataLn   io.Closer  // the pending data port: *heldListener, *heldMapping (kernel.go) or an active-mode listener
	dataConn map[net.Conn]struct{}
	dataDone bool // the session ended: no new data legs
	// kernelNext: the connection of the latest data port set up, if a
	// kernel mapping: the next transfer runs in the kernel (kernel.go).
	kernelNext *kernelConn
	// kernelRun: the connection of the transfer the kernel carries, from
	// its 1xx to its final reply, where it is counted, for a ban that
	// cuts it (kernel.go).
	kernelRun *kernelConn

	// Owned by relayReplies alone (kernel.go).
	kernelXfer  bool // a transfer runs in the kernel: counted in transfers
	relayLogged bool // why the session's transfers are relayed was logged
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
		first:    firstBytes{r: client},
		done:     make(chan struct{}),
		dataConn: make(map[net.Conn]struct{}),
	}
}

// run relays the session until either side ends it: relayReplies in a
// goroutine of its own, relayCommands in the caller's. Whichever of the two
// ends last ends the session (end), then calls ended; run may return
// before that. The other does not wait for it: a goroutine parked to wait
// and woken again cost every session two thread switches.
func (s *session) run(ended func()) {
	// The greeting is awaited first, unless it was read already.
	s.pair = pairing.New[*ticket](maxPending, s.pregreeted == nil, daemonQuirks)
	if s.pregreeted != nil {
		s.mu.Lock()
		s.writeLocked(*s.pregreeted)
		s.mu.Unlock()
	}
	var running atomic.Int32
	running.Store(2)
	last := func() {
		if running.Add(-1) == 0 {
			s.guard("session end", s.end, nil)
			s.guard("session end", ended, nil)
		}
	}
	go func() {
		s.guard("relayReplies", s.relayReplies, nil)
		s.mu.Lock()
		s.replyDone = true
		s.wakeLocked()
		s.mu.Unlock()
		last()
	}()
	s.guard("relayCommands", s.relayCommands, nil)
	last()
}

// end closes what is left of the session once both its goroutines are
// done, waits for its data legs, and settles every attempt still awaiting
// a reply as a failure (docs/design.md rule 1).
func (s *session) end() {
	s.abort()
	s.data.Wait()
	s.endKernel() // kernel.go
	s.mu.Lock()
	left := s.pair.End()
	user := s.user
	s.mu.Unlock()
	s.settleEnd(left)
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
		s.touch()
		if !s.command(cmd) {
			break
		}
	}
	if s.closing.Load() {
		s.linger()
	}
}

// touch records activity: idle_timeout counts from now.
func (s *session) touch() { s.active.Store(time.Now().UnixNano()) }

// armClientDeadline sets the client's read deadline: the login deadline
// before login, none while a data transfer runs, else idle_timeout from
// the session's last activity. An idle deadline in place is kept while it
// is at most half the idle timeout earlier than that: commandError checks,
// when it expires, whether the session has really been idle that long. So
// a busy session changes its deadline (a runtime timer) twice per
// idle_timeout at most, not once per command.
func (s *session) armClientDeadline() {
	cfg := s.srv.config()
	switch {
	case s.closing.Load(): // shed: end the read now (capacity.go)
		s.setClientDeadline(time.Now())
	case !s.loggedIn.Load():
		s.setClientDeadline(s.start.Add(cfg.LoginTimeout))
	case s.transfers.Load() > 0:
		s.setClientDeadline(time.Time{})
	default:
		want := s.active.Load() + int64(cfg.IdleTimeout)
		if cur := s.rdl.Load(); cur > time.Now().UnixNano() && cur <= want && want-cur <= int64(cfg.IdleTimeout/2) {
			return
		}
		s.setClientDeadline(time.Unix(0, want))
	}
}

// setClientDeadline sets the client's read deadline to d (zero: none),
// unless it is in force already. Safe for concurrent use: relayCommands
// arms it while relayReplies (a kernel transfer's 1xx and final reply) or
// a data leg clears or re-arms it; the one recorded in rdl and the
// socket's change together, so the last call wins both.
func (s *session) setClientDeadline(d time.Time) {
	var ns int64
	if !d.IsZero() {
		ns = d.UnixNano()
	}
	if s.rdl.Load() == ns {
		return
	}
	s.rdlMu.Lock()
	defer s.rdlMu.Unlock()
	if s.rdl.Swap(ns) != ns {
		s.raw.SetReadDeadline(d)
	}
}

// idleEarly reports whether a logged-in session's idle deadline expired
// before idle_timeout had passed since its last activity (armClientDeadline
// kept an earlier one): the read goes on under a new deadline.
func (s *session) idleEarly() bool {
	return time.Since(time.Unix(0, s.active.Load())) < s.srv.config().IdleTimeout
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
			if s.transfers.Load() > 0 || s.idleEarly() {
				return true // a transfer began while we waited, or the session was not idle that long
			}
			s.log.Info("timeout", "kind", "idle", "after", cfg.IdleTimeout)
			s.finish(421, "Idle timeout; closing control connection.")
			return false
		}
		s.log.Info("timeout", "kind", "login", "after", cfg.LoginTimeout)
		s.endWhy.Store(&whyLoginTimeout)
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
	acts := s.pair.ClientEOF()
	s.mu.Unlock()
	if len(acts) > 0 { // Close: nothing awaits a reply
		s.abort()
		return
	}
	if cc, ok := s.backend.(*ctlConn); ok { // not FTPS to the daemon: no close_notify
		cc.CloseWrite()
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
		s.endWhy.Store(&whyPreauth)
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
	callTestHook("command", cmd.Verb)
	if s.ended.Load() != nil {
		// A ban marked the session to end after the replies it awaits:
		// nothing more is done for it (no data listener opened either);
		// forward checks again under the lock.
		return true
	}
	if !s.countPreauth() {
		return false
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) { // cmd.String allocates
		s.log.Debug("command", "cmd", cmd.String())
	}
	if !knownShape(cmd.Verb) {
		// Not forwarded: a daemon may answer such a verb with nothing
		// (pure-ftpd), and every later reply would answer the command
		// before its own.
		return s.replyLocal(ftpproto.NewReply(500, "Syntax error, command unrecognized."))
	}
	if s.authAlone && !s.awaitAlone() { // login.go
		return false
	}
	if !s.loggedIn.Load() && !pairing.Lookup(cmd.Verb).PreLogin {
		// What a daemon answers before login is its own business (proftpd
		// answers SITE CHMOD twice); it gets only what logging in needs.
		return s.replyLocal(ftpproto.NewReply(530, "Please log in with USER and PASS first."))
	}
	switch cmd.Verb {
	case "USER", "PASS", "ACCT":
		return s.login(cmd) // login.go
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
		// An IPv6 client could reach an IPv4 [passive] address only from an
		// IPv4 address of its own, which the data gate refuses: not the
		// control connection's (docs/design.md, rule 6).
		if !s.announceAddr().Is4() || !s.peer.Addr().Unmap().Is4() {
			return s.replyLocal(ftpproto.NewReply(500, "PASV needs IPv4; use EPSV."))
		}
		if s.passiveFull() { // passive.go
			return s.refusePassive()
		}
		return s.forward(ftpproto.Command{Verb: "PASV"}, "PASV", nil)
	case "EPSV":
		switch strings.ToUpper(strings.TrimSpace(cmd.Arg)) {
		case "ALL":
			s.epsvAll = true
			return s.forward(ftpproto.Command{Verb: "EPSV", Arg: "ALL"}, "EPSV ALL", nil)
		case "", "1", "2":
			// The proxy chooses the backend's family; the client's
			// family is the one it reached us with.
			if s.passiveFull() {
				return s.refusePassive()
			}
			return s.forward(ftpproto.Command{Verb: "EPSV"}, "EPSV", nil)
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
	return s.forward(cmd, cmd.Verb, nil)
}

// forward enters cmd in the pairing machine as verb, carrying t (login
// commands), and sends cmd's canonical form to the backend: never the
// client's raw bytes (docs/design.md: one canonical command per parsed
// line). A session a ban (or the gate) marked to end (sessions_ban.go)
// forwards nothing more: the command is dropped unanswered, and the
// session ends with 421 after the replies it awaits — else a client that
// kept a command in flight would never be ended, and its commands would
// reach the daemon after the ban. Checked under mu, where endFor marks it:
// a command forwarded before the mark is one the ban waits for.
func (s *session) forward(cmd ftpproto.Command, verb string, t *ticket) bool {
	for {
		s.mu.Lock()
		ended, marked := s.pair.Ended(), s.ended.Load() != nil
		var acts []action
		if !ended && !marked {
			acts = s.pair.Forward(verb, t)
		}
		s.mu.Unlock()
		if ended || marked {
			t.release()
			return !ended
		}
		if len(acts) == 0 {
			break
		}
		if !s.awaitRoom() { // Wait
			t.release()
			return false
		}
	}
	s.cbuf = cmd.AppendWire(s.cbuf[:0])
	if _, err := writeBounded(s.backend, s.cbuf, s.srv.config().DataTimeout); err != nil {
		if !s.closing.Load() {
			s.log.Warn("backend write failed", "err", err)
			s.replyFinal(421, "Service not available, connection to the FTP server lost.")
		}
		s.abort()
		return false
	}
	if t != nil && t.attempt != nil {
		s.attempted.Store(true)
	}
	return true
}

// replyLocal answers the client with a reply of the proxy's own, after the
// replies to commands forwarded before it. Only relayCommands calls it.
func (s *session) replyLocal(r ftpproto.Reply) bool {
	for {
		s.mu.Lock()
		if s.replyDone || s.pair.Ended() {
			s.mu.Unlock()
			return false
		}
		acts := s.pair.Local(r)
		if len(acts) == 0 || acts[0].Op != pairing.Wait {
			ok := s.doLocked(acts)
			s.mu.Unlock()
			return ok
		}
		s.mu.Unlock()
		if !s.awaitRoom() {
			return false
		}
	}
}

// awaitRoom stops reading the client until the pairing machine has room
// for one more entry, at most DataTimeout; then the session ends with 421.
// Only relayCommands calls it.
func (s *session) awaitRoom() bool {
	if s.awaitQueue(maxPending-1, s.srv.config().DataTimeout) {
		return true
	}
	if !s.closing.Load() {
		s.srv.reject(s.log, "replies not read", "pending", maxPending)
		s.replyFinal(421, "Too many commands awaiting replies; closing control connection.")
	}
	return false
}

// doLocked carries out Write and Close actions, in order, and reports
// whether the session goes on.
func (s *session) doLocked(acts []action) bool {
	for _, a := range acts {
		switch a.Op {
		case pairing.Write:
			if !s.writeLocked(a.Reply) {
				return false
			}
		case pairing.Close:
			if a.Reply.Code != 0 {
				s.writeLocked(a.Reply)
			}
			return false
		}
	}
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

// awaitQueue waits, at most for d, until at most max entries await their
// turn, and reports whether that is so. Only relayCommands calls it.
func (s *session) awaitQueue(max int, d time.Duration) bool {
	var t *time.Timer // made when a wait begins: mostly there is none (a login verb after its reply)
	for {
		s.mu.Lock()
		if s.pair.Len() <= max || s.replyDone {
			ok := s.pair.Len() <= max
			s.mu.Unlock()
			return ok
		}
		if t == nil {
			t = time.NewTimer(d)
			defer t.Stop()
		}
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-t.C:
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.pair.Len() <= max
		}
	}
}

// wakeLocked wakes awaitQueue: the queue shrank, or no more replies will
// come.
func (s *session) wakeLocked() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

// sleep waits d, or until the session is aborted.
func (s *session) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	}
}

// linger half-closes the client and discards what it still sends for a
// moment before the close, so that the final reply is read rather than lost
// to the reset that closing a socket with unread input causes.
func (s *session) linger() {
	closeWrite(s.client)
	s.setClientDeadline(time.Now().Add(time.Second))
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
	if _, err := writeBounded(s.client, s.wbuf, s.srv.config().DataTimeout); err != nil {
		s.log.Info("client write failed", "err", err)
		s.abort()
		return false
	}
	s.lastCode = r.Code
	return true
}

// logSafe bounds a client-chosen string before it goes into logs.
func logSafe(v string) string {
	const max = 128
	if len(v) > max {
		v = v[:max] + "…"
	}
	return v
}
