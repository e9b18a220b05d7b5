package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/nftnat"
)

// fakePath stands for the kernel's NAT table: it records the mappings in
// force (it moves no bytes: the integration suite runs the real one).
type fakePath struct {
	mu      sync.Mutex
	live    map[nftnat.Mapping]time.Duration
	history []nftnat.Mapping
	cut     []nftnat.Mapping // Cut calls
	fail    error            // Map fails with it
	counts  nftnat.Counts    // what Release returns
	release []released       // Release calls
	block   chan struct{}    // Release waits for it to close (nil: no wait) when asked to wait
}

type released struct {
	m    nftnat.Mapping
	wait time.Duration
}

func newFakePath() *fakePath { return &fakePath{live: map[nftnat.Mapping]time.Duration{}} }

func (f *fakePath) Map(m nftnat.Mapping, timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.live[m] = timeout
	f.history = append(f.history, m)
	return nil
}

func (f *fakePath) Unmap(m nftnat.Mapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.live, m)
	return nil
}

func (f *fakePath) Cut(m nftnat.Mapping, timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut = append(f.cut, m)
	return nil
}

func (f *fakePath) Release(m nftnat.Mapping, wait time.Duration, stop <-chan struct{}) (nftnat.Counts, error) {
	f.mu.Lock()
	f.release = append(f.release, released{m, wait})
	block := f.block
	f.mu.Unlock()
	if block != nil && wait > 0 {
		select {
		case <-block:
		case <-stop:
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts, nil
}

func (f *fakePath) made() []nftnat.Mapping {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]nftnat.Mapping(nil), f.history...)
}

func (f *fakePath) releases() []released {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]released(nil), f.release...)
}

func (f *fakePath) mapped() map[nftnat.Mapping]time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[nftnat.Mapping]time.Duration{}
	for m, d := range f.live {
		out[m] = d
	}
	return out
}

// transferFake answers PASV/EPSV with a passive listener per session and
// RETR by its argument: "missing" 550; "nodata" 150 then 226 without a data
// connection; "late" 200 ms, then 150 and 226 (a short transfer whose 1xx
// comes after the proxy has read on); "slow" 150, 800 ms, 226; "data" 150,
// accept, "hello", 226.
func transferFake(t *testing.T) (*fakeFTPD, func() int) {
	var mu sync.Mutex
	pasv := map[net.Conn]net.Listener{}
	ports := func() int {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range pasv {
			return l.Addr().(*net.TCPAddr).Port
		}
		return 0
	}
	f := startFake(t, func(c net.Conn, line string) bool {
		verb, arg, _ := strings.Cut(line, " ")
		switch verb {
		case "PASV", "EPSV":
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Error(err)
				return false
			}
			t.Cleanup(func() { ln.Close() })
			mu.Lock()
			pasv[c] = ln
			mu.Unlock()
			ap := netip.MustParseAddrPort(ln.Addr().String())
			r := ftpproto.FormatEPSV(ap.Port())
			if verb == "PASV" {
				r, _ = ftpproto.FormatPASV(ap)
			}
			c.Write(r.AppendWire(nil))
		case "RETR":
			switch arg {
			case "missing":
				fmt.Fprint(c, "550 Failed to open file.\r\n")
			case "nodata":
				fmt.Fprint(c, "150 Opening.\r\n226 Done.\r\n")
			case "late":
				time.Sleep(200 * time.Millisecond)
				fmt.Fprint(c, "150 Opening.\r\n226 Done.\r\n")
			case "slow":
				fmt.Fprint(c, "150 Opening.\r\n")
				time.Sleep(800 * time.Millisecond)
				fmt.Fprint(c, "226 Done.\r\n")
			case "data":
				mu.Lock()
				ln := pasv[c]
				mu.Unlock()
				ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
				dc, err := ln.Accept()
				if err != nil {
					fmt.Fprint(c, "425 No data connection.\r\n")
					return true
				}
				fmt.Fprint(c, "150 Opening.\r\n")
				dc.Write([]byte("hello"))
				dc.Close()
				fmt.Fprint(c, "226 Done.\r\n")
			}
		case "ABOR":
			fmt.Fprint(c, "226 ABOR successful.\r\n")
		default:
			return false
		}
		return true
	})
	return f, ports
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestKernelPathMapping: with a data path, the daemon's 227/229 is
// answered with a port of the proxy's own that is mapped — exactly the
// client's address, the proxy's port, the daemon's port (on its control
// address), from the proxy's end of the control connection, for
// data_timeout and a little — and reserved (nothing listens: a connection
// that the kernel does not map is refused); the mapping and the port's
// hold end at the transfer's 1xx, data_timeout, a new PASV, ABOR and the
// session's end (a refused transfer leaves it: TestKernelPathRefusal).
func TestKernelPathMapping(t *testing.T) {
	for _, c := range []struct {
		name string
		end  func(t *testing.T, cl *client)
		sync bool // removed before the next reply is read
	}{
		{"1xx", func(t *testing.T, cl *client) { cl.send("RETR nodata\r\n"); cl.expect(150) }, true},
		{"data_timeout", func(t *testing.T, cl *client) {}, false},
		{"ABOR", func(t *testing.T, cl *client) { cl.send("ABOR\r\n"); cl.expect(226) }, true},
		{"session end", func(t *testing.T, cl *client) { cl.send("QUIT\r\n"); cl.expect(221) }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, daemonPort := transferFake(t)
			dataTimeout := time.Hour
			if c.name == "data_timeout" {
				dataTimeout = 200 * time.Millisecond
			}
			p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: dataTimeout}, testLimits)
			fp := newFakePath()
			p.srv.SetDataPath(fp)
			cl := loginFrom(t, "127.0.0.1", p.addr)
			cl.send("EPSV\r\n")
			port := epsvPortOf(t, cl.expect(229))
			want := nftnat.Mapping{Client: netip.MustParseAddr("127.0.0.1"),
				Local:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
				Daemon: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(daemonPort())),
				Source: netip.MustParseAddr("127.0.0.1")}
			if got := fp.mapped(); len(got) != 1 || got[want] != dataTimeout+mapSlack {
				t.Fatalf("mappings %v; want %v for %v", got, want, dataTimeout+mapSlack)
			}
			if dc, err := net.Dial("tcp", want.Local.String()); err == nil {
				dc.Close()
				t.Fatal("the reserved port accepted a connection")
			}
			key := p.lim.Key(want.Client)
			if n := p.srv.ports.count(key); n != 1 {
				t.Fatalf("holds %d; want 1", n)
			}
			c.end(t, cl)
			if c.sync {
				if got := fp.mapped(); len(got) != 0 {
					t.Fatalf("mappings %v after the reply", got)
				}
			}
			eventually(t, "the mapping removed", func() bool { return len(fp.mapped()) == 0 })
			eventually(t, "the hold given back", func() bool { return p.srv.ports.count(key) == 0 })
			if ln, err := net.Listen("tcp", want.Local.String()); err != nil {
				t.Errorf("the port is still reserved: %v", err)
			} else {
				ln.Close()
			}
		})
	}
}

// TestKernelPathRefusal: a transfer refused without a 1xx (550) leaves
// the pending mapping and its hold in place for the next transfer command,
// as the relay leaves its passive listener; the next transfer's 1xx
// removes it. (It was removed at the 550: a client retrying without a new
// EPSV found the port closed.)
func TestKernelPathRefusal(t *testing.T) {
	f, _ := transferFake(t)
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: time.Hour}, testLimits)
	fp := newFakePath()
	p.srv.SetDataPath(fp)
	cl := loginFrom(t, "127.0.0.1", p.addr)
	cl.send("EPSV\r\n")
	cl.expect(229)
	key := p.lim.Key(netip.MustParseAddr("127.0.0.1"))
	cl.send("RETR missing\r\n")
	cl.expect(550)
	if got := fp.mapped(); len(got) != 1 {
		t.Fatalf("mappings %v after the refusal; want the pending one", got)
	}
	if n := p.srv.ports.count(key); n != 1 {
		t.Fatalf("holds %d after the refusal; want 1", n)
	}
	cl.send("RETR nodata\r\n")
	cl.expect(150)
	if got := fp.mapped(); len(got) != 0 {
		t.Fatalf("mappings %v after the next transfer's 1xx", got)
	}
	cl.expect(226)
	eventually(t, "the hold given back", func() bool { return p.srv.ports.count(key) == 0 })
	if n := len(fp.made()); n != 1 {
		t.Errorf("%d mappings made; want 1", n)
	}
}

// bytesObserver records the bytes the proxy counts.
type bytesObserver struct {
	nopObserver
	up, down atomic.Int64
}

func (o *bytesObserver) Bytes(upload bool, n int64) {
	if upload {
		o.up.Add(n)
	} else {
		o.down.Add(n)
	}
}

// TestKernelPathCounts: the bytes of a transfer the kernel carried are
// counted as the relay's are (Observer.Bytes, both ways) at its final
// reply, which waits for the data path's count (the kernel's view of the
// daemon's way ending, at most data_timeout); each mapping's counting
// ends once — counted for a transfer, discarded for a port replaced by a
// new EPSV or left at the session's end. (The kernel's transfers used to
// count no byte.)
func TestKernelPathCounts(t *testing.T) {
	f, _ := transferFake(t)
	obs := &bytesObserver{}
	p := startProxyWith(t, f.ln.Addr().String(), Config{DataTimeout: time.Hour}, testLimits, func(srv *Server) { srv.SetObserver(obs) })
	fp := newFakePath()
	fp.counts = nftnat.Counts{Up: 7, Down: 1234, Exact: true, Conns: 1}
	fp.block = make(chan struct{})
	p.srv.SetDataPath(fp)
	cl := loginFrom(t, "127.0.0.1", p.addr)
	cl.send("EPSV\r\n")
	cl.expect(229)
	cl.send("RETR nodata\r\n")
	cl.expect(150)
	replied := make(chan ftpproto.Reply, 1)
	go func() {
		r, _ := cl.r.ReadReply()
		replied <- r
	}()
	select {
	case r := <-replied:
		t.Fatalf("the transfer's reply %v before the count", r.Lines)
	case <-time.After(200 * time.Millisecond):
	}
	close(fp.block)
	if r := <-replied; r.Code != 226 {
		t.Fatalf("the transfer's reply: %v", r.Lines)
	}
	if up, down := obs.up.Load(), obs.down.Load(); up != 7 || down != 1234 {
		t.Fatalf("counted %d up, %d down at the reply; want 7, 1234", up, down)
	}
	rel := fp.releases()
	if len(rel) != 1 || rel[0].m != fp.made()[0] || rel[0].wait != time.Hour {
		t.Fatalf("releases %+v; want the transfer's mapping's, waiting data_timeout", rel)
	}

	cl.send("EPSV\r\n")
	cl.expect(229)
	cl.send("EPSV\r\n") // the first one's port, never used, is replaced
	cl.expect(229)
	cl.send("QUIT\r\n") // the second one's is left
	cl.expect(221)
	eventually(t, "every mapping released", func() bool { return len(fp.releases()) == 3 })
	rel, made := fp.releases(), fp.made()
	for i, r := range rel[1:] {
		if r.m != made[i+1] || r.wait != 0 {
			t.Errorf("release %d: %+v; want mapping %v, no wait", i+1, r, made[i+1])
		}
	}
	if up, down := obs.up.Load(), obs.down.Load(); up != 7 || down != 1234 {
		t.Errorf("counted %d up, %d down in all; want only the transfer's 7, 1234", up, down)
	}
}

// TestKernelPathNewPASV: a session's new PASV replaces its pending
// mapping; the key's cap counts mappings like listeners.
func TestKernelPathNewPASV(t *testing.T) {
	f, _ := transferFake(t)
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: time.Hour, MaxPortsPerKey: 1}, testLimits)
	fp := newFakePath()
	p.srv.SetDataPath(fp)
	a := loginFrom(t, "127.0.0.1", p.addr)
	a.send("PASV\r\n")
	first, err := ftpproto.ParsePASV(a.expect(227).Text())
	if err != nil {
		t.Fatal(err)
	}
	a.send("PASV\r\n")
	second, _ := ftpproto.ParsePASV(a.expect(227).Text())
	got := fp.mapped()
	if len(got) != 1 {
		t.Fatalf("mappings %v; want only the second", got)
	}
	for m := range got {
		if m.Local.Port() != second.Port() || len(fp.history) != 2 {
			t.Fatalf("mapping %v of %d made; want port %d of 2 made (the first was %d)", m, len(fp.history), second.Port(), first.Port())
		}
	}
	b := loginFrom(t, "127.0.0.1", p.addr)
	b.send("EPSV\r\n")
	if r := b.expect(425); !strings.Contains(r.Text(), "Too many data ports") {
		t.Fatalf("425 %q", r.Text())
	}
}

// TestKernelPathFallback: a mapping that cannot be made (no nftables, a
// netlink error) relays that transfer as before; a data connection of
// the client's then gets the daemon's bytes through the proxy.
func TestKernelPathFallback(t *testing.T) {
	f, _ := transferFake(t)
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: 5 * time.Second}, testLimits)
	fp := newFakePath()
	fp.fail = errors.New("netlink: operation not permitted")
	p.srv.SetDataPath(fp)
	cl := loginFrom(t, "127.0.0.1", p.addr)
	cl.send("PASV\r\n")
	ap, err := ftpproto.ParsePASV(cl.expect(227).Text())
	if err != nil {
		t.Fatal(err)
	}
	relayedRETR(t, cl, ap.String())
	if !strings.Contains(p.logs.String(), "kernel data path failed; relaying this transfer") {
		t.Error("the fallback was not logged")
	}
}

// TestKernelPathTimeWait: a passive port that a relayed transfer left
// with a connection in TIME_WAIT (one whose client leg the proxy closed
// first: a plain relayed download, and curl's PROT P transfers too) can be
// listened on but not reserved (bound without SO_REUSEADDR): such a
// transfer is relayed. It used to get "425 … no port free", so that with
// relayed transfers and a narrow port range plain transfers failed while
// the relay had ports to spare.
func TestKernelPathTimeWait(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	sc.Close() // first: TIME_WAIT on 127.0.0.1:port
	io.Copy(io.Discard, c)
	c.Close()

	f, _ := transferFake(t)
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: 5 * time.Second, PassivePorts: PortRange{port, port}}, testLimits)
	fp := newFakePath()
	p.srv.SetDataPath(fp)
	cl := loginFrom(t, "127.0.0.1", p.addr)
	cl.send("EPSV\r\n")
	r, err := cl.r.ReadReply()
	if err != nil || r.Code != 229 {
		t.Fatalf("EPSV with the range's one port in TIME_WAIT: %v, %v; want 229 (relayed)", r.Lines, err)
	}
	if got := epsvPortOf(t, r); got != port {
		t.Fatalf("229 port %d; want %d", got, port)
	}
	if m := fp.mapped(); len(m) != 0 {
		t.Fatalf("mapped %v; want the transfer relayed", m)
	}
	relayedRETR(t, cl, net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
	if n := p.srv.ports.count(p.lim.Key(netip.MustParseAddr("127.0.0.1"))); n != 0 {
		t.Errorf("holds %d after the transfer; want 0", n)
	}
}

// TestKernelPathIdle: a transfer in the kernel is a transfer for the idle
// timeout — the control connection is not closed while it runs, however
// long — and once its final reply has come the idle timeout applies again,
// counted from the transfer's end as for a relayed one. (It was counted
// from the transfer's command: a kernel transfer longer than idle_timeout
// ended its session with 421 right after its 226.)
func TestKernelPathIdle(t *testing.T) {
	f, _ := transferFake(t)
	const idle = 300 * time.Millisecond
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: time.Hour, IdleTimeout: idle}, testLimits)
	p.srv.SetDataPath(newFakePath())
	cl := loginFrom(t, "127.0.0.1", p.addr)
	cl.send("EPSV\r\n")
	cl.expect(229)
	cl.send("RETR slow\r\n")
	cl.expect(150)
	cl.expect(226) // 800 ms later: the idle timeout (300 ms) did not end the session
	start := time.Now()
	r := cl.expect(421)
	waited := time.Since(start)
	if !strings.Contains(r.Text(), "Idle timeout") || waited > 5*time.Second {
		t.Fatalf("after the transfer: %q after %v; want the idle timeout", r.Text(), waited)
	}
	if waited < idle/2 {
		t.Fatalf("idle timeout %v after the transfer's end; want about %v", waited, idle)
	}
}

// TestKernelPathIdleAfterShortTransfer: a kernel transfer shorter than
// the idle timeout leaves the idle timeout in force. Its 1xx used to clear
// the client's read deadline behind setClientDeadline's back: the deadline
// it remembered was still in the future at the final reply, so none was
// set again, and the session, idle from then on, was never ended.
func TestKernelPathIdleAfterShortTransfer(t *testing.T) {
	f, _ := transferFake(t)
	const idle = time.Second
	p := startProxy(t, f.ln.Addr().String(), Config{DataTimeout: time.Hour, IdleTimeout: idle}, testLimits)
	p.srv.SetDataPath(newFakePath())
	cl := loginFrom(t, "127.0.0.1", p.addr)
	cl.c.SetDeadline(time.Now().Add(4 * idle))
	cl.send("EPSV\r\n")
	cl.expect(229)
	cl.send("RETR late\r\n") // 150 and 226 200 ms later: the proxy reads on meanwhile
	cl.expect(150)
	cl.expect(226)
	r, err := cl.r.ReadReply()
	if err != nil || r.Code != 421 || !strings.Contains(r.Text(), "Idle timeout") {
		t.Fatalf("idle after a short kernel transfer: %v, %v; want the idle timeout's 421 within %v", r.Lines, err, 3*idle)
	}
}

// addrConn is a connection of which only the daemon's address is asked.
type addrConn struct {
	net.Conn
	remote netip.AddrPort
}

func (c addrConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// TestKernelPathRelayReasons: what is relayed although a data path is
// set, and why (logged once a session).
func TestKernelPathRelayReasons(t *testing.T) {
	ap := netip.MustParseAddrPort
	v4, v6 := ap("127.0.0.1:2121"), ap("[::1]:2121")
	for _, c := range []struct {
		name   string
		path   bool
		peer   netip.AddrPort
		local  netip.AddrPort
		daemon netip.AddrPort
		protP  bool
		btls   bool
		viaLB  bool
		want   string // "" kernel; else a part of the reason
	}{
		{"kernel", true, ap("192.0.2.7:4000"), ap("198.51.100.1:21"), v4, false, false, false, ""},
		{"kernel, IPv6", true, ap("[2001:db8::7]:4000"), ap("[2001:db8::1]:21"), v6, false, false, false, ""},
		{"no data path", false, ap("192.0.2.7:4000"), ap("198.51.100.1:21"), v4, false, false, false, "off"},
		{"PROT P", true, ap("192.0.2.7:4000"), ap("198.51.100.1:21"), v4, true, false, false, "PROT P"},
		{"backend_tls", true, ap("192.0.2.7:4000"), ap("198.51.100.1:21"), v4, false, true, false, "backend_tls"},
		{"balancer", true, ap("192.0.2.7:4000"), ap("198.51.100.1:21"), v4, false, false, true, "balancer"},
		{"IPv6 client, IPv4 daemon", true, ap("[2001:db8::7]:4000"), ap("[2001:db8::1]:21"), v4, false, false, false, "families"},
		{"scoped", true, ap("[fe80::7%eth0]:4000"), ap("[fe80::1%eth0]:21"), v6, false, false, false, "scoped"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := &Server{}
			if c.path {
				srv.SetDataPath(newFakePath())
			}
			s := &session{srv: srv, peer: c.peer, ends: endpoints{peer: c.peer, local: c.local, reached: c.local, viaLB: c.viaLB},
				backend: addrConn{remote: c.daemon}}
			s.protP.Store(c.protP)
			if c.btls {
				s.btls = &tls.Config{}
			}
			got := s.relayReason()
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
				t.Errorf("relayReason() = %q; want %q", got, c.want)
			}
		})
	}
}

// epsvPortOf returns the port of a 229 reply.
func epsvPortOf(t *testing.T, r ftpproto.Reply) uint16 {
	t.Helper()
	port, err := ftpproto.ParseEPSV(r.Text())
	if err != nil {
		t.Fatalf("229 %q: %v", r.Text(), err)
	}
	return port
}

// relayedRETR connects to the passive port at addr that cl was announced,
// sends "RETR data" and checks that transferFake's "hello" comes through
// the relay, then the 226.
func relayedRETR(t *testing.T, cl *client, addr string) {
	t.Helper()
	dc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("relayed data connection: %v", err)
	}
	defer dc.Close()
	cl.send("RETR data\r\n")
	cl.expect(150)
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(dc); err != nil || string(b) != "hello" {
		t.Fatalf("relayed %q, %v", b, err)
	}
	cl.expect(226)
}
