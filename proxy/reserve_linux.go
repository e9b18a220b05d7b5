//go:build linux

package proxy

import (
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// reservedPort is a TCP port bound and never listened on: without
// SO_REUSEADDR nobody else binds it (the proxy's own passive listeners
// neither), and a connection that reaches it — from any address the kernel
// mapping does not take — is refused.
type reservedPort struct {
	fd   int
	port uint16
}

// reservePort reserves a port of r on ip, trying the range from a random
// start (as listenPassive does).
func reservePort(ip netip.Addr, r PortRange) (*reservedPort, error) {
	var p *reservedPort
	err := r.try(func(port int) error {
		var err error
		p, err = bindOnly(ip, port)
		return err
	})
	return p, err
}

// bindOnly binds a TCP socket to ip:port (0: the kernel picks).
func bindOnly(ip netip.Addr, port int) (*reservedPort, error) {
	domain, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: port, Addr: ip.As16()})
	if ip.Is4() { // As4 panics on any other address
		domain, sa = unix.AF_INET, &unix.SockaddrInet4{Port: port, Addr: ip.As4()}
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	if port == 0 {
		got, err := unix.Getsockname(fd)
		if err != nil {
			unix.Close(fd)
			return nil, os.NewSyscallError("getsockname", err)
		}
		switch a := got.(type) {
		case *unix.SockaddrInet4:
			port = a.Port
		case *unix.SockaddrInet6:
			port = a.Port
		}
	}
	return &reservedPort{fd: fd, port: uint16(port)}, nil
}

// Close frees the port.
func (p *reservedPort) Close() error { return unix.Close(p.fd) }
