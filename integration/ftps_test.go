//go:build integration

package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCert writes a self-signed certificate for 127.0.0.1 made at test
// time, and returns the [tls] lines that use it.
func testCert(t *testing.T, mode string) string {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ftpguard test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cert, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return fmt.Sprintf("[tls]\nmode = %q\ncert = %q\nkey = %q\nimplicit_listen = \"127.0.0.1:0\"\n", mode, cert, kf)
}

// curl runs curl with args and fails the test with its output on error.
func curl(t *testing.T, args ...string) {
	t.Helper()
	args = append([]string{"-sS", "--max-time", "60"}, args...)
	if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
		t.Fatalf("curl %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// lftp runs an lftp script from src against addr and fails on error.
func lftp(t *testing.T, src, addr, script string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("lftp", "-u", testUser+","+testPass, "-p", port,
		"-e", "set net:socket-bind-ipv4 "+src+"; set net:max-retries 1; set net:timeout 20; "+script+"; bye", host)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("lftp %q: %v: %s", script, err, out)
	}
}

// transferFile downloads name and uploads a copy, checking both byte for
// byte, with the given curl options.
func checkCurlTransfers(t *testing.T, url, name string, want []byte, opts ...string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	curl(t, append(opts, url+name, "-o", out)...)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatalf("download %s: %d bytes; want %d identical bytes", url+name, len(got), len(want))
	}
	up := "up-" + fmt.Sprint(time.Now().UnixNano()) + "-" + name
	curl(t, append(opts, "-T", out, url+up)...)
	defer os.Remove(filepath.Join(testHome, up))
	if got, _ := os.ReadFile(filepath.Join(testHome, up)); !bytes.Equal(got, want) {
		t.Fatalf("upload %s: daemon has %d bytes; want %d identical bytes", up, len(got), len(want))
	}
}

// TestExplicitFTPS: curl and lftp list, download and upload through
// explicit FTPS with PROT P; wrong passwords over TLS are counted and
// banned as in plain text.
func TestExplicitFTPS(t *testing.T) {
	const budget = 3
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget, Extra: testCert(t, "explicit")})
	name := fmt.Sprintf("tls-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 4<<20)
	t.Cleanup(func() { os.Remove(path) })
	url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)

	t.Run("curl", func(t *testing.T) {
		checkCurlTransfers(t, url, name, want, "--ssl-reqd", "-k", "--interface", "127.0.0.90")
		curl(t, "--ssl-reqd", "-k", "--interface", "127.0.0.90", "--disable-epsv", url, "-o", "/dev/null") // LIST over PASV
	})
	t.Run("lftp", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "lftp-out")
		lftp(t, "127.0.0.91", g.Addr, "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; ls; get "+name+" -o "+out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("lftp download: %d bytes; want %d identical bytes", len(got), len(want))
		}
	})
	// Seven data connections in one session, TLS 1.2 and 1.3: each data
	// handshake may resume the control connection's session.
	for _, v := range []struct{ name, priority string }{
		{"TLS1.2", "NORMAL:-VERS-ALL:+VERS-TLS1.2"},
		{"TLS1.3", "NORMAL:-VERS-ALL:+VERS-TLS1.3"},
	} {
		t.Run("lftp seven data connections "+v.name, func(t *testing.T) {
			before := g.Count(t, "TLS", "version", strings.Replace(v.name, "TLS", "TLS ", 1))
			lftp(t, "127.0.0.91", g.Addr, "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; set ssl:priority "+v.priority+
				"; set cache:enable no; cls; cls; cls; cls; cls; cls; cls")
			if n := g.Count(t, "TLS", "version", strings.Replace(v.name, "TLS", "TLS ", 1)) - before; n < 8 {
				t.Fatalf("%d %s handshakes; want 8 (control + 7 data)", n, v.name)
			}
		})
	}
	t.Logf("data handshakes that resumed the session: %d", g.Count(t, "TLS", "resumed", "true"))
	if n := g.Count(t, "login ok"); n < 3 {
		t.Fatalf("%d logins over TLS; want ≥ 3", n)
	}

	t.Run("guessing over TLS is banned", func(t *testing.T) {
		bad := fmt.Sprintf("ftp://%s:wrong@%s/", testUser, g.Addr)
		for i := 0; i < budget+1; i++ {
			exec.Command("curl", "-sS", "--max-time", "20", "--ssl-reqd", "-k", "--interface", "127.0.0.92", bad).Run()
		}
		waitFor(t, "a ban over TLS", func() bool { return g.Count(t, "ban", "key", "127.0.0.92/32") == 1 })
		if n := g.Count(t, "login failed", "peer", "127.0.0.92"); n != budget {
			t.Fatalf("%d failures counted over TLS; want %d", n, budget)
		}
		r := dialRaw(t, "127.0.0.92", g.Addr)
		if code, _ := r.reply(); code != 421 {
			t.Fatalf("banned over TLS, then greeting %d; want 421", code)
		}
	})
}

// TestImplicitFTPS: TLS from the first byte on the implicit listener.
func TestImplicitFTPS(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Extra: testCert(t, "implicit")})
	waitFor(t, "the implicit listener", func() bool {
		for _, e := range g.Events(t) {
			if a, ok := e["implicit_tls"].(string); ok {
				g.ImplicitAddr = a
			}
		}
		return g.ImplicitAddr != ""
	})
	name := fmt.Sprintf("implicit-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 1<<20)
	t.Cleanup(func() { os.Remove(path) })
	checkCurlTransfers(t, fmt.Sprintf("ftps://%s:%s@%s/", testUser, testPass, g.ImplicitAddr), name, want,
		"-k", "--interface", "127.0.0.93")
}

// TestTLSOff: without TLS, AUTH TLS is answered 534 and the session goes
// on in plain text.
func TestTLSOff(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{})
	r := dialRaw(t, "127.0.0.94", g.Addr)
	r.expect(220)
	r.send("AUTH TLS")
	r.expect(534)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
}

// TestActiveMode: PORT/EPRT through the proxy with curl (plain and FTPS)
// and lftp; a PORT naming another address or a privileged port is refused
// and nothing connects there.
func TestActiveMode(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Extra: testCert(t, "explicit")})
	name := fmt.Sprintf("active-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 4<<20)
	t.Cleanup(func() { os.Remove(path) })
	url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)

	t.Run("curl PORT", func(t *testing.T) {
		checkCurlTransfers(t, url, name, want, "--interface", "127.0.0.95", "--ftp-port", "127.0.0.95", "--disable-eprt")
	})
	t.Run("curl EPRT", func(t *testing.T) {
		checkCurlTransfers(t, url, name, want, "--interface", "127.0.0.95", "--ftp-port", "127.0.0.95")
	})
	// curl 7.88 fails active mode with TLS on its own side ("sa_addr
	// inet_ntop() failed", before any ClientHello): lftp covers FTPS here.
	t.Run("lftp FTPS active", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "lftp-out")
		lftp(t, "127.0.0.97", g.Addr, "set ftp:passive-mode off; set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; get "+name+" -o "+out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("lftp active FTPS download: %d bytes; want %d identical bytes", len(got), len(want))
		}
	})
	t.Run("lftp", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "lftp-out")
		lftp(t, "127.0.0.96", g.Addr, "set ftp:passive-mode off; set ftp:ssl-allow no; get "+name+" -o "+out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("lftp active download: %d bytes; want %d identical bytes", len(got), len(want))
		}
	})

	t.Run("bounce guard", func(t *testing.T) {
		victim, err := net.Listen("tcp", "127.0.0.9:0")
		if err != nil {
			t.Fatal(err)
		}
		defer victim.Close()
		reached := make(chan net.Conn, 4)
		go func() {
			for {
				c, err := victim.Accept()
				if err != nil {
					return
				}
				reached <- c
			}
		}()
		vport := victim.Addr().(*net.TCPAddr).Port
		r := dialRaw(t, "127.0.0.2", g.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
		r.expect(230)
		r.send(fmt.Sprintf("PORT 127,0,0,9,%d,%d", vport>>8, vport&255))
		r.expect(500)
		r.send(fmt.Sprintf("EPRT |1|127.0.0.9|%d|", vport))
		r.expect(500)
		r.send("PORT 127,0,0,2,0,25")
		r.expect(504)
		r.send("EPRT |3|x|1|")
		r.expect(522)
		r.send("LIST")
		if code, _ := r.reply(); code < 400 {
			t.Fatalf("LIST after refused PORTs: %d; want a 4xx/5xx", code)
		}
		select {
		case c := <-reached:
			c.Close()
			t.Fatal("a connection reached the address named in a refused PORT")
		case <-time.After(500 * time.Millisecond):
		}
		if n := g.Count(t, "reject", "reason", "active mode to a foreign address"); n != 2 {
			t.Fatalf("%d foreign-address refusals logged; want 2", n)
		}
	})
}
