package proxy

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/nftnat"
)

// The kernel data path ([passive] data_path = "nftables"): a plain passive
// transfer is not relayed. On the daemon's 227/229 the proxy reserves one
// of its passive ports (bound, never listened on), has the kernel map the
// first connection from exactly the client's address to that port onto the
// daemon's passive port, from the proxy's end of the control connection
// (what vsftpd insists on), and announces the port as always. The bytes
// then never enter user space. Everything else about the session is
// unchanged: the gate, budgets, the pairing of replies, the bounce guard,
// the cap of ports per key (the port is held while mapped), the bytes
// counted (the kernel counts them: countKernel).
//
// The mapping is removed at the transfer's 1xx — the daemon has accepted
// its one data connection by then (vsftpd, proftpd and pure-ftpd accept
// before they send it), and conntrack carries the established connection
// on — or at a new PASV/EPSV/PORT, ABOR, PROT P, the session's end, or
// data_timeout without a transfer (the kernel drops it a little later by
// itself). A transfer command refused without a 1xx (550: no such file)
// leaves it in place for the next one, as the relay leaves its listener. A
// second connection, from another address or after the 1xx, reaches the
// reserved port and is refused; one from the client's address before the
// 1xx reaches the daemon's closed passive listener and is refused there.
//
// Relayed instead, as before: TLS on the data connection (PROT P, or
// backend_tls), active mode, clients behind a trusted balancer (their data
// connections come from the balancer with a PROXY header), a client and a
// daemon of different address families, scoped IPv6 addresses, and any
// transfer whose port could not be reserved or mapping could not be made.

// DataPath hands plain passive data connections to the kernel instead of
// relaying them: an *nftnat.Table. Map makes the first connection from
// m.Client to m.Local reach m.Daemon from m.Source, until Unmap or timeout;
// Unmap of a mapping already gone is not an error. Both are called from a
// session's goroutines (never under its data lock), may block for a
// kernel round trip, and must be safe for concurrent use.
type DataPath interface {
	Map(m nftnat.Mapping, timeout time.Duration) error
	Unmap(m nftnat.Mapping) error
	// Cut resets the connection m let through, both ways, whatever its
	// mapping's state (nftnat.Table.Cut).
	Cut(m nftnat.Mapping, timeout time.Duration) error
	// Release stops counting the bytes of the connections m let
	// through, which Map began, and returns them, first waiting at most
	// wait (or until stop is closed) for the daemon's way to end
	// (nftnat.Table.Release). nftnat.ErrNoCounting: it does not count.
	Release(m nftnat.Mapping, wait time.Duration, stop <-chan struct{}) (nftnat.Counts, error)
}

// SetDataPath makes p carry the plain passive transfers from the next
// PASV/EPSV on. nil, the default: every transfer is relayed.
func (s *Server) SetDataPath(p DataPath) {
	if p == nil {
		s.dataPath.Store(nil)
		return
	}
	s.dataPath.Store(&p)
}

// kernel returns the data path in use; nil: relay only.
func (s *Server) kernel() DataPath {
	if p := s.dataPath.Load(); p != nil {
		return *p
	}
	return nil
}

// mapSlack is how much longer than data_timeout the kernel keeps a mapping
// the proxy has not removed: the proxy removes it at data_timeout, the
// kernel only if the proxy is gone.
const mapSlack = 2 * time.Second

// relayReason says why the session's next passive transfer is relayed
// rather than handed to the kernel; "" when it may be handed over.
func (s *session) relayReason() string {
	daemon := addrPortOf(s.backend.RemoteAddr()).Addr()
	switch {
	case s.srv.kernel() == nil:
		return "off"
	case s.protP.Load():
		return "PROT P: the data connection is TLS"
	case s.btls != nil:
		return "backend_tls: the daemon's data connection is TLS"
	case s.ends.viaLB:
		return "client behind a balancer: its data connections carry a PROXY header"
	case s.peer.Addr().Is4() != daemon.Is4() || s.ends.local.Addr().Is4() != daemon.Is4():
		return "the client's and the daemon's address families differ"
	case s.ends.local.Addr().Zone() != "" || daemon.Zone() != "":
		return "scoped IPv6 address"
	}
	return ""
}

// openKernel answers the daemon's 227/229 (its passive port at target) by
// handing the data connection to the kernel, and returns the rewritten
// reply (or a 425). ok false: no port could be reserved or the mapping
// could not be made (logged); the caller relays instead.
func (s *session) openKernel(verb string, target netip.AddrPort) (r ftpproto.Reply, ok bool) {
	s.dropDataListener()
	k, ok := s.takeHold()
	if !ok {
		return replyTooManyPorts, true
	}
	cfg := s.srv.config()
	local := s.ends.local.Addr()
	rp, err := reservePort(local, cfg.PassivePorts)
	if err != nil {
		// Relayed instead: a port with a connection in TIME_WAIT (left by
		// a relayed transfer) cannot be reserved, but can be listened on.
		s.srv.ports.give(k)
		s.log.Warn("kernel data path failed; relaying this transfer", "err", err)
		return ftpproto.Reply{}, false
	}
	m := nftnat.Mapping{Client: s.peer.Addr(), Local: netip.AddrPortFrom(local, rp.port), Daemon: target,
		Source: addrPortOf(s.backend.LocalAddr()).Addr()}
	path := s.srv.kernel()
	if path == nil { // turned off since relayReason
		rp.Close()
		s.srv.ports.give(k)
		return ftpproto.Reply{}, false
	}
	if err := path.Map(m, cfg.DataTimeout+mapSlack); err != nil {
		rp.Close()
		s.srv.ports.give(k)
		s.log.Warn("kernel data path failed; relaying this transfer", "err", err)
		return ftpproto.Reply{}, false
	}
	h := &heldMapping{conn: &kernelConn{m: m, path: path}, port: rp, holds: &s.srv.ports, key: k, s: s}
	h.timer = time.AfterFunc(cfg.DataTimeout, func() { s.expireMapping(h) })
	out := ftpproto.FormatEPSV(rp.port)
	if verb == "PASV" {
		if out, err = ftpproto.FormatPASV(netip.AddrPortFrom(s.announceAddr(), rp.port)); err != nil {
			h.Close()
			h.conn.discard(s)
			return ftpproto.NewReply(425, "Can't open passive connection: "+err.Error()), true
		}
	}
	if !s.setDataListener(h) {
		return ftpproto.NewReply(425, "Can't open passive connection."), true
	}
	s.log.Debug("passive data by kernel NAT", "port", rp.port, "daemon", target.String())
	return out, true
}

// heldMapping is a passive port handed to the kernel: reserved (bound, not
// listening), counted in its key's holds, and mapped. Close removes the
// mapping, frees the port and gives the hold back, once.
type heldMapping struct {
	conn  *kernelConn // its mapping and data path; counted on after the mapping is removed
	port  *reservedPort
	holds *portHolds
	key   netip.Prefix
	s     *session // for its log
	timer *time.Timer
	once  sync.Once
}

// Close removes the mapping (a netlink round trip: never call it under
// the session's dmu), frees the port and gives the hold back.
func (h *heldMapping) Close() error {
	var err error
	h.once.Do(func() {
		h.timer.Stop()
		if err = h.conn.path.Unmap(h.conn.m); err != nil {
			// The kernel drops it after data_timeout anyway.
			h.s.log.Warn("kernel data mapping could not be removed", "err", err)
		}
		h.port.Close()
		h.holds.give(h.key)
	})
	return err
}

// expireMapping removes h at data_timeout if it is still pending.
func (s *session) expireMapping(h *heldMapping) {
	s.dmu.Lock()
	if s.dataLn == h {
		s.dataLn = nil
	}
	s.dmu.Unlock()
	h.Close()
}

// dropMapping removes the pending kernel mapping, if any (PROT P: the next
// data connection must be TLS, through the relay).
func (s *session) dropMapping() {
	s.dmu.Lock()
	h, ok := s.dataLn.(*heldMapping)
	if ok {
		s.dataLn = nil
	}
	s.dmu.Unlock()
	if ok {
		h.Close()
	}
}

// transferBegins is told of a 1xx reply of the daemon: the transfer has
// its data connection. A pending mapping is removed (nothing else may
// connect); a transfer in the kernel counts as a transfer for the idle
// timeout (armClientDeadline) until its final reply, where its bytes are
// counted. Only relayReplies calls it.
func (s *session) transferBegins() {
	s.dmu.Lock()
	h, ok := s.dataLn.(*heldMapping)
	if ok {
		s.dataLn = nil
	}
	kc := s.kernelNext
	s.kernelNext = nil
	var old *kernelConn
	if kc != nil {
		// Until the final reply: counted then; a ban under "all-now"
		// cuts it. Its mapping may have expired since the client
		// connected: conntrack carries the connection all the same.
		old, s.kernelRun = s.kernelRun, kc
	}
	s.dmu.Unlock()
	if ok {
		h.Close()
	}
	if old != nil { // a transfer that never got its final reply
		s.countKernelLater(old)
	}
	if kc != nil && !s.kernelXfer {
		s.srv.obs.DataConn(true)
		s.kernelXfer = true
		s.transfers.Add(1)
		s.setClientDeadline(time.Time{}) // never behind its back: see TestKernelPathIdleAfterShortTransfer
	}
}

// transferEnds is told of a final reply of the daemon, about to be
// delivered. A transfer in the kernel has ended: its bytes are counted —
// once the kernel has seen the daemon's way end, at most data_timeout
// after the reply, which waits (as the relay holds a transfer's reply
// until it has relayed the data: vsftpd replies 226 while its socket is
// still sending) — and idle_timeout counts from then, as after a relayed
// one (relayData). A mapping still pending — the transfer command was
// refused without a 1xx (550) — stays for the next transfer command, until
// data_timeout, as a relayed session's passive listener does
// (TestKernelDataPathRetryAfterRefusal). Only relayReplies calls it.
func (s *session) transferEnds() {
	s.dmu.Lock()
	kc := s.kernelRun
	s.kernelRun = nil
	s.dmu.Unlock()
	if kc != nil {
		s.countKernel(kc, s.srv.config().DataTimeout, s.done)
	}
	if s.kernelXfer {
		s.kernelXfer = false
		s.transfers.Add(-1)
		s.touch()
		s.armClientDeadline()
	}
}

// kernelConn is what a kernel mapping lets through: the data connection
// of one transfer, whose bytes the data path counts from the mapping's Map
// until its Release — at the transfer's final reply (countKernel), or, with
// no transfer, when the session sets up another data port or ends
// (discard). Release runs once.
type kernelConn struct {
	m    nftnat.Mapping
	path DataPath
	once sync.Once
}

// countKernel counts kc's bytes (docs/operating.md, Kernel data path):
// waits at most wait, or until stop is closed, for the kernel to see the
// daemon's way end, then adds the payload each way carried to the bytes
// the relay counts (Observer.Bytes). Once per kernelConn; a netlink round
// trip or more: never call it holding a lock others wait on.
func (s *session) countKernel(kc *kernelConn, wait time.Duration, stop <-chan struct{}) {
	kc.once.Do(func() {
		n, err := kc.path.Release(kc.m, wait, stop)
		if err != nil {
			if releaseFailed(err) {
				s.log.Warn("kernel transfer's bytes could not be counted", "err", err)
			}
			return
		}
		s.srv.obs.Bytes(true, int64(n.Up))
		s.srv.obs.Bytes(false, int64(n.Down))
		s.log.Debug("kernel transfer bytes", "upload", n.Up, "download", n.Down, "exact", n.Exact, "connections", n.Conns)
	})
}

// countKernelLater counts kc in a goroutine of its own, waiting at most
// data_timeout for the daemon's way to end, or until the server stops: for
// a transfer whose final reply will not come (superseded, cut, or its
// session over).
func (s *session) countKernelLater(kc *kernelConn) {
	go s.countKernel(kc, s.srv.config().DataTimeout, s.srv.ctx.Done())
}

// releaseFailed reports whether err, from DataPath.Release, is a failure
// to log: not a data path that does not count, nor one closed already.
func releaseFailed(err error) bool {
	return !errors.Is(err, nftnat.ErrNoCounting) && !errors.Is(err, nftnat.ErrClosed)
}

// discard stops counting kc's connection, which carried no transfer.
func (kc *kernelConn) discard(s *session) {
	kc.once.Do(func() {
		if _, err := kc.path.Release(kc.m, 0, nil); err != nil && releaseFailed(err) {
			s.log.Warn("kernel data mapping's counters could not be removed", "err", err)
		}
	})
}

// endKernel, at the session's end, stops counting the connection of a data
// port never used and counts a transfer the kernel still carries (the
// client left in mid-transfer, a ban ended the session): in a goroutine of
// its own, waiting at most data_timeout for the daemon's way to end.
func (s *session) endKernel() {
	s.dmu.Lock()
	next, run := s.kernelNext, s.kernelRun
	s.kernelNext, s.kernelRun = nil, nil
	s.dmu.Unlock()
	if next != nil {
		next.discard(s)
	}
	if run != nil {
		s.countKernelLater(run)
	}
}

// cutKernelTransfer resets the transfer the kernel carries for the
// session, if any (a ban under end_sessions_on_ban = "all-now": the
// session's connections are closed, but the kernel would carry its data
// connection on to the end). Both the client and the daemon get a reset;
// its bytes are counted up to it. A netlink round trip: never call it
// holding a lock others wait on.
func (s *session) cutKernelTransfer() {
	s.dmu.Lock()
	kc := s.kernelRun
	s.kernelRun = nil
	s.dmu.Unlock()
	if kc == nil {
		return
	}
	if err := kc.path.Cut(kc.m, s.srv.config().DataTimeout+mapSlack); err != nil {
		s.log.Warn("kernel transfer could not be cut; the kernel carries it to its end", "err", err)
	} else {
		s.log.Info("kernel transfer cut", "daemon", kc.m.Daemon.String())
	}
	s.countKernelLater(kc)
}
