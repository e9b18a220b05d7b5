package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ftpguard/ftpguard/limiter"
)

// dialWithHeader connects to addr and sends a PROXY header naming src.
func dialWithHeader(t *testing.T, addr string, version byte, src string) *client {
	t.Helper()
	c := dial(t, addr)
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), c.c.RemoteAddr())
	if _, err := h.WriteTo(c.c); err != nil {
		t.Fatal(err)
	}
	return c
}

func trusting(cidr string) Config {
	return Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix(cidr)}, ProxyHeaderTimeout: 300 * time.Millisecond}
}

// TestProxyHeaderNamesThePeer: behind a trusted balancer the address in
// the header is banned, never the balancer's.
func TestProxyHeaderNamesThePeer(t *testing.T) {
	for _, v := range []byte{1, 2} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			f := startFake(t, nil)
			p := startProxy(t, f.ln.Addr().String(), trusting("127.0.0.0/8"), testLimits)
			for i := 0; i < testLimits.Failures; i++ {
				c := dialWithHeader(t, p.addr, v, "192.0.2.9:40000")
				c.expect(220)
				c.send("USER u\r\nPASS bad\r\nQUIT\r\n")
				c.replies()
			}
			if p.lim.Check(time.Now(), netip.MustParseAddr("192.0.2.9")).Allowed {
				t.Fatal("the peer named in the header is not banned")
			}
			if !p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")).Allowed {
				t.Fatal("the balancer's own address was banned")
			}
			c := dialWithHeader(t, p.addr, v, "192.0.2.9:40001")
			c.expect(421)
			c = dialWithHeader(t, p.addr, v, "198.51.100.1:40000")
			c.expect(220)
		})
	}
}

// TestProxyHeaderFromUntrustedRefused: a header from a source that is not
// trusted is refused and logged; the address it names is never used.
func TestProxyHeaderFromUntrustedRefused(t *testing.T) {
	f := startFake(t, nil)
	cfg := trusting("127.0.0.99/32")
	cfg.ProxyHeaderTimeout = time.Minute // were an untrusted client probed, its greeting would wait this long
	p := startProxy(t, f.ln.Addr().String(), cfg, testLimits)
	c := dialWithHeader(t, p.addr, 1, "192.0.2.9:40000")
	c.expect(220)
	if r := c.expect(421); !strings.Contains(r.Text(), "PROXY") {
		t.Fatalf("reply %q", r.Text())
	}
	if !strings.Contains(p.logs.String(), "PROXY header from untrusted source") {
		t.Fatalf("not logged:\n%s", p.logs)
	}
	if strings.Contains(p.logs.String(), "peer=192.0.2.9") {
		t.Fatal("the address in an untrusted header was used")
	}
	// A direct client from an untrusted source without a header is not
	// probed for one (FTP servers speak first): its greeting comes within
	// dial's 10 s deadline, long before the minute a probe would take.
	dial(t, p.addr).expect(220)
}

// TestTrustedSourceWithoutHeader: a trusted source that sends no header is
// dropped after the header timeout; it holds nothing (goleak).
func TestTrustedSourceWithoutHeader(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), trusting("127.0.0.0/8"), testLimits)
	c := dial(t, p.addr)
	c.expectEOF()
	if !strings.Contains(p.logs.String(), "PROXY header") {
		t.Fatalf("not logged:\n%s", p.logs)
	}
	if f.conns != 0 {
		t.Fatal("the backend was dialed")
	}
}

// TestProxyLocalHeaderIsHealthCheck: a LOCAL header (the balancer's own
// check) gets 220 from the proxy and counts against nobody.
func TestProxyLocalHeaderIsHealthCheck(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), trusting("127.0.0.0/8"), testLimits)
	c := dial(t, p.addr)
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if _, err := h.WriteTo(c.c); err != nil {
		t.Fatal(err)
	}
	c.expect(220)
	c.expectEOF()
}

// TestSendProxy: with SendProxy the backend receives a PROXY header (not
// LOCAL) naming the client, in v1 and v2.
func TestSendProxy(t *testing.T) {
	for _, v := range []byte{1, 2} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			raw, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan *proxyproto.Header, 1)
			ln := &proxyproto.Listener{Listener: raw, ReadHeaderTimeout: time.Second}
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				got <- c.(*proxyproto.Conn).ProxyHeader()
				fmt.Fprint(c, "220 ok\r\n")
				c.Read(make([]byte, 64))
			}()
			defer ln.Close()
			cfg := trusting("127.0.0.0/8")
			cfg.SendProxy = v
			p := startProxy(t, raw.Addr().String(), cfg, testLimits)
			c := dialWithHeader(t, p.addr, 2, "[2001:db8::7]:41000")
			c.expect(220)
			h := <-got
			if h == nil || h.Command != proxyproto.PROXY || h.Version != v {
				t.Fatalf("backend got header %+v; want a v%d PROXY command", h, v)
			}
			if src := h.SourceAddr.(*net.TCPAddr); src.String() != "[2001:db8::7]:41000" {
				t.Fatalf("backend was told the client is %v", src)
			}
		})
	}
}

// TestProxyV2HeaderFromUntrustedRefused: the binary v2 header is caught
// too, though the command reader sees it as a line with a NUL.
func TestProxyV2HeaderFromUntrustedRefused(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dialWithHeader(t, p.addr, 2, "192.0.2.9:40000")
	c.expect(220)
	if r := c.expect(421); !strings.Contains(r.Text(), "PROXY") {
		t.Fatalf("reply %q", r.Text())
	}
	if f.count("QUIT") != 0 {
		t.Fatal("the QUIT inside the v2 signature reached the daemon")
	}
}

// TestUserBudget: guesses for one account from many addresses (each under
// its own budget) stop reaching the daemon once the account's budget is
// spent; the owner, known-good from an earlier login, still gets through.
func TestUserBudget(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), trusting("127.0.0.0/8"), limiter.Config{Failures: 5, Window: time.Hour, BanTime: time.Hour})
	users, err := limiter.NewUsers(limiter.UserConfig{Failures: 3, Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p.srv.SetUsers(users)
	login := func(src, pass string) int {
		c := dialWithHeader(t, p.addr, 2, src)
		c.expect(220)
		c.send("USER victim\r\nPASS " + pass + "\r\n")
		c.expect(331)
		r, _ := c.r.ReadReply()
		c.c.Close()
		return r.Code
	}
	if code := login("198.51.100.1:1000", "good"); code != 230 {
		t.Fatalf("owner's first login: %d", code)
	}
	for i := 0; i < 10; i++ {
		if code := login(fmt.Sprintf("203.0.113.%d:1000", i+1), "guess"); code != 530 {
			t.Fatalf("guess %d: %d; want 530", i, code)
		}
	}
	if n := f.count("PASS guess"); n != 3 {
		t.Fatalf("the daemon saw %d guesses; want 3 (the account's budget)", n)
	}
	if code := login("198.51.100.1:1001", "good"); code != 230 {
		t.Fatalf("owner during the attack: %d; want 230", code)
	}
}
