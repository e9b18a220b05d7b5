// Package proxy is ftpguard's FTP control-channel proxy: it accepts clients,
// refuses banned peers before the backend is dialed, relays each session to
// the protected daemon while it watches every USER/PASS and the daemon's reply
// to it, and relays passive data connections through ports of its own.
//
// The peer address always comes from the socket (never from DNS or a log).
// Every password attempt takes a place in the peer's budget before it is
// forwarded, and is settled as a success or a failure when the daemon answers,
// or as a failure when the session ends first.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// PortRange is an inclusive range of TCP ports. The zero value means "any
// ephemeral port chosen by the kernel".
type PortRange struct {
	Min, Max uint16
}

// Config holds the proxy's settings. Zero durations and counts are replaced by
// the defaults documented on each field when the Server is made.
type Config struct {
	// Backend is the host:port of the protected daemon.
	Backend string
	// DialTimeout bounds dialing the backend (control and data). Default 5s.
	DialTimeout time.Duration
	// PassiveAddr is the address announced in 227/229 replies. The zero
	// value announces the local address the client connected to.
	PassiveAddr netip.Addr
	// PassivePorts are the proxy's own data ports. Zero: kernel-chosen.
	PassivePorts PortRange
	// MaxConns caps concurrent sessions. Default 2000. A newcomer that
	// finds the table full sheds a pre-login session of the key holding
	// the most of them (capacity.go); it is refused only when none is left.
	MaxConns int
	// MaxConnsPerIP caps concurrent sessions of one address key (the
	// limiter's Key: [limits] ipv4_prefix/ipv6_prefix, an IPv6 /64 by
	// default), not of one exact address. Default 10.
	MaxConnsPerIP int
	// ConnRate is the new connections per second a key may open (a token
	// bucket of ConnBurst); more are refused at the gate, before the
	// backend is dialed. 0: off. ConnBurst 0: 1.
	ConnRate  float64
	ConnBurst int
	// ConnRateKeys bounds the keys whose connection rate is tracked (the
	// least recently used is forgotten). Default 65536.
	ConnRateKeys int
	// NoAuth are the penalties of keys whose connections keep ending
	// without a login attempt (login timeout, pre-login command limit,
	// shed). The zero value is off.
	NoAuth limiter.NoAuthConfig
	// LoginTimeout is the time a client has, from connect, to log in. Default 30s.
	LoginTimeout time.Duration
	// IdleTimeout closes a logged-in session with no command and no
	// transfer for this long. Default 10m.
	IdleTimeout time.Duration
	// MaxPreauthCommands caps commands before a successful login. Default 20.
	MaxPreauthCommands int
	// MaxLine bounds a client command line in bytes. Default 2048.
	MaxLine int
	// MaxReply bounds one whole (multi-line) reply of the backend. Default 256 KiB.
	MaxReply int
	// DataTimeout bounds the wait for a client's passive data connection
	// and for dialing the backend's data port. Default 30s.
	DataTimeout time.Duration
	// MaxPortsPerKey caps the passive listeners held (opened, no data
	// connection yet) by one address key, the limiter's Key. Default 4
	// (DefaultMaxPortsPerKey).
	MaxPortsPerKey int
	// TrustedProxies are the sources (load balancers) whose PROXY protocol
	// header (v1 or v2) names the true peer. From them a header is required;
	// nobody else can choose its address. Empty: no PROXY protocol.
	TrustedProxies []netip.Prefix
	// ProxyHeaderTimeout bounds the wait for a trusted source's header.
	// Default 5s.
	ProxyHeaderTimeout time.Duration
	// TLS, when set, terminates FTPS at the proxy: AUTH TLS on the control
	// port (explicit), or ServeImplicitTLS listeners; PROT P secures the
	// data connections with the client. Nil: AUTH is answered 534.
	TLS *tls.Config
	// DataNoReuse accepts PROT P data connections that do not resume the
	// control connection's TLS session ([tls] require_data_reuse = false,
	// for old clients). False, the default: they are refused.
	DataNoReuse bool
	// RequireTLS refuses USER/PASS before AUTH TLS (530).
	RequireTLS bool
	// Active accepts PORT/EPRT (for the client's own address and a port ≥
	// 1024 only). False: they are answered 502.
	Active bool
	// BackendTLS, when set, makes the proxy speak explicit FTPS to the
	// daemon (AUTH TLS, PBSZ 0, PROT P; data connections resume the
	// control session). Nil: plain FTP to the daemon.
	BackendTLS *tls.Config
	// Observe is the safe first-rollout mode: everything is counted, logged
	// and reported, but no one is refused or closed for a ban, a budget or
	// a user budget; the log says what would have been done.
	Observe bool
	// SendProxy, 1 or 2, sends a PROXY header of that version to the
	// backend on each control connection, so that the daemon sees the true
	// peer. 0: none.
	SendProxy byte
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	def(&c.DialTimeout, 5*time.Second)
	def(&c.LoginTimeout, 30*time.Second)
	def(&c.IdleTimeout, 10*time.Minute)
	def(&c.DataTimeout, 30*time.Second)
	def(&c.ProxyHeaderTimeout, defaultProxyHeaderTimeout)
	defInt(&c.MaxConns, 2000)
	defInt(&c.MaxConnsPerIP, 10)
	defInt(&c.ConnBurst, 1)
	defInt(&c.ConnRateKeys, 1<<16)
	defInt(&c.MaxPreauthCommands, 20)
	defInt(&c.MaxLine, 2048)
	defInt(&c.MaxReply, 256<<10)
	return c
}

// Server proxies FTP sessions to one backend. Make it with New; it is safe
// for concurrent use, and one Server may Serve several listeners.
type Server struct {
	obs   Observer
	lim   *limiter.Limiter
	users *limiter.Users // per-username budgets; nil: off
	log   *slog.Logger
	cfg   atomic.Pointer[Config]

	nextID   atomic.Uint64
	shutdown atomic.Bool

	mu        sync.Mutex
	listeners map[*net.Listener]struct{}
	sessions  map[*session]struct{}
	caps      capTable      // connections per key, pre-login sessions (capacity.go)
	sessDone  chan struct{} // closed and replaced whenever a session ends; guarded by mu
	ports     portHolds     // passive listeners held per key (passive.go)
	live      banRegistry   // live sessions by peer, for EndSessions (sessions_ban.go)
	endq      endQueue      // bans waiting for EndBansSoon's pass (sessions_ban.go)
	hooks     policyHooks   // gate and budget hooks (gate_hook.go)

	rates connRates // conn_rate per key; its own lock

	dataPath atomic.Pointer[DataPath] // the kernel data path (kernel.go); nil: relay only

	// ctx is cancelled by Close, so dials in flight give up at once.
	ctx    context.Context
	cancel context.CancelFunc
}

// New makes a Server. lim decides and records; log receives one line per
// event (nil: slog.Default()).
func New(cfg Config, lim *limiter.Limiter, log *slog.Logger) (*Server, error) {
	if lim == nil {
		return nil, errors.New("proxy: nil limiter")
	}
	if cfg.Backend == "" {
		return nil, errors.New("proxy: no backend address")
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		obs:       nopObserver{},
		lim:       lim,
		log:       log,
		listeners: make(map[*net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		caps:      newCapTable(),
		sessDone:  make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.SetConfig(cfg)
	return s, nil
}

// SetObserver makes o receive the proxy's events (call before Serve).
func (s *Server) SetObserver(o Observer) {
	if o == nil {
		o = nopObserver{}
	}
	s.obs = o
}

// reject logs a refusal (connection, command or data connection) and
// reports it to the observer.
func (s *Server) reject(log *slog.Logger, reason string, args ...any) {
	level := slog.LevelWarn
	if reason == "banned" {
		level = slog.LevelInfo // one line per refused connection of a banned peer: routine
	}
	log.Log(context.Background(), level, "reject", append([]any{"reason", reason}, args...)...)
	s.obs.Reject(reason)
}

// enforce reports whether a refusal for reason is carried out. In observe
// mode it is not: the log says what would have been done, and the session
// goes on. Otherwise the refusal is logged and reported (see reject).
func (s *Server) enforce(log *slog.Logger, reason string, args ...any) bool {
	if s.config().Observe {
		log.Warn("observe: would reject", append([]any{"reason", reason}, args...)...)
		s.obs.Reject("observe")
		return false
	}
	s.reject(log, reason, args...)
	return true
}

// SetUsers turns on per-username budgets (call before Serve): a username
// whose budget is spent is answered 530 by the proxy, without reaching the
// daemon, for every key that has not logged in to it before.
func (s *Server) SetUsers(u *limiter.Users) { s.users = u }

// SetConfig replaces the settings. Sessions already open pick up new
// timeouts and limits at their next decision; none is dropped.
func (s *Server) SetConfig(cfg Config) {
	c := cfg.withDefaults()
	s.cfg.Store(&c)
}

func (s *Server) config() *Config { return s.cfg.Load() }

// Serve accepts connections on l and serves each in its own goroutine. It
// returns ErrServerClosed after Shutdown or Close, or the listener's error.
// Temporary accept errors (e.g. EMFILE) are retried with a growing pause.
func (s *Server) Serve(l net.Listener) error { return s.serve(l, false) }

// ServeImplicitTLS is Serve for implicit FTPS (e.g. port 990): TLS from the
// first byte, with Config.TLS; data connections are protected by default.
func (s *Server) ServeImplicitTLS(l net.Listener) error {
	if s.config().TLS == nil {
		return errors.New("proxy: implicit TLS without a TLS config")
	}
	return s.serve(l, true)
}

func (s *Server) serve(l net.Listener, implicit bool) error {
	l = s.wrapListener(l)
	if !s.trackListener(&l, true) {
		return ErrServerClosed
	}
	defer s.trackListener(&l, false)
	var pause time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				if pause == 0 {
					pause = 5 * time.Millisecond
				} else if pause *= 2; pause > time.Second {
					pause = time.Second
				}
				s.log.Warn("accept error; retrying", "err", err, "pause", pause)
				time.Sleep(pause)
				continue
			}
			return err
		}
		pause = 0
		go s.handle(c, implicit)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shutdown.Load() {
			return false
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

func (s *Server) closeListenersLocked() {
	for l := range s.listeners {
		(*l).Close()
	}
}

// Close closes the listeners and every session at once.
func (s *Server) Close() error {
	s.shutdown.Store(true)
	s.cancel()
	s.mu.Lock()
	s.closeListenersLocked()
	for ss := range s.sessions {
		ss.abort()
	}
	s.mu.Unlock()
	return nil
}

// Shutdown stops accepting, then waits for open sessions to end by
// themselves until ctx is done, when it closes the rest (and returns
// ctx.Err()).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	s.mu.Lock()
	s.closeListenersLocked()
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n, done := len(s.sessions)+s.caps.conns, s.sessDone
		s.mu.Unlock()
		if n == 0 {
			s.cancel()
			return nil
		}
		select {
		case <-done:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// ActiveSessions reports how many client connections are open.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.caps.conns
}

// handle runs one client connection from the gate to the end.
func (s *Server) handle(c net.Conn, implicit bool) {
	id := s.nextID.Add(1)
	var ss *session
	defer func() { // recover.go: a panic ends this connection only
		if v := recover(); v != nil {
			s.recovered(s.log.With("session", id), "session", v)
			if ss != nil {
				ss.abort()
			}
			c.Close()
		}
	}()
	e, err := endpointsOf(c)
	if err != nil {
		s.reject(s.log, "PROXY header", "session", id, "err", err)
		c.Close()
		return
	}
	peer := e.peer
	log := s.log.With("session", id, "peer", peer.Addr().String())
	if e.health {
		log.Debug("health check")
		refuse(c, "220 ftpguard ready.")
		return
	}
	now := time.Now()

	d := s.lim.Check(now, peer.Addr())
	switch {
	case d.StoreDown:
		if s.enforce(log, "store unreachable (fail_closed)") {
			refuse(c, "421 Service temporarily unavailable, try again later.")
			return
		}
	case !d.Allowed:
		if s.enforce(log, "banned", "key", d.Key.String(), "until", d.Ban.Until.Format(time.RFC3339)) {
			refuse(c, fmt.Sprintf("421 Service not available: %s is banned for repeated login failures.", peer.Addr()))
			return
		}
	}
	if s.gated(c, log, peer.Addr(), d.Allowlisted) { // gate_hook.go: country/ASN rules
		return
	}
	if !s.gateKey(c, log, now, peer.Addr(), d) { // capacity.go
		return
	}
	slot, victim, reason, would := s.acquire(d.Key)
	if would != "" {
		s.enforce(log, would) // observe mode: logged and counted, admitted
	}
	if victim != nil {
		s.shed(victim)
	}
	if reason != "" {
		s.reject(log, reason)
		msg := "421 Too many connections, try again later."
		if reason == "max_conns_per_ip" {
			msg = "421 Too many connections from your address."
		} else if reason == "shutting down" {
			msg = "421 Service shutting down."
		}
		refuse(c, msg)
		return
	}
	released := false // the session's end releases the slot (ended, below)
	defer func() {
		if !released {
			s.release(slot)
		}
	}()
	setOOBInline(c)
	log.Info("connect", "local", e.reached.String(), "via_balancer", e.viaLB)

	cfg := s.config()
	raw := newCtlConn(c) // ctlconn.go
	var client net.Conn = raw
	var stls *tls.Config // implicit: this session's TLS (tls.go: sessionTLS)
	if implicit {
		if cfg.TLS == nil { // a reload turned implicit TLS off: its listener is being closed
			s.reject(log, "implicit TLS off")
			c.Close()
			return
		}
		stls = sessionTLS(cfg.TLS)
		tc := tls.Server(raw, stls)
		hctx, hcancel := context.WithTimeout(slot.ctx, cfg.LoginTimeout)
		err := tc.HandshakeContext(hctx)
		hcancel()
		if err != nil {
			if s.ctx.Err() == nil && slot.ctx.Err() != nil {
				s.shedWhileDialing(c, log, peer.Addr(), d.Key)
				return
			}
			log.Info("TLS handshake failed", "err", err)
			c.Close()
			return
		}
		client = tc
	}
	ctx, cancel := context.WithTimeout(slot.ctx, cfg.DialTimeout)
	start := time.Now()
	dialed, err := backendDialer.DialContext(ctx, "tcp", cfg.Backend)
	cancel()
	if err != nil && s.ctx.Err() == nil && slot.ctx.Err() != nil {
		s.shedWhileDialing(c, log, peer.Addr(), d.Key)
		return
	}
	s.obs.BackendDial(time.Since(start), err)
	if err != nil {
		log.Error("backend unreachable", "backend", cfg.Backend, "err", err, "after", time.Since(start).Round(time.Millisecond))
		refuse(c, "421 Service not available, the FTP server cannot be reached.")
		return
	}
	var bc net.Conn = newCtlConn(dialed)
	if cfg.SendProxy != 0 {
		bc.SetWriteDeadline(time.Now().Add(cfg.DialTimeout))
		if err := writeProxyHeader(bc, cfg.SendProxy, e); err != nil {
			log.Error("PROXY header to backend failed", "err", err)
			bc.Close()
			refuse(c, "421 Service not available, the FTP server cannot be reached.")
			return
		}
		bc.SetWriteDeadline(time.Time{}) // the session's writes bound themselves (ctlconn.go)
	}

	var greeting *ftpproto.Reply
	btls := sessionBackendTLS(cfg.BackendTLS)
	if btls != nil {
		tc, g, err := backendTLS(s.ctx, bc, cfg, btls)
		if err != nil {
			log.Error("FTPS to the backend failed", "err", err)
			bc.Close()
			refuse(c, "421 Service not available, the FTP server cannot be reached securely.")
			return
		}
		bc, greeting = tc, &g
	}

	ss = newSession(s, raw, client, bc, e, log)
	ss.btls = btls
	ss.tlsCfg = stls
	if greeting != nil {
		ss.pregreeted = greeting
	}
	if implicit {
		ss.tlsOn.Store(true)
		ss.protP.Store(true)
	}
	s.mu.Lock()
	if s.ctx.Err() != nil { // Close ran while we dialed
		s.mu.Unlock()
		bc.Close()
		refuse(c, "421 Service shutting down.")
		return
	}
	if slot.ctx.Err() != nil { // shed while we dialed
		s.mu.Unlock()
		bc.Close()
		s.shedWhileDialing(c, log, peer.Addr(), d.Key)
		return
	}
	s.sessions[ss] = struct{}{}
	ss.slot = slot
	s.caps.attach(slot, ss)
	s.mu.Unlock()
	s.obs.SessionStart()
	untrack := s.live.track(ss)
	// ended runs once the session has ended, in whichever of its two
	// goroutines ends last (session.run); this goroutine may be gone.
	ended := func() {
		defer s.release(slot)
		defer func() {
			s.mu.Lock()
			delete(s.sessions, ss)
			s.caps.leavePre(slot)
			s.mu.Unlock()
			s.noAuthEnd(ss)
		}()
		defer s.obs.SessionEnd()
		untrack()
	}
	released = true
	ss.run(ended)
}

// backendDialer dials without TCP keep-alive — the daemon's control and
// data ports, and an active-mode client's data port: four setsockopt calls
// a connection saved (of the eleven a login made). A session's connection
// to the daemon ends with the client's, which login_timeout and
// idle_timeout bound; a data leg ends when idle for data_timeout.
var backendDialer = net.Dialer{KeepAlive: -1}

// refuse writes one reply and closes c. The write is bounded so a client
// that does not read cannot hold the goroutine.
func refuse(c net.Conn, line string) {
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte(line + "\r\n"))
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.Close()
}

// addrPortOf returns a as an AddrPort with IPv4-mapped IPv6 unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// start returns a random first port of r and the size of r, so the port
// announced to a client cannot be guessed from the previous one. For the
// zero range it returns (0, 1): one try on a kernel-chosen port.
func (r PortRange) start() (first, n int) {
	if r.Min == 0 || r.Max < r.Min {
		return 0, 1
	}
	n = int(r.Max) - int(r.Min) + 1
	return int(r.Min) + rand.IntN(n), n
}

// try calls bind with the ports of r from a random start (see start), at
// most 64 of them, until one succeeds; it returns the last error. For the
// zero range bind is called once, with port 0.
func (r PortRange) try(bind func(port int) error) error {
	first, n := r.start()
	var err error
	for i := 0; i < n && i < 64; i++ {
		port := 0
		if first != 0 {
			port = int(r.Min) + (first-int(r.Min)+i)%n
		}
		if err = bind(port); err == nil {
			return nil
		}
	}
	return err
}
