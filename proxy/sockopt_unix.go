//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// setOOBInline makes the kernel deliver TCP urgent data inline, so that the
// Telnet "IAC IP IAC DM" a client sends with ABOR arrives in the command
// stream (where ftpproto strips it) instead of being lost or splitting it.
func setOOBInline(c net.Conn) {
	if r, ok := c.(interface{ Raw() net.Conn }); ok { // behind go-proxyproto
		c = r.Raw()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1)
	})
}
