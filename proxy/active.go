package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// activeMode handles PORT and EPRT. The client's address must be its own
// IP and a port ≥ 1024 (RFC 2577 bounce guard), else nothing is dialed. The
// client's PORT is never passed through: the proxy listens on its own side
// for the daemon's connection and sends the daemon a PORT of its own.
func (s *session) activeMode(cmd ftpproto.Command) bool {
	cfg := s.srv.config()
	switch {
	case s.epsvAll:
		return s.replyLocal(ftpproto.NewReply(503, "EPSV ALL in effect; "+cmd.Verb+" refused."))
	case !cfg.Active:
		return s.replyLocal(ftpproto.NewReply(502, "Active mode is not offered by this server; use PASV or EPSV."))
	}
	var target netip.AddrPort
	var err error
	if cmd.Verb == "PORT" {
		target, err = ftpproto.ParsePORT(cmd.Arg)
	} else {
		target, err = ftpproto.ParseEPRT(cmd.Arg)
	}
	switch {
	case errors.Is(err, ftpproto.ErrUnsupportedFamily):
		return s.replyLocal(ftpproto.NewReply(522, "Network protocol not supported, use (1,2)."))
	case err != nil:
		return s.replyLocal(ftpproto.NewReply(501, "Syntax error in "+cmd.Verb+" argument."))
	}
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	if target.Addr() != s.peer.Addr() {
		s.srv.reject(s.log, "active mode to a foreign address", "target", target.String())
		return s.replyLocal(ftpproto.NewReply(500, "Illegal "+cmd.Verb+" command: the address must be your own."))
	}
	if target.Port() < 1024 {
		s.srv.reject(s.log, "active mode to a privileged port", "target", target.String())
		return s.replyLocal(ftpproto.NewReply(504, "Illegal "+cmd.Verb+" command: port below 1024."))
	}

	// Listen where the daemon will connect: our local IP on the backend
	// connection, the address the daemon sees as its client.
	local := addrPortOf(s.backend.LocalAddr()).Addr()
	l, err := net.Listen("tcp", net.JoinHostPort(local.String(), "0"))
	if err != nil {
		s.log.Error("active mode: cannot listen for the daemon", "err", err)
		return s.replyLocal(ftpproto.NewReply(425, "Can't open data connection."))
	}
	ln := l.(*net.TCPListener)
	if !s.setDataListener(ln) {
		return false
	}
	// The daemon may connect, send and reply 226 before acceptActive
	// runs: the leg is open from now on (quirks.go).
	end := s.xfer.begin()
	ours := netip.AddrPortFrom(local, uint16(ln.Addr().(*net.TCPAddr).Port))
	fwd := ftpproto.Command{Verb: "EPRT", Arg: ftpproto.FormatEPRT(ours)}
	if local.Is4() {
		arg, _ := ftpproto.FormatPORT(ours)
		fwd = ftpproto.Command{Verb: "PORT", Arg: arg}
	}
	s.data.Add(1)
	go func() {
		defer s.data.Done()
		defer end()
		s.guard("active data leg", func() { s.acceptActive(ln, target, end) }, nil)
	}()
	return s.forward(fwd, fwd.Verb, nil)
}

// acceptActive waits for the daemon's data connection (from the daemon's
// address only), then dials the client's announced address from the
// address the client reached, and relays.
func (s *session) acceptActive(ln *net.TCPListener, target netip.AddrPort, downloaded func()) {
	cfg := s.srv.config()
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(cfg.DataTimeout))
	daemon := addrPortOf(s.backend.RemoteAddr()).Addr()
	var bc *net.TCPConn
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Info("no data connection from the daemon", "err", err)
			}
			return
		}
		if addrPortOf(c.RemoteAddr()).Addr() == daemon {
			bc = c
			break
		}
		s.srv.reject(s.log, "data connection from foreign address", "from", c.RemoteAddr().String())
		c.Close()
	}
	ln.Close()
	if !s.trackData(bc) {
		return
	}
	defer s.untrackData(bc)
	c := s.dialData(s.ends.local.Addr(), target, "client")
	if c == nil {
		return
	}
	defer s.untrackData(c)
	s.secureAndRelay(c, bc, downloaded)
}
