//go:build integration

package integration

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/pires/go-proxyproto"
)

// dialViaBalancer connects from lb (a trusted 127.0.0.X) and sends a PROXY
// header naming client, as a TCP load balancer with send-proxy-v2 does.
func dialViaBalancer(t *testing.T, lb, addr, client string) *raw {
	t.Helper()
	r := dialRaw(t, lb, addr)
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(client)), r.c.RemoteAddr())
	if _, err := h.WriteTo(r.c); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBehindBalancer: ftpguard behind a PROXY-sending balancer bans the
// address inside the header, never the balancer's; a header from an
// untrusted 127.0.0.X is refused.
func TestBehindBalancer(t *testing.T) {
	const budget = 3
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget, Extra: "[proxy_protocol]\ntrusted = [\"127.0.0.30/32\"]\n"})
	const attacker = "203.0.113.5:40000"
	for i := 0; i < budget; i++ {
		r := dialViaBalancer(t, "127.0.0.30", g.Addr, attacker)
		r.expect(220)
		r.send("USER "+testUser, "PASS wrong")
		r.expect(331)
		r.expect(530)
		r.c.Close()
	}
	waitFor(t, "the ban of the header's address", func() bool { return g.Count(t, "ban", "key", "203.0.113.5/32") == 1 })
	if code, _ := dialViaBalancer(t, "127.0.0.30", g.Addr, attacker).reply(); code != 421 {
		t.Fatalf("banned client through the balancer: %d; want 421", code)
	}
	// Another client through the same balancer logs in.
	r := dialViaBalancer(t, "127.0.0.30", g.Addr, "198.51.100.7:50000")
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	if g.Count(t, "ban", "key", "127.0.0.30/32") != 0 {
		t.Fatal("the balancer's own address was banned")
	}
	// An untrusted source cannot choose its address.
	u := dialViaBalancer(t, "127.0.0.31", g.Addr, "192.0.2.1:1")
	u.expect(220)
	if code, _ := u.reply(); code != 421 {
		t.Fatalf("untrusted header: %d; want 421", code)
	}
	waitFor(t, "the untrusted header logged", func() bool {
		return g.Count(t, "reject", "reason", "PROXY header from untrusted source", "peer", "127.0.0.31") == 1
	})
}

// headerRelay is a go-proxyproto listener in front of vsftpd (which does
// not read PROXY headers itself): it records each header and relays.
type headerRelay struct {
	Addr    string
	mu      sync.Mutex
	headers []*proxyproto.Header
}

func startHeaderRelay(t *testing.T, backend string) *headerRelay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &proxyproto.Listener{Listener: l}
	hr := &headerRelay{Addr: l.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { pl.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			hr.mu.Lock()
			hr.headers = append(hr.headers, c.(*proxyproto.Conn).ProxyHeader())
			hr.mu.Unlock()
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(b, c); b.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(c, b); c.Close(); b.Close() }()
		}
	}()
	return hr
}

// TestSendProxy: with send_proxy the daemon's side receives a PROXY header
// naming the client (checked by a go-proxyproto listener in front of
// vsftpd), and sessions work through it, data included.
func TestSendProxy(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			d := startVsftpd(t)
			hr := startHeaderRelay(t, d.Addr)
			g := startGuard(t, hr.Addr, guardOpts{SendProxy: v})
			c, err := ftpClient(t, "127.0.0.32", g.Addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Login(testUser, testPass); err != nil {
				t.Fatal(err)
			}
			if _, err := c.List(""); err != nil {
				t.Fatalf("LIST through send_proxy: %v", err)
			}
			c.Quit()
			hr.mu.Lock()
			defer hr.mu.Unlock()
			if len(hr.headers) != 1 || hr.headers[0] == nil {
				t.Fatalf("headers seen: %v", hr.headers)
			}
			h := hr.headers[0]
			if h.Command != proxyproto.PROXY || fmt.Sprint("v", h.Version) != v ||
				!strings.HasPrefix(h.SourceAddr.String(), "127.0.0.32:") {
				t.Fatalf("header %v %v from %v; want a %s PROXY header from 127.0.0.32", h.Version, h.Command, h.SourceAddr, v)
			}
		})
	}
}
