//go:build !linux

package proxy

import "net"

// rawSocket is Linux's; elsewhere a ctlConn reads and writes through its
// net.Conn.
type rawSocket struct{}

func newRawSocket(net.Conn) *rawSocket { return nil }

func (*rawSocket) read([]byte) (int, error)        { panic("proxy: raw I/O off Linux") }
func (*rawSocket) write([]byte, bool) (int, error) { panic("proxy: raw I/O off Linux") }
