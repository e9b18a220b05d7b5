package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// TestProftpdFullIsNotAFailure: proftpd answers a correct password with
// "530 Sorry, the maximum number of … are already connected." when one of
// its Max* limits is reached. That is released, not counted: a legitimate
// user of a busy daemon is never banned for it, while "530 Login
// incorrect." still counts.
func TestProftpdFullIsNotAFailure(t *testing.T) {
	full := []string{
		"530 Sorry, the maximum number of allowed clients (1) are already connected.",
		"530 Sorry, the maximum number of clients (1) from your host are already connected.",
		"530 Sorry, the maximum number of hosts (2) for this user are already connected.",
	}
	var i atomic.Int32
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "PASS good" {
			fmt.Fprintf(c, "%s\r\n", full[int(i.Add(1))%len(full)])
			return true
		}
		return false
	})
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits) // budget 3
	for n := 0; n < 2*testLimits.Failures; n++ {
		c := dial(t, p.addr)
		c.expect(220)
		c.send("USER u\r\nPASS good\r\n")
		c.expect(331)
		if r := c.expect(530); !strings.Contains(r.Text(), "maximum number") {
			t.Fatalf("reply %q", r.Text())
		}
		c.c.Close()
	}
	if strings.Contains(p.logs.String(), "login failed") {
		t.Fatalf("a full daemon's 530 was counted:\n%s", p.logs.String())
	}
	if n := strings.Count(p.logs.String(), "login refused by the daemon after the password"); n != 2*testLimits.Failures {
		t.Fatalf("%d refusals logged; want %d", n, 2*testLimits.Failures)
	}
	// Wrong passwords still count and ban.
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS bad1\r\nUSER u\r\nPASS bad2\r\nUSER u\r\nPASS bad3\r\n")
	if got := fmt.Sprint(c.replies()); got != "[331 530 331 530 331 530 421]" {
		t.Fatalf("wrong passwords: replies %s", got)
	}
	if d := p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")); d.Allowed {
		t.Fatal("three wrong passwords did not ban")
	}
}

// dataFake is a daemon that replies 226 to RETR before it sends the data
// (after 200 ms): the worst order a daemon can produce, and the order the
// proxy itself could produce for a real daemon (quirks.go, dataGate).
func dataFake(t *testing.T, payload []byte) *fakeFTPD {
	var port netip.AddrPort
	var pasv net.Listener
	send := func(dc net.Conn) {
		time.Sleep(200 * time.Millisecond)
		dc.Write(payload)
		dc.Close()
	}
	f := startFake(t, func(c net.Conn, line string) bool {
		verb, arg, _ := strings.Cut(line, " ")
		switch verb {
		case "PORT":
			port, _ = ftpproto.ParsePORT(arg)
			fmt.Fprint(c, "200 PORT ok.\r\n")
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
			fmt.Fprint(c, "150 Here it comes.\r\n226 Transfer complete.\r\n")
			if pasv != nil {
				dc, err := pasv.Accept()
				if err == nil {
					send(dc)
				}
				return true
			}
			dc, err := net.Dial("tcp", port.String())
			if err == nil {
				send(dc)
			}
		default:
			return false
		}
		return true
	})
	return f
}

// TestTransferReplyAfterData: the 226 to RETR reaches the client only
// after the data has (data connection made, every byte and the EOF
// queued), in active and passive mode, even when the daemon sends it
// first. Checked the way curl does in active mode: nothing is accepted
// or read until the 226 has come; then the data must already be there.
func TestTransferReplyAfterData(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	for _, mode := range []string{"active", "passive"} {
		t.Run(mode, func(t *testing.T) {
			f := dataFake(t, payload)
			p := startProxy(t, f.ln.Addr().String(), Config{Active: true}, testLimits)
			c := dial(t, p.addr)
			c.expect(220)
			c.send("USER u\r\nPASS good\r\n")
			c.expect(331)
			c.expect(230)
			var dc net.Conn
			var ln net.Listener
			if mode == "active" {
				var err error
				ln, err = net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				arg, _ := ftpproto.FormatPORT(netip.MustParseAddrPort(ln.Addr().String()))
				c.send("PORT " + arg + "\r\n")
				c.expect(200)
			} else {
				c.send("PASV\r\n")
				ap, err := ftpproto.ParsePASV(c.expect(227).Text())
				if err != nil {
					t.Fatal(err)
				}
				if dc, err = net.Dial("tcp", ap.String()); err != nil {
					t.Fatal(err)
				}
				defer dc.Close()
			}
			c.send("RETR f\r\n")
			c.expect(150)
			c.expect(226)
			if mode == "active" {
				ln.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
				var err error
				if dc, err = ln.Accept(); err != nil {
					t.Fatalf("226 came before the data connection: %v", err)
				}
				defer dc.Close()
			}
			dc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			got, err := io.ReadAll(dc)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("226 came before the data: %d of %d bytes there (err %v)", len(got), len(payload), err)
			}
		})
	}
}

// TestTransferFailureNotHeld: a 4xx/5xx to RETR is relayed at once, even
// with a PORT listener waiting for a connection that never comes.
func TestTransferFailureNotHeld(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		switch verb, _, _ := strings.Cut(line, " "); verb {
		case "PORT":
			fmt.Fprint(c, "200 PORT ok.\r\n")
		case "RETR":
			fmt.Fprint(c, "550 No such file.\r\n")
		default:
			return false
		}
		return true
	})
	p := startProxy(t, f.ln.Addr().String(), Config{Active: true, DataTimeout: 10 * time.Second}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	arg, _ := ftpproto.FormatPORT(netip.MustParseAddrPort(ln.Addr().String()))
	c.send("PORT " + arg + "\r\nRETR nothing\r\n")
	c.expect(200)
	start := time.Now()
	c.expect(550)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("550 held %v", d)
	}
}

// TestPureftpdAbortKeepsStep: pure-ftpd, aborted mid-transfer, sends no
// final reply to the transfer — only "150 <statistics>" and "226 Since you
// see this ABOR must've succeeded" — where vsftpd and proftpd send 426 and
// then 225/226. The proxy pairs that 226 with ABOR, so the replies after
// it still answer their own commands: a 227 is rewritten to the proxy's
// own port, never passed through.
func TestPureftpdAbortKeepsStep(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		switch line {
		case "RETR big":
			fmt.Fprint(c, "150-Accepted data connection\r\n150 32768.0 kbytes to download\r\n")
		case "ABOR":
			fmt.Fprint(c, "150 0.301 seconds (measured here), 12.48 Mbytes per second\r\n226 Since you see this ABOR must've succeeded\r\n")
		case "PASV":
			fmt.Fprint(c, "227 Entering Passive Mode (127,0,0,1,4,1)\r\n")
		default:
			return false
		}
		return true
	})
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\nRETR big\r\n")
	c.expect(331)
	c.expect(230)
	c.expect(150)
	c.send("\xff\xf4\xff\xf2ABOR\r\nNOOP\r\nPASV\r\n")
	c.expect(150)
	c.expect(226)
	c.expect(200)
	ap, err := ftpproto.ParsePASV(c.expect(227).Text())
	if err != nil || ap.Port() == 4<<8|1 {
		t.Fatalf("227 after ABOR passed through: %v (err %v)", ap, err)
	}
}

// TestGreetingVariants: greetings real daemons send reach the client and
// the session works after them: 120 then 220 (RFC 959), Telnet negotiation
// before the code (proftpd may send IAC sequences), pure-ftpd's multi-line
// greeting whose first line is "220----------".
func TestGreetingVariants(t *testing.T) {
	for _, tt := range []struct {
		name, greeting string
		codes          []int
	}{
		{"120 then 220", "120 Service ready in 1 minute.\r\n220 Ready.\r\n", []int{120, 220}},
		{"Telnet bytes first", "\xff\xfb\x01\xff\xfd\x03220 Ready.\r\n", []int{220}},
		{"pure-ftpd", "220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n220-You are user number 1 of 50 allowed.\r\n220 You will be disconnected after 15 minutes of inactivity.\r\n", []int{220}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			t.Cleanup(func() { ln.Close(); <-done })
			go func() {
				defer close(done)
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				for _, part := range strings.SplitAfter(tt.greeting, "\r\n") {
					c.Write([]byte(part))
					time.Sleep(20 * time.Millisecond)
				}
				buf := make([]byte, 4096)
				var in string
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					in += string(buf[:n])
					for strings.Contains(in, "\r\n") {
						line, rest, _ := strings.Cut(in, "\r\n")
						in = rest
						switch line {
						case "USER u":
							c.Write([]byte("331 Password please.\r\n"))
						case "PASS good":
							c.Write([]byte("230 In.\r\n"))
						default:
							c.Write([]byte("530 Login incorrect.\r\n"))
						}
					}
				}
			}()
			p := startProxy(t, ln.Addr().String(), Config{}, testLimits)
			c := dial(t, p.addr)
			for _, code := range tt.codes {
				c.expect(code)
			}
			c.send("USER u\r\nPASS bad\r\nUSER u\r\nPASS good\r\n")
			c.expect(331)
			c.expect(530)
			c.expect(331)
			c.expect(230)
			logs := p.logs.String()
			if !strings.Contains(logs, "login ok") || strings.Count(logs, "login failed") != 1 {
				t.Fatalf("want one failure and one login logged:\n%s", logs)
			}
		})
	}
}
