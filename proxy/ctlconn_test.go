package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestCtlConn checks that a ctlConn reads and writes like the net.Conn it
// wraps — bytes, EOF, deadlines, a closed conn — over TCP (raw system
// calls on Linux) and over a net.Pipe (the net.Conn's own methods).
func TestCtlConn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pair   func(*testing.T) (net.Conn, net.Conn)
		raw    bool  // the raw path is taken
		closed error // what the conn's own Read and Write return once closed
	}{
		{"tcp", tcpPair, runtime.GOOS == "linux", net.ErrClosed},
		{"pipe", func(t *testing.T) (net.Conn, net.Conn) {
			a, b := net.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			return a, b
		}, false, io.ErrClosedPipe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tc.pair(t)
			c := newCtlConn(a)
			if got := c.raw != nil; got != tc.raw {
				t.Fatalf("raw path = %v, want %v", got, tc.raw)
			}
			go b.Write([]byte("USER alice\r\n"))
			buf := make([]byte, 64)
			n, err := io.ReadAtLeast(c, buf, len("USER alice\r\n"))
			if err != nil || string(buf[:n]) != "USER alice\r\n" {
				t.Fatalf("Read = %q, %v", buf[:n], err)
			}
			done := make(chan []byte)
			go func() {
				got := make([]byte, 9)
				io.ReadFull(b, got)
				done <- got
			}()
			if n, err := c.writeWithin([]byte("331 ok.\r\n"), time.Second); n != 9 || err != nil {
				t.Fatalf("writeWithin = %d, %v", n, err)
			}
			if got := <-done; string(got) != "331 ok.\r\n" {
				t.Fatalf("peer read %q", got)
			}

			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read past the deadline: %v, want os.ErrDeadlineExceeded", err)
			}
			c.SetReadDeadline(time.Time{})
			b.Close()
			if _, err := c.Read(buf); err != io.EOF {
				t.Fatalf("Read after the peer closed: %v, want io.EOF", err)
			}
			c.Close()
			if _, err := c.Read(buf); !errors.Is(err, tc.closed) {
				t.Fatalf("Read after Close: %v, want %v", err, tc.closed)
			}
			if _, err := c.Write([]byte("x")); !errors.Is(err, tc.closed) {
				t.Fatalf("Write after Close: %v, want %v", err, tc.closed)
			}
		})
	}
}

// TestCtlConnWriteWithin checks the bound of writeWithin: a peer that
// does not read gets os.ErrDeadlineExceeded once the socket buffers are
// full, and the deadline it set is gone afterwards — a later write, long
// after it would have expired, goes through.
func TestCtlConnWriteWithin(t *testing.T) {
	a, b := tcpPair(t)
	c := newCtlConn(a)
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	var sent int
	for {
		n, err := c.writeWithin(chunk, 50*time.Millisecond)
		sent += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("writeWithin to a peer that does not read: %v, want os.ErrDeadlineExceeded", err)
			}
			break
		}
		if sent > 64<<20 {
			t.Fatal("64 MiB written to a peer that does not read")
		}
	}
	// The peer reads everything; then, later than the bound, one more write.
	go io.CopyN(io.Discard, b, int64(sent)+3)
	time.Sleep(100 * time.Millisecond)
	if _, err := c.writeWithin([]byte("end"), 50*time.Millisecond); err != nil {
		t.Fatalf("writeWithin after the peer read: %v (a deadline left behind?)", err)
	}
}
