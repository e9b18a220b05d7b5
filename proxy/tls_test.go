package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// TestAuthTLSInjection: plaintext sent in the same write as AUTH TLS is
// never taken as coming from inside TLS: the session is closed.
func TestAuthTLSInjection(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{TLS: testTLSConfig(t)}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("AUTH TLS\r\nUSER injected\r\n")
	if got := c.replies(); len(got) != 1 || got[0] != 421 {
		t.Fatalf("replies %v; want [421]", got)
	}
	if f.count("USER") != 0 {
		t.Fatal("an injected command reached the daemon")
	}
}

// TestTLSCommands: PBSZ/PROT before AUTH are refused; after it they are
// answered by the proxy; CCC is refused; FEAT advertises what is offered;
// RequireTLS refuses USER in clear text.
func TestTLSCommands(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "FEAT" {
			c.Write([]byte("211-Features:\r\n EPRT\r\n EPSV\r\n AUTH SSL\r\n PBSZ\r\n UTF8\r\n211 End\r\n"))
			return true
		}
		return false
	})
	cfg := Config{TLS: testTLSConfig(t), RequireTLS: true}
	p := startProxy(t, f.ln.Addr().String(), cfg, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("PBSZ 0\r\n")
	c.expect(503)
	c.send("USER u\r\n")
	if r := c.expect(530); !strings.Contains(r.Text(), "TLS required") {
		t.Fatalf("USER before TLS: %q", r.Text())
	}
	c.send("FEAT\r\n")
	feat := strings.Join(c.expect(211).Lines, "|")
	if want := "211-Features:| EPSV| UTF8| AUTH TLS| PBSZ| PROT|211 End"; feat != want {
		t.Fatalf("FEAT %q; want %q (EPRT dropped: active mode off)", feat, want)
	}
	c.send("AUTH TLS\r\n")
	c.expect(234)
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.c, c.r = tc, ftpproto.NewReplyReader(tc, 4096, 1<<20)
	for _, step := range []struct {
		send string
		want int
	}{{"PBSZ 0", 200}, {"PROT S", 536}, {"PROT P", 200}, {"CCC", 534}, {"AUTH TLS", 503}, {"USER u", 331}, {"PASS good", 230}} {
		c.send(step.send + "\r\n")
		c.expect(step.want)
	}
	for _, l := range f.received() {
		if strings.HasPrefix(l, "PBSZ") || strings.HasPrefix(l, "PROT") || strings.HasPrefix(l, "AUTH") || l == "CCC" {
			t.Errorf("%q reached the plain daemon", l)
		}
	}
}

// countingConn counts the writes to its net.Conn.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestRecordBatcher: a write to a TLS data leg goes to its socket in one
// write however many records it takes, and arrives byte for byte; what TLS
// writes by itself (the handshake, close_notify) goes through.
func TestRecordBatcher(t *testing.T) {
	srvSide, cliSide := net.Pipe()
	defer cliSide.Close()
	cc := &countingConn{Conn: srvSide}
	conf := testTLSConfig(t)
	conf.DynamicRecordSizingDisabled = true
	tc := tls.Server(&recordBatcher{Conn: cc}, conf)
	defer tc.Close()
	client := tls.Client(cliSide, &tls.Config{InsecureSkipVerify: true})
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	var want []byte
	for _, n := range []int{1, 16 << 10, 16<<10 + 1, relayBuf} {
		p := make([]byte, n)
		rand.Read(p)
		before := cc.writes.Load()
		if err := writeBatched(tc, p); err != nil {
			t.Fatal(err)
		}
		if w := cc.writes.Load() - before; w != 1 {
			t.Errorf("%d bytes: %d writes to the socket; want 1", n, w)
		}
		want = append(want, p...)
	}
	if err := tc.CloseWrite(); err != nil { // close_notify: written through
		t.Fatal(err)
	}
	srvSide.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("client read %d bytes; want %d identical bytes", len(b), len(want))
	}
}

// TestAuthTLSAfterSlowReply: AUTH TLS pipelined behind a command the
// daemon is slow to answer gets its 234 after that command's reply, never
// in its place (the client would take the 234 for the earlier command's
// reply and wait for AUTH's, while the proxy waits for its handshake).
func TestAuthTLSAfterSlowReply(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "HELP" {
			time.Sleep(2500 * time.Millisecond)
			c.Write([]byte("214 Help OK.\r\n"))
			return true
		}
		return false
	})
	p := startProxy(t, f.ln.Addr().String(), Config{TLS: testTLSConfig(t)}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("HELP\r\nAUTH TLS\r\n")
	c.expect(214)
	c.expect(234)
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
}

// TestShedDuringAuthTLS: a session that sent AUTH TLS and stalls its
// handshake is shed as any idle session, at once: the newcomer that sheds
// it is greeted without waiting for the stalled handshake to time out.
func TestShedDuringAuthTLS(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{TLS: testTLSConfig(t), MaxConns: 1, MaxConnsPerIP: 10,
		LoginTimeout: 8 * time.Second}, loose)
	v := dialFrom(t, "127.0.0.2", p.addr)
	v.expect(220)
	v.send("AUTH TLS\r\n")
	v.expect(234) // and no ClientHello
	n := dialFrom(t, "127.0.0.3", p.addr)
	start := time.Now()
	n.expect(220)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the newcomer was greeted after %v: the shed waited for the stalled handshake", d.Round(time.Millisecond))
	}
}

// TestBanDuringAuthTLS: a ban ends a session whose AUTH TLS handshake is
// stalled at once, logged once, not when the handshake times out.
func TestBanDuringAuthTLS(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{TLS: testTLSConfig(t), LoginTimeout: 8 * time.Second}, testLimits)
	c := dialFrom(t, "127.0.0.2", p.addr)
	c.expect(220)
	c.send("AUTH TLS\r\n")
	c.expect(234) // and no ClientHello
	start := time.Now()
	if n := p.srv.EndSessions(netip.MustParsePrefix("127.0.0.2/32"), "admin", true, true); n != 1 {
		t.Fatalf("EndSessions ended %d sessions; want 1", n)
	}
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c.c)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the banned session ended after %v", d.Round(time.Millisecond))
	}
	waitUntil(t, "the reject logged", func() bool {
		return strings.Contains(p.logs.String(), "reason=\"banned by admin\"") || strings.Contains(p.logs.String(), "msg=reject")
	})
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(p.logs.String(), "msg=reject"); n != 1 {
		t.Fatalf("%d rejects logged; want 1:\n%s", n, p.logs)
	}
}
