package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// announceAddr is the address put in 227/229 replies: the configured
// passive address, else the local address the client reached.
func (s *session) announceAddr() netip.Addr {
	if a := s.srv.config().PassiveAddr; a.IsValid() {
		return a.Unmap()
	}
	return s.ends.reached.Addr()
}

// replyTooManyPorts answers a PASV/EPSV of a key that holds
// Config.MaxPortsPerKey passive listeners already.
var replyTooManyPorts = ftpproto.NewReply(425, "Too many data ports held by your address; close some first.")

// openPassive answers the backend's 227/229 with a listener of the proxy's
// own and returns the rewritten reply (or a 425 when that fails). The key's
// cap of passive listeners was checked before the PASV/EPSV was forwarded
// (passiveFull); a 425 here over the cap happens only when sessions of one
// key raced for the last place, and the daemon's port is then left to the
// daemon's own timeout. The
// backend's data port is always dialed on the backend's control address:
// a daemon cannot make the proxy connect elsewhere (docs/design.md: 227 parsing).
func (s *session) openPassive(verb string, r ftpproto.Reply) ftpproto.Reply {
	var port uint16
	if r.Code == 227 {
		ap, err := ftpproto.ParsePASV(r.Text())
		if err != nil && !errors.Is(err, ftpproto.ErrUnspecifiedAddr) {
			s.log.Error("invalid passive reply from backend", "err", err)
			return ftpproto.NewReply(425, "Can't open passive connection.")
		}
		port = ap.Port()
	} else {
		p, err := ftpproto.ParseEPSV(r.Text())
		if err != nil {
			s.log.Error("invalid passive reply from backend", "err", err)
			return ftpproto.NewReply(425, "Can't open passive connection.")
		}
		port = p
	}
	if port == 0 {
		s.log.Error("invalid passive reply from backend", "reply", r.Text())
		return ftpproto.NewReply(425, "Can't open passive connection.")
	}
	target := netip.AddrPortFrom(addrPortOf(s.backend.RemoteAddr()).Addr(), port)

	if why := s.relayReason(); why == "" { // kernel.go
		if out, ok := s.openKernel(verb, target); ok {
			return out
		}
	} else if why != "off" && !s.relayLogged {
		s.relayLogged = true
		s.log.Info("passive data relayed, not by kernel NAT", "why", why)
	}
	ln, why := s.holdPassive() // passive.go
	switch why {
	case "cap":
		return replyTooManyPorts
	case "free":
		return ftpproto.NewReply(425, "Can't open passive connection: no port free.")
	}
	lport := uint16(ln.Addr().(*net.TCPAddr).Port)
	out := ftpproto.FormatEPSV(lport)
	var err error
	if verb == "PASV" {
		out, err = ftpproto.FormatPASV(netip.AddrPortFrom(s.announceAddr(), lport))
		if err != nil {
			ln.Close()
			return ftpproto.NewReply(425, "Can't open passive connection: "+err.Error())
		}
	}
	if !s.setDataListener(ln) {
		return ftpproto.NewReply(425, "Can't open passive connection.")
	}
	s.data.Add(1)
	go func() {
		defer s.data.Done()
		s.guard("passive data leg", func() { s.acceptData(ln, target) }, nil)
	}()
	return out
}

// listenPassive binds a port of Config.PassivePorts on the local address
// the client reached, trying the range from a random start.
func (s *session) listenPassive() (*net.TCPListener, error) {
	ip := s.ends.local.Addr()
	var ln *net.TCPListener
	err := s.srv.config().PassivePorts.try(func(port int) error {
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	})
	return ln, err
}

// setDataListener makes ln (a passive listener, a kernel mapping or an
// active-mode listener) the session's one pending data port, closing the
// one before it. It reports false once the session has ended.
func (s *session) setDataListener(ln io.Closer) bool {
	h, mapped := ln.(*heldMapping)
	s.dmu.Lock()
	old, oldConn := s.dataLn, s.kernelNext
	ended := s.dataDone
	if !ended {
		s.dataLn = ln
		s.kernelNext = nil
		if mapped {
			s.kernelNext = h.conn
		}
	}
	s.dmu.Unlock()
	if old != nil {
		old.Close() // a mapping's netlink round trip: outside the lock
	}
	if ended {
		ln.Close()
		if mapped {
			h.conn.discard(s)
		}
		return false
	}
	if oldConn != nil {
		oldConn.discard(s) // its port was never used for a transfer
	}
	return true
}

// closeData closes the pending data port and the data connections (on
// ABOR, and for good when the session ends). A kernel mapping's
// connection, which no transfer has used, is no longer counted; a
// transfer the kernel carries is counted at its final reply (kernel.go).
func (s *session) closeData(final bool) {
	s.dmu.Lock()
	if final {
		s.dataDone = true
	}
	ln := s.dataLn
	s.dataLn = nil
	next := s.kernelNext
	s.kernelNext = nil
	for c := range s.dataConn {
		c.Close()
		delete(s.dataConn, c)
	}
	s.dmu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if next != nil {
		next.discard(s)
	}
}

// trackData registers c so that closeData reaches it.
func (s *session) trackData(c net.Conn) bool {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if s.dataDone {
		c.Close()
		return false
	}
	s.dataConn[c] = struct{}{}
	return true
}

func (s *session) untrackData(c net.Conn) {
	s.dmu.Lock()
	delete(s.dataConn, c)
	s.dmu.Unlock()
	c.Close()
}

// acceptData waits for the client's data connection, refusing any from
// another IP than the control connection's (no port stealing), then dials
// the backend's data port from the same local IP as the control connection
// (vsftpd refuses others) and relays.
func (s *session) acceptData(ln *heldListener, target netip.AddrPort) {
	cfg := s.srv.config()
	// The data leg is open from now: a 2xx to a transfer waits for it even
	// when the client has connected but the accept has not returned yet.
	end := s.xfer.begin()
	defer end()
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(cfg.DataTimeout))
	var c net.Conn
	for {
		tc, err := ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Info("no data connection", "err", err)
			}
			return
		}
		var from netip.Addr
		c, from, err = s.dataPeer(tc)
		if err == nil && from == s.peer.Addr() {
			break
		}
		s.srv.reject(s.log, "data connection from foreign address", "from", from.String(), "err", err)
		c.Close()
	}
	ln.Close()
	if !s.trackData(c) {
		return
	}
	defer s.untrackData(c)

	bc := s.dialData(addrPortOf(s.backend.LocalAddr()).Addr(), target, "daemon")
	if bc == nil {
		return
	}
	defer s.untrackData(bc)
	s.secureAndRelay(c, bc, end)
}

// dialData dials a data leg to target from local (the daemon: from the
// control connection's IP, which vsftpd insists on; the client: from the
// address it reached) and tracks it. nil: it failed (logged).
func (s *session) dialData(local netip.Addr, target netip.AddrPort, to string) net.Conn {
	d := backendDialer // no keep-alive: the relay's idle watch ends a dead leg
	d.Timeout, d.LocalAddr = s.srv.config().DialTimeout, &net.TCPAddr{IP: local.AsSlice()}
	c, err := d.DialContext(s.srv.ctx, "tcp", target.String())
	if err != nil {
		s.log.Info("data connection failed", "to", to, "target", target.String(), "err", err)
		return nil
	}
	if !s.trackData(c) {
		return nil
	}
	return c
}

// secureAndRelay puts TLS on each data leg that needs it (PROT P with the
// client, backend_tls with the daemon), then relays.
func (s *session) secureAndRelay(client, backend net.Conn, done func()) {
	cc, err := s.secureData(client)
	if errors.Is(err, errNoReuse) {
		s.log.Error("PROT P data connection refused: no TLS session reuse", "err", err)
	} else if err != nil {
		s.log.Info("TLS handshake on data connection failed", "err", err)
	}
	if err != nil {
		// The daemon's leg is reset, not closed: an upload must end in
		// the daemon's error (vsftpd: 426), never an empty file.
		if tc, ok := backend.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		return
	}
	bc, err := s.secureBackendData(backend)
	if err != nil {
		s.log.Error("TLS handshake on the daemon's data connection failed", "err", err)
		return
	}
	s.relayData(cc, bc, done)
}

// relayData copies both ways between the client's and the backend's data
// connections until both ways have ended; downloaded is called when the
// backend → client way has. A relay where no byte moves either way for
// DataTimeout is closed, both legs (docs/design.md rule 5): the transfer's
// reply is then whatever the daemon sends.
func (s *session) relayData(client, backend net.Conn, downloaded func()) {
	s.srv.obs.DataConn(false)
	s.transfers.Add(1)
	s.setClientDeadline(time.Time{})
	defer func() {
		s.transfers.Add(-1)
		s.touch()
		s.armClientDeadline()
	}()
	errc := make(chan error, 2)
	obs := s.srv.obs
	w := &idleWatch{timeout: s.srv.config().DataTimeout}
	callTestHook("data", "")
	half := func(i int, dst, src net.Conn, upload bool, done func()) {
		s.guard("data relay", func() {
			w.copyHalf(i, dst, src, errc, func(n int64) { obs.Bytes(upload, n) }, done)
		}, func() { errc <- errPanicked })
	}
	go half(0, backend, client, true, nil)         // upload
	go half(1, client, backend, false, downloaded) // download
	for range 2 {
		if err := <-errc; err != nil {
			if errors.Is(err, errDataIdle) {
				s.log.Info("data connection idle, closed", "timeout", w.timeout)
			}
			// A reset, a closed leg or an idle relay: end both ways at once.
			client.Close()
			backend.Close()
		}
	}
}

// relayChunk is the most one way of a relay copies between two looks at
// its idle state; io.CopyN keeps the kernel splice between two TCP sockets.
// Large, because each chunk costs a deadline and a splice set-up: at 32 KiB
// a plain RETR through ftpguard cost 1.5 s of CPU per GiB and ran at 0.36 of
// direct (bench, 512 MiB), against 0.58 s/GiB and 0.52 before the idle
// watch. A chunk cut short by its deadline after moving bytes counts as
// progress (copyHalf), so a slow transfer is never taken for an idle one;
// an idle one is still seen within two data_timeouts.
const relayChunk = 8 << 20

// errPanicked ends a relay half that panicked (recover.go).
var errPanicked = errors.New("proxy: data relay panicked")

// relayBuf is the buffer of one way of a relay with a TLS leg, which
// cannot splice, once that way carries a bulk transfer: large, so that the
// TLS leg is written full records (16 KiB) many at a time, in one system
// call (recordBatcher), and the plain leg is read in as few system calls
// as its socket allows. BenchmarkTLSLeg (a RETR's way, loopback): 256 KiB
// relayed 0.91–0.99 GB/s for 7.1–8.0 CPU seconds a 4 GiB run, 1 MiB
// 1.19–1.21 GB/s for 6.6 (docs/benchmarks.md). io.CopyN would allocate a
// 32 KiB buffer every relayChunk and write two records a time.
const relayBuf = 1 << 20

// relaySmall is the buffer a way starts with: most ways of a relay carry
// little or nothing (the client's side of a RETR, a listing), and a way
// takes a relayBuf only once a read fills this one, so an idle or small
// transfer holds 32 KiB, not 1 MiB.
const relaySmall = 32 << 10

// relayBufs recycles the relayBuf buffers of ended relays.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBuf); return &b }}

// errDataIdle ends a relay in which no byte moved for the idle timeout.
var errDataIdle = errors.New("proxy: data connection idle")

// idleWatch decides when a relay is idle: each way reads with a deadline of
// timeout; a way whose deadline passes with nothing read is idle, and the
// relay ends once both ways are idle, or one is idle and the other has
// ended or has been stuck writing (no report) for twice the timeout. A way
// that moves bytes is never idle, however slowly it moves them.
type idleWatch struct {
	timeout time.Duration

	mu     sync.Mutex
	idle   [2]bool
	ended  [2]bool
	report [2]time.Time // a way's last look at its state
}

// look records what way i saw in its last read: moved bytes, or none
// within the timeout. It reports whether the relay is idle.
func (w *idleWatch) look(i int, moved bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	w.report[i] = now
	w.idle[i] = !moved
	if moved {
		return false
	}
	o := 1 - i
	stuck := !w.report[o].IsZero() && now.Sub(w.report[o]) >= 2*w.timeout
	return w.idle[o] || w.ended[o] || stuck
}

func (w *idleWatch) end(i int) {
	w.mu.Lock()
	w.ended[i] = true
	w.mu.Unlock()
}

// copyHalf copies src to dst (way i), then half-closes dst so its reader
// sees EOF, and calls done if not nil. Between two *net.TCPConn io.CopyN
// lets the kernel splice. The error is nil at src's EOF, errDataIdle when
// the relay went idle.
func (w *idleWatch) copyHalf(i int, dst, src net.Conn, errc chan<- error, count func(int64), done func()) {
	var total int64
	var err error
	copyChunk := func() (int64, error) { return io.CopyN(dst, src, relayChunk) }
	if !spliceable(dst) || !spliceable(src) {
		buf := make([]byte, relaySmall)
		var big *[]byte
		defer func() {
			if big != nil {
				relayBufs.Put(big)
			}
		}()
		copyChunk = func() (int64, error) {
			n, err := copyBuffered(dst, src, buf)
			if n == int64(len(buf)) && big == nil { // a bulk transfer
				big = relayBufs.Get().(*[]byte)
				buf = *big
			}
			return n, err
		}
	}
	w.look(i, true)
	for {
		src.SetReadDeadline(time.Now().Add(w.timeout))
		n, e := copyChunk()
		total += n
		if e == nil {
			w.look(i, true)
			continue
		}
		if errors.Is(e, os.ErrDeadlineExceeded) {
			if w.look(i, n > 0) {
				err = errDataIdle
				break
			}
			continue
		}
		if e != io.EOF {
			err = e
		}
		break
	}
	w.end(i)
	count(total)
	closeWrite(dst)
	if done != nil {
		done()
	}
	errc <- err
}

// spliceable reports whether c is a plain TCP socket, which io.CopyN
// relays with the kernel's splice.
func spliceable(c net.Conn) bool {
	_, ok := c.(*net.TCPConn)
	return ok
}

// copyBuffered is one step of a relay with a TLS leg: one read of src into
// buf, all of it written to dst (a TLS leg's records in one system call,
// see recordBatcher). Its results are io.CopyN's: a nil error when bytes
// moved, io.EOF at src's end.
func copyBuffered(dst, src net.Conn, buf []byte) (int64, error) {
	n, err := src.Read(buf)
	if n > 0 {
		if werr := writeBatched(dst, buf[:n]); werr != nil {
			return 0, werr
		}
		if err == io.EOF {
			return int64(n), nil // the next read reports the end
		}
	}
	return int64(n), err
}

// closeWrite half-closes c if it can.
func closeWrite(c net.Conn) {
	switch c := c.(type) {
	case interface{ CloseWrite() error }:
		c.CloseWrite()
	case interface{ TCPConn() (*net.TCPConn, bool) }:
		if tc, ok := c.TCPConn(); ok {
			tc.CloseWrite()
		}
	}
}
