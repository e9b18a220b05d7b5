package proxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// stallFake is a daemon whose data connections never move a byte: it
// answers RETR with 150, accepts the data connection and waits for the
// proxy to close it, then says 426. Its own timeout is "never" — the
// in-process fake stands for a daemon whose timeout is longer than the
// proxy's (a real daemon cannot be made to wait forever on demand).
func stallFake(t *testing.T, closed chan<- struct{}) *fakeFTPD {
	return endlessFake(t, closed, true, 0)
}

// endlessFake is a daemon whose RETR never ends by itself: it says 150
// (before it accepts the data connection with early, else after), sends
// send bytes, then reads until the proxy closes the data connection,
// tells closed, and says 426.
func endlessFake(t *testing.T, closed chan<- struct{}, early bool, send int) *fakeFTPD {
	var pasv net.Listener
	return startFake(t, func(c net.Conn, line string) bool {
		verb, _, _ := strings.Cut(line, " ")
		switch verb {
		case "PASV":
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Error(err)
				return false
			}
			t.Cleanup(func() { ln.Close() })
			pasv = ln
			r, _ := ftpproto.FormatPASV(netip.MustParseAddrPort(ln.Addr().String()))
			c.Write(r.AppendWire(nil))
		case "RETR":
			if early {
				fmt.Fprint(c, "150 Here it comes (not).\r\n")
			}
			dc, err := pasv.Accept()
			if err != nil {
				fmt.Fprint(c, "425 No data connection.\r\n")
				return true
			}
			if !early {
				fmt.Fprint(c, "150 Here it comes, slowly.\r\n")
			}
			dc.Write(make([]byte, send))
			io.Copy(io.Discard, dc) // until the proxy closes it
			dc.Close()
			closed <- struct{}{}
			fmt.Fprint(c, "426 Connection closed; transfer aborted.\r\n")
		default:
			return false
		}
		return true
	})
}

// TestDataIdleTimeout: a data connection where no byte moves either way
// for data_timeout is closed, both legs; the client then gets the daemon's
// own reply, and nothing is left running (goleak, TestMain).
func TestDataIdleTimeout(t *testing.T) {
	closed := make(chan struct{}, 1)
	f := stallFake(t, closed)
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: 300 * time.Millisecond}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	dc := c.pasvData()
	c.send("RETR f\r\n")
	c.expect(150)
	// Bounded only so that a failure does not hang the suite.
	dc.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := io.Copy(io.Discard, dc); err != nil || n != 0 {
		t.Fatalf("client leg: %d bytes, err %v; want EOF from the proxy", n, err)
	}
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("the daemon's leg was not closed")
	}
	c.expect(426)
	c.send("QUIT\r\n")
	c.expect(221)
}
