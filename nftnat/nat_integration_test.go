//go:build integration

// Tests on the machine's real nftables (root or CAP_NET_ADMIN). Each test
// owns a table "ftpguard-nat-test-<pid>-<n>", deleted in cleanup even when
// the test fails; traffic goes to 127.0.0.0/8 only, to ports of the test's
// own listeners. Without nftables support a test skips, unless CI is set:
// then it fails.
//
//	go test -tags integration -run . ./nftnat/

package nftnat

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
)

var tableSeq atomic.Int32

// testTable returns a table name of t's own, deleted in cleanup; it skips
// t (fails it in CI) without kernel nftables.
func testTable(t *testing.T) string {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if _, err := exec.LookPath("nft"); err != nil {
		fail("nft CLI missing (apt-get install nftables): %v", err)
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	if err != nil {
		fail("no nftables support: %v", err)
	}
	name := fmt.Sprintf("ftpguard-nat-test-%d-%d", os.Getpid(), tableSeq.Add(1))
	t.Cleanup(func() {
		if exists(name) {
			if out, err := exec.Command("nft", "delete", "table", "inet", name).CombinedOutput(); err != nil {
				t.Errorf("cleanup: nft delete table inet %s: %v: %s", name, err, out)
			}
		}
	})
	return name
}

// exists reports whether table inet name exists.
func exists(name string) bool {
	return exec.Command("nft", "list", "table", "inet", name).Run() == nil
}

// elements returns nft's listing of map (or set: cut4, cut6) name in table.
func elements(t *testing.T, table, name string) string {
	t.Helper()
	kind := "map"
	if name == SetCut4 || name == SetCut6 {
		kind = "set"
	}
	out, err := exec.Command("nft", "list", kind, "inet", table, name).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list %s inet %s %s: %v: %s", kind, table, name, err, out)
	}
	if i := strings.Index(string(out), "elements = "); i >= 0 {
		return string(out[i:])
	}
	return ""
}

// daemonPort listens on 127.0.0.1 and returns the listener and its port.
func daemonPort(t *testing.T) (*net.TCPListener, uint16) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener), uint16(l.Addr().(*net.TCPAddr).Port)
}

// freePort returns a port nothing listens on (bound and released).
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// dial connects from src to addr within 2 s.
func dial(src string, addr netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp", addr.String())
}

// acceptMapped connects from src to local, which a mapping sends to ln,
// and returns the client's connection and the daemon's side of it, both
// closed when the test ends.
func acceptMapped(t *testing.T, src string, local netip.AddrPort, ln *net.TCPListener) (net.Conn, net.Conn) {
	t.Helper()
	c, err := dial(src, local)
	if err != nil {
		t.Fatalf("the mapped client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return c, sc
}

// TestMapUnmap: on loopback (the nat output hook), a mapped client reaches
// the daemon's port through the proxy's port and the daemon sees the
// Source address; another address, and the client once unmapped, are
// refused; the established connection outlives the mapping; Close
// removes the table, and Open after a "crash" (a table left with elements)
// starts clean.
func TestMapUnmap(t *testing.T) {
	name := testTable(t)
	if err := Probe(name); err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if exists(name) {
		t.Fatal("Probe left the table behind")
	}
	tb, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	ln, dport := daemonPort(t)
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	m := Mapping{Client: netip.MustParseAddr("127.0.0.31"), Local: local,
		Daemon: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dport), Source: netip.MustParseAddr("127.0.0.1")}
	if err := tb.Map(m, time.Minute); err != nil {
		t.Fatal(err)
	}
	if el := elements(t, name, MapDNAT4); !strings.Contains(el, fmt.Sprintf("127.0.0.31 . 127.0.0.1 . %d", local.Port())) {
		t.Fatalf("dnat4 after Map: %q", el)
	}
	if err := tb.Map(m, time.Minute); err != nil {
		t.Fatalf("Map again (same elements): %v", err)
	}

	if c, err := dial("127.0.0.32", local); err == nil {
		c.Close()
		t.Fatal("another address connected through the mapping")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("another address: %v; want connection refused", err)
	}

	c, sc := acceptMapped(t, "127.0.0.31", local, ln)
	if from := netip.MustParseAddrPort(sc.RemoteAddr().String()).Addr(); from != m.Source {
		t.Errorf("the daemon sees %v; want the source %v", from, m.Source)
	}
	if err := tb.Unmap(m); err != nil {
		t.Fatal(err)
	}
	if el := elements(t, name, MapDNAT4) + elements(t, name, MapSNAT4); el != "" {
		t.Fatalf("elements left after Unmap: %q", el)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	sc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := sc.Read(buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the established connection after Unmap: %q, %v", buf, err)
	}
	if c2, err := dial("127.0.0.31", local); err == nil {
		c2.Close()
		t.Fatal("the client connected again after Unmap")
	}
	if err := tb.Unmap(m); err != nil {
		t.Errorf("Unmap of a mapping already gone: %v", err)
	}

	// A mapping the kernel dropped by its timeout.
	if err := tb.Map(m, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := tb.Unmap(m); err != nil {
		t.Errorf("Unmap after the timeout: %v", err)
	}
	// A stale element under the same key with other data is replaced.
	stale := m
	stale.Daemon = netip.AddrPortFrom(m.Daemon.Addr(), m.Daemon.Port()+1)
	if err := tb.Map(stale, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := tb.Map(m, time.Minute); err != nil {
		t.Fatalf("Map over a stale element: %v", err)
	}

	// A flushed ruleset (an nftables service reload) took the table: the
	// next Map re-creates it.
	if out, err := exec.Command("nft", "delete", "table", "inet", name).CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v: %s", err, out)
	}
	if err := tb.Map(m, time.Minute); err != nil {
		t.Fatalf("Map after the table was deleted: %v", err)
	}
	if el := elements(t, name, MapDNAT4); !strings.Contains(el, fmt.Sprintf("127.0.0.31 . 127.0.0.1 . %d", local.Port())) {
		t.Fatalf("dnat4 after the re-creating Map: %q", el)
	}

	// A crash leaves the table with elements; the next Open starts clean.
	again, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, mp := range []string{MapDNAT4, MapSNAT4, MapDNAT6, MapSNAT6} {
		if el := elements(t, name, mp); el != "" {
			t.Errorf("%s after a re-Open: %q", mp, el)
		}
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	if exists(name) {
		t.Fatal("table left after Close")
	}
	if err := tb.Close(); err != nil {
		t.Errorf("Close of a table already gone: %v", err)
	}
	if err := tb.Map(m, time.Minute); !errors.Is(err, ErrClosed) {
		t.Errorf("Map after Close: %v; want ErrClosed", err)
	}
}

// TestMapUnmap6: the IPv6 maps on loopback (::1, the one IPv6 loopback
// address: client, proxy and daemon share it, so "another address" is
// another port of the proxy's, never mapped). A mapped client reaches the
// daemon through the proxy's port; the proxy's other port is refused; after
// Unmap the client is refused too.
func TestMapUnmap6(t *testing.T) {
	name := testTable(t)
	if c, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		c.Close()
	}
	tb, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ln := l.(*net.TCPListener)
	dport := uint16(ln.Addr().(*net.TCPAddr).Port)
	free := func() uint16 {
		l, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return uint16(l.Addr().(*net.TCPAddr).Port)
	}
	lo := netip.MustParseAddr("::1")
	local, other := netip.AddrPortFrom(lo, free()), netip.AddrPortFrom(lo, free())
	m := Mapping{Client: lo, Local: local, Daemon: netip.AddrPortFrom(lo, dport), Source: lo}
	if err := tb.Map(m, time.Minute); err != nil {
		t.Fatal(err)
	}
	if el := elements(t, name, MapDNAT6); !strings.Contains(el, fmt.Sprintf("::1 . ::1 . %d", local.Port())) {
		t.Fatalf("dnat6 after Map: %q", el)
	}
	if el := elements(t, name, MapDNAT4); el != "" {
		t.Fatalf("dnat4 after an IPv6 Map: %q", el)
	}
	if c, err := dial("::1", other); err == nil {
		c.Close()
		t.Fatal("a port never mapped let a connection through")
	}
	c, sc := acceptMapped(t, "::1", local, ln)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	sc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("through the IPv6 mapping: %q, %v", buf, err)
	}
	if err := tb.Unmap(m); err != nil {
		t.Fatal(err)
	}
	if el := elements(t, name, MapDNAT6) + elements(t, name, MapSNAT6); el != "" {
		t.Fatalf("elements left after Unmap: %q", el)
	}
	if c2, err := dial("::1", local); err == nil {
		c2.Close()
		t.Fatal("the client connected again after Unmap")
	}
}

// TestMapAfterFlushConcurrent: when a flushed ruleset took the table,
// mappings made at once by several sessions all survive: the table is
// re-created once. Each Map that found it gone used to re-create it in
// turn, and each re-creation emptied it of the mappings made since.
func TestMapAfterFlushConcurrent(t *testing.T) {
	name, tb := openTestTable(t)
	lo := netip.MustParseAddr("127.0.0.1")
	const n = 8
	for round := range 3 {
		if out, err := exec.Command("nft", "delete", "table", "inet", name).CombinedOutput(); err != nil {
			t.Fatalf("nft delete table: %v: %s", err, out)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			m := Mapping{Client: netip.AddrFrom4([4]byte{127, 0, 0, byte(40 + i)}),
				Local:  netip.AddrPortFrom(lo, uint16(20000+100*round+i)),
				Daemon: netip.AddrPortFrom(lo, uint16(30000+i)), Source: lo}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = tb.Map(m, time.Minute)
			}()
		}
		close(start)
		wg.Wait()
		el := elements(t, name, MapDNAT4)
		for i := range n {
			if errs[i] != nil {
				t.Errorf("round %d, Map %d: %v", round, i, errs[i])
			} else if !strings.Contains(el, fmt.Sprintf("127.0.0.%d . 127.0.0.1 . %d", 40+i, 20000+100*round+i)) {
				t.Errorf("round %d: mapping %d lost (dnat4: %q)", round, i, el)
			}
		}
		if t.Failed() {
			return
		}
	}
}

// TestCut: a connection the kernel carries through a mapping (the mapping
// already removed, as at the transfer's 1xx) is reset both ways once cut:
// the client's next packet gets a reset, and so does the daemon's; another
// client's connection to the same daemon port is left alone.
func TestCut(t *testing.T) {
	name, tb := openTestTable(t)
	ln, dport := daemonPort(t)
	daemon := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dport)
	conns := map[string][2]net.Conn{}
	var cut Mapping
	for i, client := range []string{"127.0.0.41", "127.0.0.42"} {
		m := Mapping{Client: netip.MustParseAddr(client), Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)),
			Daemon: daemon, Source: netip.MustParseAddr("127.0.0.1")}
		if err := tb.Map(m, time.Minute); err != nil {
			t.Fatal(err)
		}
		c, sc := acceptMapped(t, client, m.Local, ln)
		if err := tb.Unmap(m); err != nil {
			t.Fatal(err)
		}
		conns[client] = [2]net.Conn{c, sc}
		if i == 0 {
			cut = m
		}
	}
	ping := func(from, to net.Conn) error {
		if _, err := from.Write([]byte("ping")); err != nil {
			return err
		}
		to.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 4)
		_, err := io.ReadFull(to, buf)
		return err
	}
	for client, cc := range conns {
		if err := ping(cc[0], cc[1]); err != nil {
			t.Fatalf("%s before the cut: %v", client, err)
		}
	}
	chain := func() error { return exec.Command("nft", "list", "chain", "inet", name, ChainCutOutput).Run() }
	if chain() == nil {
		t.Fatal("a cut chain before the first Cut: every packet of the host would pass it for nothing")
	}
	if err := tb.Cut(cut, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := chain(); err != nil {
		t.Fatalf("no cut chain after Cut: %v", err)
	}
	if el := elements(t, name, SetCut4); !strings.Contains(el, fmt.Sprintf("127.0.0.41 . 127.0.0.1 . %d", dport)) {
		t.Fatalf("cut4 after Cut: %q", el)
	}
	c, sc := conns["127.0.0.41"][0], conns["127.0.0.41"][1]
	c.Write([]byte("more")) // reset: the client's socket is closed by it
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 4)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the client after the cut: %v; want connection reset", err)
	}
	sc.Write([]byte("more"))
	sc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := sc.Read(make([]byte, 4)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the daemon after the cut: %v; want connection reset", err)
	}
	other := conns["127.0.0.42"]
	if err := ping(other[0], other[1]); err != nil {
		t.Errorf("another client's connection after the cut: %v", err)
	}
	if err := ping(other[1], other[0]); err != nil {
		t.Errorf("another client's connection after the cut, the daemon's way: %v", err)
	}
}

// transfer moves up bytes from c to sc and down bytes from sc to c at once,
// then closes: the writer of each way half-closes once it has written,
// each reader reads to EOF (as FTP clients and daemons do). It returns
// what each side read.
func transfer(t *testing.T, c, sc net.Conn, up, down int64) (gotUp, gotDown int64) {
	t.Helper()
	var wg sync.WaitGroup
	var errs [4]error
	send := func(i int, w net.Conn, n int64) {
		defer wg.Done()
		_, errs[i] = io.CopyN(w, zeros{}, n)
		w.(*net.TCPConn).CloseWrite()
	}
	recv := func(i int, r net.Conn, got *int64) {
		defer wg.Done()
		r.SetReadDeadline(time.Now().Add(60 * time.Second))
		*got, errs[i] = io.Copy(io.Discard, r)
	}
	wg.Add(4)
	go send(0, c, up)
	go send(1, sc, down)
	go recv(2, sc, &gotUp)
	go recv(3, c, &gotDown)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	sc.Close()
	return gotUp, gotDown
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// TestCount: the bytes of a connection the kernel carries through a
// mapping (removed once connected, as at the transfer's 1xx) are counted
// as TCP payload, exactly, each way: what each side wrote and the other
// read, no header. Release removes every element it added; a mapping
// nobody connected through counts nothing; one mapping's counts are not
// another's; a connection reset mid-way is counted up to its reset, the
// daemon's way from what the client acknowledged.
func TestCount(t *testing.T) {
	name, tb := openTestTable(t)
	if ok, err := tb.Counting(); !ok {
		t.Fatalf("the table does not count: %v", err)
	}
	ln, dport := daemonPort(t)
	daemon := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dport)
	mapping := func(client string) Mapping {
		m := Mapping{Client: netip.MustParseAddr(client), Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)),
			Daemon: daemon, Source: netip.MustParseAddr("127.0.0.1")}
		if err := tb.Map(m, time.Minute); err != nil {
			t.Fatal(err)
		}
		return m
	}
	empty := func(when string) {
		t.Helper()
		for _, s := range []string{SetUp4, SetDown4, MapSeq4} {
			kind := "set"
			if s == MapSeq4 {
				kind = "map"
			}
			out, err := exec.Command("nft", "list", kind, "inet", name, s).CombinedOutput()
			if err != nil {
				t.Fatalf("nft list %s %s: %v: %s", kind, s, err, out)
			}
			if strings.Contains(string(out), "elements") {
				t.Fatalf("%s: %s not empty:\n%s", when, s, out)
			}
		}
	}

	for _, c := range []struct {
		name     string
		up, down int64
	}{
		{"download", 0, 5<<20 + 17},
		{"upload", 3<<20 + 5, 0},
		{"both ways", 1234567, 7654321},
		{"nothing", 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := mapping("127.0.0.51")
			other := mapping("127.0.0.52") // connected, carries 1000 bytes down
			cc, sc := acceptMapped(t, "127.0.0.51", m.Local, ln)
			oc, osc := acceptMapped(t, "127.0.0.52", other.Local, ln)
			for _, mm := range []Mapping{m, other} {
				if err := tb.Unmap(mm); err != nil {
					t.Fatal(err)
				}
			}
			gotUp, gotDown := transfer(t, cc, sc, c.up, c.down)
			if gotUp != c.up || gotDown != c.down {
				t.Fatalf("moved %d up, %d down; want %d, %d", gotUp, gotDown, c.up, c.down)
			}
			transfer(t, oc, osc, 0, 1000)
			n, err := tb.Release(m, 5*time.Second, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", n)
			if n.Up != uint64(c.up) || n.Down != uint64(c.down) || !n.Exact || n.Conns != 1 {
				t.Errorf("counted %+v; want %d up, %d down, exact, 1 connection", n, c.up, c.down)
			}
			if n.DownBytes <= n.Down || n.DownPackets == 0 {
				t.Errorf("the packet counters: %+v", n)
			}
			o, err := tb.Release(other, 5*time.Second, nil)
			if err != nil || o.Up != 0 || o.Down != 1000 || !o.Exact {
				t.Errorf("the other mapping: %+v, %v; want 0 up, 1000 down, exact", o, err)
			}
			empty("after Release")
		})
	}

	// sentDown maps a connection from src, lets the kernel carry it and
	// sends n bytes down it, read by the client, whose end it returns.
	sentDown := func(src string, n int) (Mapping, net.Conn) {
		t.Helper()
		m := mapping(src)
		cc, sc := acceptMapped(t, src, m.Local, ln)
		tb.Unmap(m)
		if _, err := sc.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(cc, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		return m, cc
	}

	t.Run("never connected", func(t *testing.T) {
		m := mapping("127.0.0.53")
		start := time.Now()
		n, err := tb.Release(m, 5*time.Second, nil)
		if err != nil || n != (Counts{Exact: true}) {
			t.Errorf("Release: %+v, %v; want nothing, exact", n, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Release waited %v for a mapping nobody used", d)
		}
		empty("after Release")
	})

	t.Run("reset", func(t *testing.T) {
		m, cc := sentDown("127.0.0.54", 100000)
		// nft lists the table with a connection's records in it.
		if out, err := exec.Command("nft", "list", "table", "inet", name).CombinedOutput(); err != nil || !strings.Contains(string(out), "map "+MapSeq4) {
			t.Fatalf("nft list table: %v:\n%s", err, out)
		} else {
			t.Logf("nft list table:\n%s", out)
		}
		cc.(*net.TCPConn).SetLinger(0)
		cc.Close() // a reset: the client's acknowledgement of 100000 bytes
		n, err := tb.Release(m, 5*time.Second, nil)
		if err != nil || n.Down != 100000 || n.Up != 0 || !n.Exact {
			t.Errorf("Release: %+v, %v; want 100000 down, exact", n, err)
		}
		empty("after Release")
	})

	t.Run("not ended", func(t *testing.T) {
		m, _ := sentDown("127.0.0.55", 1<<20)
		start := time.Now()
		n, err := tb.Release(m, 300*time.Millisecond, nil)
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("Release returned after %v; want it to wait 300ms for the end", d)
		}
		// An estimate from the counters, headers at their largest: near
		// the payload (over it if the kernel retransmitted: a client that
		// reads late has its receive queue pruned on loopback).
		if err != nil || n.Exact || n.Down > 1<<20*11/10 || n.Down < 1<<20*9/10 {
			t.Errorf("Release: %+v, %v; want an estimate of 1 MiB down, not exact", n, err)
		}
		empty("after Release")
	})
}

// TestCountWrap: a transfer of more than 4 GiB, over which TCP sequence
// numbers wrap, is counted exactly: the packet counters tell how many
// times.
func TestCountWrap(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 4 GiB")
	}
	_, tb := openTestTable(t)
	ln, dport := daemonPort(t)
	m := Mapping{Client: netip.MustParseAddr("127.0.0.56"), Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)),
		Daemon: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dport), Source: netip.MustParseAddr("127.0.0.1")}
	if err := tb.Map(m, time.Minute); err != nil {
		t.Fatal(err)
	}
	cc, sc := acceptMapped(t, "127.0.0.56", m.Local, ln)
	tb.Unmap(m)
	const down = 4<<30 + 12345
	start := time.Now()
	if _, got := transfer(t, cc, sc, 0, down); got != down {
		t.Fatalf("moved %d; want %d", got, down)
	}
	t.Logf("4 GiB in %v", time.Since(start))
	n, err := tb.Release(m, 5*time.Second, nil)
	if err != nil || n.Down != down || n.Up != 0 || !n.Exact {
		t.Errorf("Release: %+v, %v; want %d down, exact", n, err, down)
	}
}

// openTestTable opens a table of the test's own (testTable), closed at
// the test's end.
func openTestTable(t *testing.T) (string, *Table) {
	t.Helper()
	name := testTable(t)
	tb, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	return name, tb
}
