package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// TLS is terminated at the proxy, never passed through blind (docs/design.md
// rule 7): a tunnel would hide the replies to PASS from the proxy. The daemon
// behind it speaks plain FTP.

// startTLS answers AUTH TLS (or SSL): 234, then the server handshake on the
// control connection. Plaintext that arrived after AUTH in the same read
// would otherwise be taken as coming from inside TLS (command injection,
// CVE-2011-0411 style): the session is closed instead.
func (s *session) startTLS(cmd ftpproto.Command) bool {
	cfg := s.srv.config()
	switch {
	case cfg.TLS == nil:
		return s.replyLocal(ftpproto.NewReply(534, "Request denied for policy reason: TLS is not offered by this server."))
	case s.tlsOn.Load():
		return s.replyLocal(ftpproto.NewReply(503, "Already using TLS."))
	}
	switch strings.ToUpper(strings.TrimSpace(cmd.Arg)) {
	case "TLS", "SSL", "TLS-C", "TLS-P":
	default:
		return s.replyLocal(ftpproto.NewReply(504, "AUTH type not supported; use AUTH TLS."))
	}
	// Its 234 comes after every reply before it, never in the place of a
	// slow one: the client would take it for that reply and wait for
	// AUTH's while the proxy waits for its handshake.
	if !s.awaitTLSTurn(cfg) {
		return false
	}
	if s.cr.Buffered() > 0 {
		s.srv.reject(s.log, "plaintext after AUTH TLS", "bytes", s.cr.Buffered())
		s.finish(421, "Commands sent after AUTH TLS before the handshake; closing.")
		return false
	}
	// The slot's context: a shed (capacity.go) cancels it before it waits
	// for s.mu, so a client that stalls its handshake is shed at once
	// rather than when its read deadline passes.
	ctx := s.srv.ctx
	s.srv.mu.Lock()
	if s.slot != nil {
		ctx = s.slot.ctx
	}
	s.srv.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock() // no reply may be written while the handshake runs
	if !s.writeLocked(ftpproto.NewReply(234, "AUTH TLS successful.")) {
		return false
	}
	s.tlsCfg = sessionTLS(cfg.TLS)
	// A ban (endFor) ends the handshake too, through hsCancel: it cannot
	// take s.mu while the handshake holds it.
	hctx, hcancel := context.WithCancel(ctx)
	s.hsCancel.Store(&hcancel)
	tc, err := s.handshake(hctx, s.client, s.tlsCfg, cfg.DataTimeout)
	s.hsCancel.Store(nil)
	hcancel()
	if err != nil {
		if e := s.ended.Load(); e != nil {
			// Ended by a ban: logged here, as endFor would have (it
			// finds the session closing and logs nothing).
			s.srv.reject(s.log, e.reason, e.with("logged_in", s.loggedIn.Load())...)
		} else {
			s.log.Info("TLS handshake failed", "err", err)
		}
		s.abort()
		return false
	}
	s.client = tc
	s.cr = ftpproto.NewCommandReader(tc, cfg.MaxLine)
	s.tlsOn.Store(true)
	return true
}

// awaitTLSTurn waits until every command forwarded before AUTH has its
// reply — at most login_timeout before login, data_timeout after — and
// reports whether the session goes on; if the replies do not come, it ends
// with 421.
func (s *session) awaitTLSTurn(cfg *Config) bool {
	d := cfg.DataTimeout
	if !s.loggedIn.Load() {
		d = cfg.LoginTimeout
	}
	if s.awaitQueue(0, d) {
		return true
	}
	s.mu.Lock()
	ended := s.replyDone // the daemon left: the session ends anyway
	s.mu.Unlock()
	if !ended && !s.closing.Load() {
		s.srv.reject(s.log, "reply out of step", "cmd", "AUTH", "waited", d)
		s.replyFinal(421, "Service not available: the FTP server did not answer; closing.")
	}
	return false
}

// sessionTLS returns base for one session: a clone with session ticket
// keys of its own, so that only the tickets issued on this session's
// control connection can be resumed on its data connections (a ticket of
// another session, or of another client on the same address, decrypts to
// nothing and gets a full handshake, which secureData refuses).
func sessionTLS(base *tls.Config) *tls.Config {
	if base == nil {
		return nil
	}
	c := base.Clone()
	// Full records from the first byte: a data connection is a bulk
	// transfer, and control replies are one small record anyway.
	c.DynamicRecordSizingDisabled = true
	var k [32]byte
	rand.Read(k[:])
	c.SetSessionTicketKeys([][32]byte{k})
	return c
}

// handshake runs a server handshake on c with conf within timeout, or
// until parent is done.
func (s *session) handshake(parent context.Context, c net.Conn, conf *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	tc := tls.Server(c, conf)
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	st := tc.ConnectionState()
	s.log.Debug("TLS", "version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite),
		"resumed", st.DidResume)
	return tc, nil
}

// tlsCommand answers PBSZ, PROT and CCC as a server would: the proxy holds
// the client's TLS, the daemon never sees these.
func (s *session) tlsCommand(cmd ftpproto.Command) bool {
	if !s.tlsOn.Load() {
		return s.replyLocal(ftpproto.NewReply(503, cmd.Verb+" needs AUTH TLS first."))
	}
	arg := strings.ToUpper(strings.TrimSpace(cmd.Arg))
	switch cmd.Verb {
	case "PBSZ":
		return s.replyLocal(ftpproto.NewReply(200, "PBSZ=0"))
	case "PROT":
		switch arg {
		case "P":
			s.protP.Store(true)
			s.dropMapping() // kernel.go: the next data connection is TLS, relayed
			return s.replyLocal(ftpproto.NewReply(200, "PROT now Private."))
		case "C":
			s.protP.Store(false)
			return s.replyLocal(ftpproto.NewReply(200, "PROT now Clear."))
		case "S", "E":
			return s.replyLocal(ftpproto.NewReply(536, "PROT level not supported."))
		}
		return s.replyLocal(ftpproto.NewReply(504, "PROT needs C or P."))
	default: // CCC
		return s.replyLocal(ftpproto.NewReply(534, "CCC refused: the control channel stays protected."))
	}
}

// errNoReuse refuses a PROT P data connection that did not resume the
// control connection's TLS session.
var errNoReuse = errors.New("proxy: the data connection did not resume the control connection's TLS session")

// errNoTLS refuses a PROT P data connection of a session without TLS of
// its own (never reached: PROT P needs AUTH TLS first).
var errNoTLS = errors.New("proxy: PROT P without the session's TLS")

// secureData wraps a client data connection in TLS when PROT P is in
// force. It must resume the control connection's TLS session (as vsftpd's
// require_ssl_reuse): the session's own ticket keys (sessionTLS) make any
// other ticket fail, so a thief on the same address who races for the
// port gets a full handshake and errNoReuse. Config.DataNoReuse
// ([tls] require_data_reuse = false) accepts a full handshake, for old
// clients.
//
// The TLS config is the session's own snapshot (s.tlsCfg, taken at AUTH
// TLS or the implicit handshake), not the server's current one: a session
// told "200 PROT now Private" keeps TLS on its data connections until it
// ends, even after a reload to [tls] mode = "off" (docs/operating.md).
func (s *session) secureData(c net.Conn) (net.Conn, error) {
	cfg := s.srv.config()
	if !s.protP.Load() {
		return c, nil
	}
	conf := s.tlsCfg
	if conf == nil { // not reached: PROT P needs the control connection's TLS
		return nil, errNoTLS
	}
	tc, err := s.handshake(s.srv.ctx, &recordBatcher{Conn: c}, conf, cfg.DataTimeout)
	if err != nil {
		return nil, err
	}
	if !tc.ConnectionState().DidResume && !cfg.DataNoReuse {
		tc.Close()
		return nil, errNoReuse
	}
	return tc, nil
}

// rewriteFEAT makes the FEAT reply advertise AUTH TLS, PBSZ and PROT
// exactly when the proxy offers them, and EPRT only with active mode.
func (s *session) rewriteFEAT(r ftpproto.Reply) ftpproto.Reply {
	if r.Code != 211 || len(r.Lines) < 2 {
		return r
	}
	cfg := s.srv.config()
	lines := []string{r.Lines[0]}
	for _, l := range r.Lines[1 : len(r.Lines)-1] {
		f := strings.ToUpper(strings.TrimSpace(l))
		switch {
		case strings.HasPrefix(f, "AUTH"), f == "PBSZ", f == "PROT", f == "CCC":
			continue
		case (f == "EPRT" || f == "PORT") && !cfg.Active:
			continue
		}
		lines = append(lines, l)
	}
	if cfg.TLS != nil {
		lines = append(lines, " AUTH TLS", " PBSZ", " PROT")
	}
	return ftpproto.Reply{Code: r.Code, Lines: append(lines, r.Lines[len(r.Lines)-1])}
}

// recordBatcher is the socket under a TLS data leg. Between begin and
// flush it gathers what TLS writes — a relayBuf of plaintext is 64
// records of 16 KiB — and flush sends it in one system call rather than
// one a record. Outside, and for whatever TLS writes by itself (the
// handshake, alerts, a key update answered by a Read), it writes through.
// Safe for concurrent use.
type recordBatcher struct {
	net.Conn
	mu  sync.Mutex
	on  bool
	buf []byte
}

func (b *recordBatcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.on {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

func (b *recordBatcher) begin() {
	b.mu.Lock()
	b.on = true
	b.mu.Unlock()
}

// flush sends what was gathered since begin, and writes through again.
func (b *recordBatcher) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	if cap(b.buf) > 2*relayBuf {
		b.buf = nil // not kept: a relay writes at most relayBuf at a time
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// writeBatched writes p to dst: over a TLS leg on a recordBatcher, its
// records in one system call.
func writeBatched(dst net.Conn, p []byte) error {
	if tc, ok := dst.(*tls.Conn); ok {
		if b, ok := tc.NetConn().(*recordBatcher); ok {
			b.begin()
			_, err := tc.Write(p)
			if ferr := b.flush(); err == nil {
				err = ferr
			}
			return err
		}
	}
	_, err := dst.Write(p)
	return err
}
