package proxy

import (
	"net"
	"net/netip"
	"sync"
)

// DefaultMaxPortsPerKey is Config.MaxPortsPerKey's default.
const DefaultMaxPortsPerKey = 4

// portHolds counts the passive listeners held per address key ([limits]
// prefix: the limiter's Key), so that one address (or one /64) cannot hold
// the whole passive range by sending PASV without ever connecting. The zero
// value is ready; it is safe for concurrent use.
type portHolds struct {
	mu sync.Mutex
	n  map[netip.Prefix]int
}

func (h *portHolds) count(k netip.Prefix) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[k]
}

// take counts one more listener of k if k holds fewer than max.
func (h *portHolds) take(k netip.Prefix, max int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n[k] >= max {
		return false
	}
	if h.n == nil {
		h.n = make(map[netip.Prefix]int)
	}
	h.n[k]++
	return true
}

func (h *portHolds) give(k netip.Prefix) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n[k]--; h.n[k] <= 0 {
		delete(h.n, k)
	}
}

// heldListener is a passive listener counted in its key's holds until it
// is closed — by the accept of the data connection, data_timeout without
// one, a later PASV/EPSV/PORT of the session, ABOR or the session's end.
type heldListener struct {
	*net.TCPListener
	holds *portHolds
	key   netip.Prefix
	once  sync.Once
}

// Close closes the listener and gives its hold back (once).
func (l *heldListener) Close() error {
	err := l.TCPListener.Close()
	l.once.Do(func() { l.holds.give(l.key) })
	return err
}

// maxPortsPerKey is the cap in force.
func (s *session) maxPortsPerKey() int {
	if n := s.srv.config().MaxPortsPerKey; n > 0 {
		return n
	}
	return DefaultMaxPortsPerKey
}

// portKey is the key the session's passive ports are counted under.
func (s *session) portKey() netip.Prefix { return s.srv.lim.Key(s.peer.Addr()) }

// passiveFull reports whether the session's key holds its cap of passive
// listeners, not counting the session's own pending one (a new PASV
// replaces it). Checked before PASV/EPSV is forwarded: over the cap the
// client gets a 425 from the proxy and the daemon opens no port.
func (s *session) passiveFull() bool {
	held := 0
	s.dmu.Lock()
	switch s.dataLn.(type) {
	case *heldListener, *heldMapping:
		held = 1
	}
	s.dmu.Unlock()
	if s.srv.ports.count(s.portKey())-held < s.maxPortsPerKey() {
		return false
	}
	s.log.Warn("passive ports refused: the address holds its cap", "key", s.portKey().String(), "max_ports_per_key", s.maxPortsPerKey())
	return true
}

// refusePassive is the proxy's own answer to a PASV/EPSV over the cap.
func (s *session) refusePassive() bool {
	return s.replyLocal(replyTooManyPorts)
}

// dropDataListener closes the session's pending data port (its hold given
// back) before a new passive port is taken for the same session.
func (s *session) dropDataListener() {
	s.dmu.Lock()
	ln := s.dataLn
	s.dataLn = nil
	s.dmu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// takeHold counts one more passive port of the session's key, unless the
// key holds its cap (logged).
func (s *session) takeHold() (netip.Prefix, bool) {
	k := s.portKey()
	if !s.srv.ports.take(k, s.maxPortsPerKey()) {
		s.log.Warn("passive ports refused: the address holds its cap", "key", k.String(), "max_ports_per_key", s.maxPortsPerKey())
		return k, false
	}
	return k, true
}

// holdPassive opens a passive listener counted in the session's key's
// holds; nil and why when the key is at its cap (another session of the
// key took the last place since passiveFull) or no port is free.
func (s *session) holdPassive() (*heldListener, string) {
	s.dropDataListener()
	k, ok := s.takeHold()
	if !ok {
		return nil, "cap"
	}
	ln, err := s.listenPassive()
	if err != nil {
		s.srv.ports.give(k)
		s.log.Error("no passive port free", "err", err)
		return nil, "free"
	}
	return &heldListener{TCPListener: ln, holds: &s.srv.ports, key: k}, ""
}
