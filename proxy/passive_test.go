package proxy

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// pasvFake answers PASV and EPSV with a listener of its own each time.
func pasvFake(t *testing.T) *fakeFTPD {
	return startFake(t, func(c net.Conn, line string) bool {
		verb, _, _ := strings.Cut(line, " ")
		if verb != "PASV" && verb != "EPSV" {
			return false
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Error(err)
			return false
		}
		t.Cleanup(func() { ln.Close() })
		ap := netip.MustParseAddrPort(ln.Addr().String())
		r := ftpproto.FormatEPSV(ap.Port())
		if verb == "PASV" {
			r, _ = ftpproto.FormatPASV(ap)
		}
		c.Write(r.AppendWire(nil))
		return true
	})
}

// loginFrom connects from the local address src (127.0.0.X) and logs in.
func loginFrom(t *testing.T, src, addr string) *client {
	t.Helper()
	cl := dialFrom(t, src, addr)
	cl.expect(220)
	cl.send("USER u\r\nPASS good\r\n")
	cl.expect(331)
	cl.expect(230)
	return cl
}

// TestPassivePortsPerKey: one address opening PASV/EPSV without ever
// connecting holds at most max_ports_per_key ports (the one over gets the
// proxy's own 425 and the daemon never sees its PASV); a session's new
// PASV replaces its own port; another address still gets a port; a port
// is given back after data_timeout without a data connection.
func TestPassivePortsPerKey(t *testing.T) {
	f := pasvFake(t)
	p := startProxy(t, f.ln.Addr().String(), Config{MaxPortsPerKey: 2, DataTimeout: time.Hour}, testLimits)

	a := loginFrom(t, "127.0.0.1", p.addr)
	b := loginFrom(t, "127.0.0.1", p.addr)
	c := loginFrom(t, "127.0.0.1", p.addr)
	a.send("PASV\r\n")
	a.expect(227)
	b.send("EPSV\r\n")
	b.expect(229)
	c.send("PASV\r\n")
	if r := c.expect(425); !strings.Contains(r.Text(), "Too many data ports") {
		t.Errorf("425 text = %q", r.Text())
	}
	c.send("EPSV\r\n")
	c.expect(425)
	if n := f.count("PASV") + f.count("EPSV"); n != 2 {
		t.Errorf("the daemon saw %d PASV/EPSV, want 2 (the refused ones are answered by the proxy)", n)
	}
	// A session at the cap may still renew its own port.
	for range 3 {
		a.send("PASV\r\n")
		a.expect(227)
	}
	c.send("PASV\r\n")
	c.expect(425)

	// Legitimate users first: another address is not refused.
	o := loginFrom(t, "127.0.0.2", p.addr)
	o.send("PASV\r\n")
	o.expect(227)

	// A port whose data connection comes is given back at once.
	a.send("PASV\r\n")
	ap, err := ftpproto.ParsePASV(a.expect(227).Text())
	if err != nil {
		t.Fatal(err)
	}
	dc, err := net.Dial("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	key := netip.MustParsePrefix("127.0.0.1/32")
	waitUntil(t, "the accepted port given back", func() bool { return p.srv.ports.count(key) == 1 })
	c.send("PASV\r\n")
	c.expect(227)
	c.send("QUIT\r\n")
	c.expect(221)
}

// TestPassivePortReleasedAfterDataTimeout: a port nobody connects to is
// closed, and its place given back, after data_timeout.
func TestPassivePortReleasedAfterDataTimeout(t *testing.T) {
	f := pasvFake(t)
	p := startProxy(t, f.ln.Addr().String(), Config{MaxPortsPerKey: 1, DataTimeout: 200 * time.Millisecond}, testLimits)
	a := loginFrom(t, "127.0.0.1", p.addr)
	b := loginFrom(t, "127.0.0.1", p.addr)
	a.send("PASV\r\n")
	ap, err := ftpproto.ParsePASV(a.expect(227).Text())
	if err != nil {
		t.Fatal(err)
	}
	key := netip.MustParsePrefix("127.0.0.1/32")
	waitUntil(t, "the idle port given back", func() bool { return p.srv.ports.count(key) == 0 })
	if c, err := net.Dial("tcp", ap.String()); err == nil {
		c.Close()
		t.Errorf("the port %v still accepts after data_timeout", ap)
	}
	b.send("PASV\r\n")
	b.expect(227)
}

// waitUntil polls cond (every 5 ms, at most 20 s: a bound against hanging,
// not a timing threshold).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestPASVFromIPv6Client: with an IPv4 [passive] address, a PASV from an
// IPv6 client is answered "500 … use EPSV" by the proxy and not forwarded.
// Its 227 would name an IPv4 address, which the client reaches only from an
// IPv4 address of its own, and the data gate takes only the control
// connection's address: the transfer could never start. An IPv4 client's
// PASV is forwarded. (Fake daemon: only the forwarding is checked.)
func TestPASVFromIPv6Client(t *testing.T) {
	for _, tc := range []struct {
		listen    string
		forwarded bool
	}{
		{"127.0.0.1:0", true},
		{"[::1]:0", false},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			ln, err := net.Listen("tcp", tc.listen)
			if err != nil {
				t.Skipf("no %s here: %v", tc.listen, err)
			}
			ln.Close()
			f := pasvFake(t)
			cfg := Config{PassiveAddr: netip.MustParseAddr("127.0.0.1"), DataTimeout: time.Hour}
			p := startProxyOn(t, tc.listen, f.ln.Addr().String(), cfg, testLimits, nil)
			c := dial(t, p.addr)
			c.expect(220)
			c.send("USER bob\r\nPASS good\r\n")
			c.expect(331)
			c.expect(230)
			c.send("PASV\r\n")
			want := 500
			if tc.forwarded {
				want = 227
			}
			r := c.expect(want)
			if got := f.count("PASV"); (got == 1) != tc.forwarded {
				t.Fatalf("PASV reached the daemon %d times; forwarded = %v wanted", got, tc.forwarded)
			}
			if !tc.forwarded && !strings.Contains(r.Text(), "EPSV") {
				t.Fatalf("reply %q does not point to EPSV", r.Text())
			}
		})
	}
}
