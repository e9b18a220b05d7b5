package proxy

import (
	"net"
	"time"
)

// A ctlConn is a control connection — the client's or the daemon's — as
// its session reads and writes it. It is the net.Conn it wraps (deadlines,
// Close and addresses are that conn's), with two differences:
//
//   - Over a plain TCP socket on Linux, its reads and writes are the
//     socket's non-blocking read(2) and write(2), made through the socket's
//     syscall.RawConn: the runtime's poller still does the waiting, and the
//     deadlines still bound it, but the calls themselves do not enter the
//     runtime's system-call state the way net.TCPConn's do. Entering that
//     state wakes the runtime's monitor thread (sysmon) whenever the process
//     had been idle — on a login-heavy load, the idle gap between any two
//     replies — and that thread's wake-ups and 20 µs sleeps were a sixth of
//     the proxy's CPU time and a quarter of its context switches
//     (docs/benchmarks.md). A control connection's read or write
//     never blocks the thread, so the system-call state buys nothing here.
//   - writeWithin bounds a write by a deadline it sets only when the write
//     has to wait for room: a reply or a command is taken by the kernel at
//     once, and setting a deadline before each one (a runtime timer
//     modified, sometimes a thread woken to watch it) cost more than the
//     write.
//
// Elsewhere, or over any other net.Conn (go-proxyproto's), the reads and
// writes are the net.Conn's. A ctlConn is safe for the concurrent use a
// net.Conn allows (one reader, one writer, any closer).
type ctlConn struct {
	net.Conn
	raw *rawSocket // nil: the net.Conn's own Read and Write
}

// newCtlConn wraps c, a session's control connection.
func newCtlConn(c net.Conn) *ctlConn {
	return &ctlConn{Conn: c, raw: newRawSocket(c)}
}

func (c *ctlConn) Read(b []byte) (int, error) {
	if c.raw == nil || len(b) == 0 {
		return c.Conn.Read(b)
	}
	return c.raw.read(b)
}

// Write writes b, waiting for room at most until the write deadline, as
// the net.Conn's Write does.
func (c *ctlConn) Write(b []byte) (int, error) {
	if c.raw == nil {
		return c.Conn.Write(b)
	}
	return c.raw.write(b, true)
}

// writeWithin writes b, waiting for room at most d. The deadline is left
// unset after it.
func (c *ctlConn) writeWithin(b []byte, d time.Duration) (int, error) {
	if c.raw == nil {
		c.Conn.SetWriteDeadline(time.Now().Add(d))
		return c.Conn.Write(b)
	}
	n, err := c.raw.write(b, false)
	if n == len(b) || err != nil {
		return n, err
	}
	// The socket buffer is full: a client that does not read, or a
	// daemon that does not. Now the bound matters.
	c.Conn.SetWriteDeadline(time.Now().Add(d))
	m, err := c.raw.write(b[n:], true)
	c.Conn.SetWriteDeadline(time.Time{})
	return n + m, err
}

// CloseWrite half-closes the connection if the net.Conn can.
func (c *ctlConn) CloseWrite() error {
	closeWrite(c.Conn)
	return nil
}

// writeBounded writes b to c, waiting for room at most d: c's own
// writeWithin for a ctlConn, else a write deadline d from now (a TLS conn:
// its records go to the ctlConn under it, bounded by that deadline).
func writeBounded(c net.Conn, b []byte, d time.Duration) (int, error) {
	if cc, ok := c.(*ctlConn); ok {
		return cc.writeWithin(b, d)
	}
	c.SetWriteDeadline(time.Now().Add(d))
	return c.Write(b)
}
