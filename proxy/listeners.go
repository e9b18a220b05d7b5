package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
)

// Listeners are the proxy's listening sockets — the control port (listen)
// and the implicit FTPS port (tls.implicit_listen with tls.mode =
// "implicit") — kept in step with the config: a reload that changes an
// address, or turns implicit TLS on or off, opens the new listener before
// anything else changes (a port that cannot be opened rejects the reload,
// which then changes nothing) and closes the old one once the new config is
// in force. Sessions already open are not tied to a listener and go on.
// Safe for concurrent use; use NewListeners.
type Listeners struct {
	srv  *Server
	log  *slog.Logger
	errc chan<- error // a listener that fails by itself reports here

	mu    sync.Mutex
	ports [2]*served // by role: plain, implicit
}

const (
	rolePlain = iota
	roleImplicit
)

var (
	roleName = [2]string{"listen", "tls.implicit_listen"}
	logKey   = [2]string{"listen", "implicit_tls"} // of the "listening" log line
)

// served is one listener and the address it was opened for.
type served struct {
	addr    string
	ln      net.Listener
	retired atomic.Bool // closed by a reload: its Serve's error is expected
}

// NewListeners returns the (empty) listener set of srv; a listener that
// fails by itself sends its error to errc (without blocking).
func NewListeners(srv *Server, log *slog.Logger, errc chan<- error) *Listeners {
	return &Listeners{srv: srv, log: log, errc: errc}
}

// PortPlan is what a reload does to the listeners: for each role, the
// listener to put in place (nil: keep as is) and whether the old one goes.
type PortPlan struct {
	open  [2]*served
	close [2]bool
}

// Prepare opens the listeners of listen and implicit (tls.implicit_listen;
// "" = none) that the set does not have yet. On error it closes those it
// opened and says which key could not be served.
func (l *Listeners) Prepare(listen, implicit string) (*PortPlan, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := &PortPlan{}
	want := [2]string{listen, implicit}
	for role, addr := range want {
		cur := l.ports[role]
		if cur != nil && cur.addr == addr {
			continue
		}
		p.close[role] = cur != nil
		if addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			l.Abandon(p)
			return nil, fmt.Errorf("%s: %w", roleName[role], err)
		}
		p.open[role] = &served{addr: addr, ln: ln}
	}
	return p, nil
}

// Abandon closes the listeners p opened (a reload that was rejected).
func (l *Listeners) Abandon(p *PortPlan) {
	for _, s := range p.open {
		if s != nil {
			s.ln.Close()
		}
	}
}

// Commit serves the listeners p opened and closes those it replaces. Call
// it once the proxy has the new config (an implicit listener needs its
// TLS config).
func (l *Listeners) Commit(p *PortPlan) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for role := roleImplicit; role >= rolePlain; role-- { // the control port's line last: it says "ready"
		old := l.ports[role]
		if p.close[role] && old != nil {
			old.retired.Store(true)
			old.ln.Close()
			l.ports[role] = nil
			l.log.Info("stopped listening", "key", roleName[role], "address", old.addr)
		}
		if s := p.open[role]; s != nil {
			l.ports[role] = s
			l.serve(role, s)
		}
	}
}

func (l *Listeners) serve(role int, s *served) {
	serve := l.srv.Serve
	if role == roleImplicit {
		serve = l.srv.ServeImplicitTLS
	}
	l.log.Info("listening", logKey[role], s.ln.Addr().String())
	go func() {
		err := serve(s.ln)
		if s.retired.Load() && !errors.Is(err, ErrServerClosed) {
			return // closed by a reload
		}
		select {
		case l.errc <- err:
		default: // run has its answer already
		}
	}()
}

// Addrs returns the addresses the control and the implicit FTPS listeners
// are bound to ("" for one not open).
func (l *Listeners) Addrs() (listen, implicit string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var a [2]string
	for role, s := range l.ports {
		if s != nil {
			a[role] = s.ln.Addr().String()
		}
	}
	return a[rolePlain], a[roleImplicit]
}
