package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// defaultProxyHeaderTimeout bounds the wait for a trusted balancer's PROXY
// header: a trusted peer that never sends one cannot hold a goroutine and a
// descriptor for ever (slow-loris on the header read).
const defaultProxyHeaderTimeout = 5 * time.Second

// trusted reports whether a may speak the PROXY protocol to us.
func (c *Config) trusted(a netip.Addr) bool {
	for _, p := range c.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// wrapListener makes l read PROXY headers from trusted sources (required
// there) and hand every other connection over raw. FTP is server-speaks-
// first: probing an untrusted client for a header would make it wait for
// the timeout before its greeting, so untrusted connections are not probed;
// a PROXY line they send is caught as the first command instead.
func (s *Server) wrapListener(l net.Listener) net.Listener {
	return &proxyproto.Listener{
		Listener: l,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if s.config().trusted(addrPortOf(o.Upstream).Addr()) {
				return proxyproto.REQUIRE, nil
			}
			return proxyproto.SKIP, nil
		},
		ReadHeaderTimeout: s.config().ProxyHeaderTimeout,
	}
}

// endpoints are the addresses of one client connection.
type endpoints struct {
	peer    netip.AddrPort // the client: from a trusted PROXY header, else the socket
	reached netip.AddrPort // the address the client connected to (header destination, else socket)
	local   netip.AddrPort // our socket's own local address (for binding)
	viaLB   bool           // the connection came through a trusted balancer
	health  bool           // a LOCAL header: the balancer's own health check
}

// endpointsOf reads c's addresses, reading the PROXY header of a trusted
// source first. An error means c must be dropped: a trusted source without
// a valid header.
func endpointsOf(c net.Conn) (endpoints, error) {
	pc, ok := c.(*proxyproto.Conn)
	if !ok {
		return endpoints{
			peer:    addrPortOf(c.RemoteAddr()),
			reached: addrPortOf(c.LocalAddr()),
			local:   addrPortOf(c.LocalAddr()),
		}, nil
	}
	raw := pc.Raw()
	e := endpoints{local: addrPortOf(raw.LocalAddr()), viaLB: true}
	h := pc.ProxyHeader() // reads it, within ReadHeaderTimeout
	switch {
	case h == nil:
		// Read again to learn why (the error is sticky).
		_, err := pc.Read(make([]byte, 0))
		if err == nil {
			err = errors.New("no PROXY header")
		}
		return e, fmt.Errorf("trusted source %s: %w", raw.RemoteAddr(), err)
	case h.Command.IsLocal():
		e.health = true
		e.peer, e.reached = addrPortOf(raw.RemoteAddr()), e.local
		return e, nil
	}
	e.peer, e.reached = addrPortOf(pc.RemoteAddr()), addrPortOf(pc.LocalAddr())
	if !e.peer.Addr().IsValid() {
		return e, fmt.Errorf("trusted source %s: PROXY header without a source address", raw.RemoteAddr())
	}
	return e, nil
}

// dataPeer returns the client address of an accepted data connection: for
// a trusted balancer, the source in its PROXY header (the same rule as for
// control connections); c is then wrapped so the header is not relayed.
func (s *session) dataPeer(c *net.TCPConn) (net.Conn, netip.Addr, error) {
	from := addrPortOf(c.RemoteAddr()).Addr()
	cfg := s.srv.config()
	if !cfg.trusted(from) {
		return c, from, nil
	}
	pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(cfg.ProxyHeaderTimeout))
	h := pc.ProxyHeader()
	if h == nil || h.Command.IsLocal() {
		return pc, netip.Addr{}, fmt.Errorf("data connection from trusted source %s without a PROXY header", from)
	}
	return pc, addrPortOf(pc.RemoteAddr()).Addr(), nil
}

// writeProxyHeader sends a PROXY header (v1 or v2) for the session's true
// peer to the backend, so the daemon can log the client's address.
func writeProxyHeader(bc net.Conn, version byte, e endpoints) error {
	src, dst := e.peer, e.reached
	if src.Addr().Is4() != dst.Addr().Is4() {
		// Mixed families would silently make a LOCAL header: keep the
		// family of the source, with an unspecified destination.
		if src.Addr().Is4() {
			dst = netip.AddrPortFrom(netip.IPv4Unspecified(), dst.Port())
		} else {
			dst = netip.AddrPortFrom(netip.IPv6Unspecified(), dst.Port())
		}
	}
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
	if h.Command != proxyproto.PROXY {
		return fmt.Errorf("cannot express %s → %s in a PROXY header", src, dst)
	}
	_, err := h.WriteTo(bc)
	return err
}

// proxyV2Sig opens every PROXY protocol v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// firstBytes reads from r and remembers the first bytes read, so that a
// binary PROXY v2 header from an untrusted client (which the command
// reader sees as a line with a NUL) can be told from other garbage.
type firstBytes struct {
	r   io.Reader
	buf [12]byte
	n   int
}

func (f *firstBytes) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.n < len(f.buf) {
		f.n += copy(f.buf[f.n:], p[:n])
	}
	return n, err
}

// isProxyV2 reports whether the stream began with the v2 signature (as far
// as it goes; at least up to its NUL).
func (f *firstBytes) isProxyV2() bool {
	return f.n >= 5 && bytes.Equal(f.buf[:f.n], proxyV2Sig[:f.n])
}
