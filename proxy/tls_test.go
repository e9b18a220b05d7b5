package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"strings"
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
