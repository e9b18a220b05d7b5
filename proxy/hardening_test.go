package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// Hostile-input hardening: each case gets a defined reply, bounded
// resources, and no leaked goroutine (goleak runs after the package).

var loose = limiter.Config{Failures: 1000, Window: time.Hour, BanTime: time.Hour}

// TestIACFlood: a megabyte of Telnet IAC NOP without a line end is a line
// too long: 500 and close, never an unbounded buffer.
func TestIACFlood(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, loose)
	c := dial(t, p.addr)
	c.expect(220)
	go c.c.Write(bytes.Repeat([]byte{0xff, 0xf1}, 512<<10))
	if got := fmt.Sprint(c.replies()); got != "[500]" {
		t.Fatalf("replies %s; want [500]", got)
	}
}

// TestInvalidUTF8: bytes that are not UTF-8 in an argument are passed as
// bytes (FTP paths are bytes); the daemon answers.
func TestInvalidUTF8(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, loose)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER \xc3\x28\xfe\r\nQUIT\r\n")
	if got := fmt.Sprint(c.replies()); got != "[331 221]" {
		t.Fatalf("replies %s", got)
	}
	if f.count("USER \xc3\x28\xfe") != 1 {
		t.Fatalf("daemon got %q", f.received())
	}
}

// TestTenThousandPipelined: 10,000 commands in one write after login are
// each answered, in order; before login the pre-login cap ends it.
func TestTenThousandPipelined(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, loose)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	go c.c.Write([]byte(strings.Repeat("NOOP\r\n", 10000) + "QUIT\r\n"))
	codes := c.replies()
	if len(codes) != 10001 || codes[0] != 200 || codes[9999] != 200 || codes[10000] != 221 {
		t.Fatalf("%d replies (first %v, last %v); want 10,000 × 200 then 221", len(codes), codes[:1], codes[len(codes)-1:])
	}
	c2 := dial(t, p.addr)
	c2.expect(220)
	go c2.c.Write([]byte(strings.Repeat("NOOP\r\n", 10000)))
	codes = c2.replies()
	if len(codes) != 21 || codes[20] != 421 {
		t.Fatalf("before login: %d replies, last %v; want 20 × 200 then 421", len(codes), codes[len(codes)-1:])
	}
}

// TestClientNeverReads: a client that pipelines forever and never reads a
// reply is closed within bounded time; the proxy holds at most maxPending
// commands for it.
func TestClientNeverReads(t *testing.T) {
	big := "211-status\r\n" + strings.Repeat(" "+strings.Repeat("x", 78)+"\r\n", 100) + "211 End\r\n"
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "STAT" {
			io.WriteString(c, big) // 8 KB replies fill the kernel's buffers fast
			return true
		}
		return false
	})
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: 300 * time.Millisecond}, loose)
	c := dial(t, p.addr)
	c.c.(*net.TCPConn).SetReadBuffer(4096) // kernel buffers fill fast, as with a slow reader
	c.send("USER u\r\nPASS good\r\n")
	time.Sleep(50 * time.Millisecond)
	done := make(chan error, 1)
	go func() {
		line := []byte(strings.Repeat("STAT\r\n", 1000))
		for i := 0; i < 5000; i++ { // up to 30 MB of commands (40 GB of replies), never reading
			if _, err := c.c.Write(line); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("30 MB of commands were taken from a client that never reads")
		}
	case <-time.After(60 * time.Second): // a bound against hanging, not a timing threshold
		t.Fatalf("the session was not closed; logs:\n%s", p.logs)
	}
}

// TestSlowConnectionsCapped: many connections from one address are capped
// at max_conns_per_ip; the daemon sees no more than the cap.
func TestSlowConnectionsCapped(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{MaxConnsPerIP: 10}, loose)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ok, refused := 0, 0
	for i := 0; i < 2000; i++ {
		c := dial(t, p.addr)
		conns = append(conns, c.c)
		if r, _ := c.r.ReadReply(); r.Code == 220 {
			ok++
		} else {
			refused++
		}
	}
	f.mu.Lock()
	seen := f.conns
	f.mu.Unlock()
	if ok != 10 || refused != 1990 || seen != 10 {
		t.Fatalf("%d admitted, %d refused, daemon saw %d; want 10, 1990, 10", ok, refused, seen)
	}
}

// TestConnectionChurn: 10,000 connections opened and dropped at once leave
// no session, goroutine or connection count behind.
func TestConnectionChurn(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{MaxConnsPerIP: 10000}, loose)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2500; i++ {
				c, err := net.Dial("tcp", p.addr)
				if err != nil {
					continue
				}
				if i%2 == 0 {
					c.Read(make([]byte, 64)) // some read the greeting, some do not
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for p.srv.ActiveSessions() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.srv.ActiveSessions(); n != 0 {
		t.Fatalf("%d sessions left after churn", n)
	}
}

// TestSilentBackend: a daemon that accepts and never greets: 421 within
// dial_timeout.
func TestSilentBackend(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	p := startProxy(t, ln.Addr().String(), Config{DialTimeout: 300 * time.Millisecond}, loose)
	c := dial(t, p.addr)
	if r := c.expect(421); !strings.Contains(r.Text(), "did not answer") {
		t.Fatalf("reply %q", r.Text())
	}
}

// TestBackendRestartMidSession: the daemon goes away after login; the
// client gets 421, and a new session works once it is back.
func TestBackendRestartMidSession(t *testing.T) {
	f := startFake(t, nil)
	addr := f.ln.Addr().String()
	p := startProxy(t, addr, Config{}, loose)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	f.ln.Close()
	f.wg.Wait() // the fake closes its sessions when its listener ends
	if got := fmt.Sprint(c.replies()); got != "[421]" {
		t.Fatalf("replies %s; want [421]", got)
	}
	f2 := startFakeAt(t, addr)
	if f2 == nil {
		t.Skip("port taken again before the restart") // cannot happen on loopback in practice
	}
	dial(t, p.addr).expect(220)
}

// TestLocalRepliesBounded: replies of the proxy's own (500 to "!") wait
// behind a command the daemon has not answered (a LIST whose data
// connection never comes); they count against maxPending like forwarded
// commands, so the client is not read past the bound and, with no room
// within DataTimeout, is closed with 421. (They were queued without bound.)
func TestLocalRepliesBounded(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		return line == "LIST" // never answered
	})
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: 300 * time.Millisecond}, loose)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	go c.c.Write([]byte("LIST\r\n" + strings.Repeat("!\r\n", 200000)))
	start := time.Now()
	codes := c.replies()
	if len(codes) != 1 || codes[0] != 421 {
		t.Fatalf("replies %v; want only 421 (nothing answers LIST, so no 500 may overtake it)", codes)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
	if !strings.Contains(p.logs.String(), "reason=\"replies not read\"") {
		t.Fatalf("no \"replies not read\" rejection logged:\n%s", p.logs)
	}
}
