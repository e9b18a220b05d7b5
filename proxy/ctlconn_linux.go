package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawSocket is the raw I/O of a ctlConn over a plain TCP socket: read(2)
// and write(2) on its non-blocking descriptor, inside its RawConn's Read
// and Write (ctlconn.go says why). Each direction keeps the callback it
// hands the RawConn, made once, so that an I/O allocates nothing.
type rawSocket struct {
	rc syscall.RawConn
	rd rawIO
	wr rawIO
}

// rawIO is one direction of a rawSocket; mu makes its calls one at a time,
// as the descriptor's own lock would.
type rawIO struct {
	mu    sync.Mutex
	fn    func(fd uintptr) bool
	b     []byte // what to read into or write
	n     int    // done so far
	errno syscall.Errno
	wait  bool // write: wait for room (else return what went at once)
}

// newRawSocket returns the raw I/O of c if it is a plain TCP socket, else
// nil.
func newRawSocket(c net.Conn) *rawSocket {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &rawSocket{rc: rc}
	s.rd.fn = s.rd.readOnce
	s.wr.fn = s.wr.writeAll
	return s
}

// readOnce is the read callback: one read(2), retried on EINTR; false
// (wait until readable) on EAGAIN.
func (io *rawIO) readOnce(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&io.b[0])), uintptr(len(io.b)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		io.n, io.errno = int(r), e
		return true
	}
}

// writeAll is the write callback: write(2) until all of b is written or an
// error; on EAGAIN, false (wait for room) if io.wait, else true.
func (io *rawIO) writeAll(fd uintptr) bool {
	for io.n < len(io.b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&io.b[io.n])), uintptr(len(io.b)-io.n))
		switch e {
		case 0:
			io.n += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return !io.wait
		default:
			io.errno = e
			return true
		}
	}
	return true
}

// read reads into b (len(b) > 0), the poller waiting while there is
// nothing to read. Its results are net.TCPConn's: io.EOF at the peer's
// end, errors wrapping os.ErrDeadlineExceeded and net.ErrClosed.
func (s *rawSocket) read(b []byte) (int, error) {
	d := &s.rd
	d.mu.Lock()
	defer d.mu.Unlock()
	d.b, d.n, d.errno = b, 0, 0
	err := s.rc.Read(d.fn)
	n, errno := d.n, d.errno
	d.b = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// write writes b. wait: while the socket buffer is full the poller waits
// for room, until the write deadline; otherwise it returns what the kernel
// took at once (n < len(b), a nil error).
func (s *rawSocket) write(b []byte, wait bool) (int, error) {
	d := &s.wr
	d.mu.Lock()
	defer d.mu.Unlock()
	d.b, d.n, d.errno, d.wait = b, 0, 0, wait
	err := s.rc.Write(d.fn)
	n, errno := d.n, d.errno
	d.b = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", errno)}
	}
	return n, nil
}
