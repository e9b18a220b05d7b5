package main

import (
	"io"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// A lineWriter writes log lines to a socket or a pipe. Each line is first
// offered to the kernel with a non-blocking write(2) or send(2) made as a
// raw system call: one that does not enter the Go runtime's system-call
// state, whose entry wakes the runtime's monitor thread whenever the
// process had been idle — the "login ok" line did that on nearly every
// login: 1.8 of the 28 context switches a login cost the proxy
// (docs/benchmarks.md).
// What the socket or pipe does not take at once (its reader is behind, or
// gone) goes through the file's own blocking write, which waits or fails
// as before: no line is held in memory, dropped or reordered (the log
// handler writes one line at a time), and a crash loses nothing the plain
// file would have written.
type lineWriter struct {
	f    *os.File // the file, for what the non-blocking write leaves
	fd   int      // written to without blocking
	sock bool     // fd is f's socket: send(2) with MSG_DONTWAIT; else a non-blocking description of f's pipe
}

// newLineWriter returns a lineWriter for f if f is a socket or a pipe,
// else nil (a regular file or a terminal: a write to it may block, and
// must then enter the system-call state so that the runtime can run other
// goroutines meanwhile). The pipe's non-blocking description stays open
// as long as the process.
func newLineWriter(f *os.File) io.Writer {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var st syscall.Stat_t
	var fd int
	rc.Control(func(d uintptr) {
		fd = int(d)
		err = syscall.Fstat(fd, &st)
	})
	if err != nil {
		return nil
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFSOCK:
		return &lineWriter{f: f, fd: fd, sock: true}
	case syscall.S_IFIFO:
		// A description of the pipe of its own, non-blocking: setting
		// O_NONBLOCK on f's would change it for every process sharing it.
		nb, err := syscall.Open("/proc/self/fd/"+strconv.Itoa(fd), syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if err != nil {
			return nil
		}
		return &lineWriter{f: f, fd: nb}
	}
	return nil
}

func (w *lineWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		var r uintptr
		var e syscall.Errno
		p := uintptr(unsafe.Pointer(&b[n]))
		if w.sock {
			r, _, e = syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(w.fd), p, uintptr(len(b)-n),
				syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		} else {
			r, _, e = syscall.RawSyscall(syscall.SYS_WRITE, uintptr(w.fd), p, uintptr(len(b)-n))
		}
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			break // EAGAIN, EPIPE…: the file's own write waits, or fails as it always did
		}
		n += int(r)
	}
	if n == len(b) {
		return n, nil
	}
	m, err := w.f.Write(b[n:])
	return n + m, err
}
