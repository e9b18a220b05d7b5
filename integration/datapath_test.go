//go:build integration

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var dataTableSeq atomic.Int32

// dataTable returns an nftables table name of t's own for the kernel data
// path, deleted in cleanup even when t fails; it skips t (fails it in CI)
// without nft or kernel nftables.
func dataTable(t *testing.T) string {
	t.Helper()
	return nftTableOf(t, fmt.Sprintf("ftpguard-data-%d-%d", os.Getpid(), dataTableSeq.Add(1)))
}

// kernelOpts are guardOpts with [passive] data_path = "nftables" in table.
func kernelOpts(table string, o guardOpts) guardOpts {
	o.Passive = fmt.Sprintf("data_path = \"nftables\"\nnft_table = %q\n", table)
	return o
}

// nftTable returns nft's listing of table inet name; "" when absent.
func nftTable(name string) string {
	out, err := exec.Command("nft", "list", "table", "inet", name).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// noMappings fails t unless table exists and maps nothing.
func noMappings(t *testing.T, table, when string) {
	t.Helper()
	out := nftTable(table)
	if out == "" {
		t.Fatalf("%s: table inet %s is gone", when, table)
	}
	if strings.Contains(out, "elements") {
		t.Fatalf("%s: mappings left behind:\n%s", when, out)
	}
}

// kernelMaps counts ftpguard's log lines of passive ports handed to the
// kernel.
func (g *guard) kernelMaps(t *testing.T) int { return g.Count(t, "passive data by kernel NAT") }

// TestKernelDataPath: vsftpd behind ftpguard with [passive] data_path =
// "nftables", in a table of the test's own. curl (EPSV and PASV) and lftp
// download and upload a multi-MiB file byte for byte through the kernel's
// NAT; a second address racing for the announced port gets nothing (and
// the daemon is not reached: the rightful transfer still succeeds), nor
// does a second connection of the client's; no mapping is left after a
// transfer or an aborted one; PROT P is relayed and works; SIGTERM
// removes the table.
func TestKernelDataPath(t *testing.T) {
	table := dataTable(t)
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, kernelOpts(table, guardOpts{Extra: testCert(t, "explicit")}))
	if g.Count(t, "kernel data path: plain passive transfers by nftables NAT", "table", table) != 1 {
		t.Fatalf("ftpguard did not set up the kernel data path")
	}
	noMappings(t, table, "at start")
	name := fmt.Sprintf("kernel-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 6<<20+123)
	t.Cleanup(func() { os.Remove(path) })
	url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)

	for _, c := range []struct {
		name string
		opts []string
	}{
		{"curl EPSV", []string{"--interface", "127.0.0.93"}},
		{"curl PASV", []string{"--interface", "127.0.0.93", "--disable-epsv"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := g.kernelMaps(t)
			checkCurlTransfers(t, url, name, want, c.opts...)
			if n := g.kernelMaps(t) - before; n != 2 {
				t.Errorf("%d transfers handed to the kernel; want 2 (RETR, STOR)", n)
			}
			noMappings(t, table, "after the transfers")
		})
	}
	t.Run("lftp", func(t *testing.T) {
		before := g.kernelMaps(t)
		out := filepath.Join(t.TempDir(), "lftp-out")
		up := fmt.Sprintf("lftp-up-%d.bin", time.Now().UnixNano())
		defer os.Remove(filepath.Join(testHome, up))
		lftp(t, "127.0.0.94", g.Addr, "set ftp:ssl-allow no; set cache:enable no; ls; get "+name+" -o "+out+"; put "+out+" -o "+up)
		checkFile(t, "lftp download", out, want)
		checkFile(t, "lftp upload", filepath.Join(testHome, up), want)
		if n := g.kernelMaps(t) - before; n < 3 {
			t.Errorf("%d transfers handed to the kernel; want ≥ 3 (LIST, RETR, STOR)", n)
		}
		noMappings(t, table, "after lftp")
	})

	t.Run("a second address racing for the port", func(t *testing.T) {
		r := rawLogin(t, "127.0.0.95", g.Addr)
		r.send("TYPE I")
		r.expect(200)
		r.send("EPSV")
		port := epsvPort(t, r.expect(229))
		data := fmt.Sprintf("127.0.0.1:%d", port)
		if c, err := dialData("127.0.0.96", data); err == nil {
			c.Close()
			t.Fatal("another address connected to the announced port")
		} else {
			t.Logf("another address: %v", err)
		}
		dc, err := dialData("127.0.0.95", data)
		if err != nil {
			t.Fatalf("the client's data connection: %v", err)
		}
		defer dc.Close()
		second, err := dialData("127.0.0.95", data) // queued at the daemon's listener, never accepted
		if err == nil {
			defer second.Close()
		}
		r.send("RETR " + name)
		r.expect(150)
		dc.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(dc)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("RETR through the kernel: %d bytes, %v; want %d identical bytes", len(got), err, len(want))
		}
		r.expect(226)
		if second != nil {
			second.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, _ := io.Copy(io.Discard, second); n != 0 {
				t.Errorf("a second connection of the client got %d bytes", n)
			}
		}
		for _, src := range []string{"127.0.0.95", "127.0.0.96"} {
			if c, err := dialData(src, data); err == nil {
				c.Close()
				t.Errorf("%s connected to the port after the transfer", src)
			}
		}
		noMappings(t, table, "after the race")
	})

	t.Run("aborted transfer", func(t *testing.T) {
		big, _ := randomFile(t, testHome, "abort-"+name, 64<<20)
		defer os.Remove(big)
		r := rawLogin(t, "127.0.0.97", g.Addr)
		r.send("TYPE I")
		r.expect(200)
		r.send("EPSV")
		dc, err := dialData("127.0.0.97", fmt.Sprintf("127.0.0.1:%d", epsvPort(t, r.expect(229))))
		if err != nil {
			t.Fatal(err)
		}
		r.send("RETR " + filepath.Base(big))
		r.expect(150)
		if _, err := io.ReadFull(dc, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		dc.Close() // as clients abort: the data connection first, then ABOR
		r.send("ABOR")
		code, text := r.reply()
		if code < 400 {
			t.Fatalf("aborted RETR answered %d %q; want a 4xx", code, text)
		}
		if code, text = r.reply(); code/100 != 2 {
			t.Fatalf("ABOR answered %d %q", code, text)
		}
		noMappings(t, table, "after an aborted transfer")
		r.send("EPSV") // a mapping pending, then ABOR
		r.expect(229)
		if !strings.Contains(nftTable(table), "elements") {
			t.Fatal("no mapping for the pending EPSV")
		}
		r.send("ABOR")
		r.reply()
		r.send("NOOP")
		r.expect(200)
		noMappings(t, table, "after ABOR of a pending EPSV")
	})

	t.Run("PROT P is relayed", func(t *testing.T) {
		before := g.kernelMaps(t)
		checkCurlTransfers(t, url, name, want, "--ssl-reqd", "-k", "--interface", "127.0.0.98")
		if n := g.kernelMaps(t) - before; n != 0 {
			t.Errorf("%d PROT P transfers handed to the kernel", n)
		}
		if g.Count(t, "passive data relayed, not by kernel NAT", "peer", "127.0.0.98") == 0 {
			t.Error("the relay of PROT P transfers was not logged")
		}
		noMappings(t, table, "after PROT P")
	})

	t.Run("metrics", func(t *testing.T) {
		// curl EPSV and PASV: 2 each; lftp: LIST, RETR, STOR; the race: 1.
		if n := g.metric(t, `ftpguard_data_connections_total{path="kernel"}`); n < 8 {
			t.Errorf("data connections counted as carried by the kernel: %v; want ≥ 8", n)
		}
		if n := g.metric(t, `ftpguard_data_connections_total{path="relay"}`); n < 2 {
			t.Errorf("data connections counted as relayed: %v; want ≥ 2 (PROT P)", n)
		}
	})

	g.cmd.Process.Signal(syscall.SIGTERM)
	err := <-g.exited
	g.exited <- err // for the harness's cleanup
	if out := nftTable(table); out != "" {
		t.Fatalf("table left after SIGTERM:\n%s", out)
	}
}

// TestKernelDataPathIPv6: over IPv6 (client, ftpguard and vsftpd on ::1)
// plain passive transfers go by the kernel too, through the dnat6/snat6
// maps: curl (EPSV) downloads and uploads byte for byte, two transfers are
// handed to the kernel, their bytes are counted exactly (seq6, up6,
// down6), and no mapping is left behind.
func TestKernelDataPathIPv6(t *testing.T) {
	table := dataTable(t)
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	d := startVsftpd(t, "listen=NO", "listen_ipv6=YES", "listen_address6=::1")
	g := startGuard(t, d.Addr, kernelOpts(table, guardOpts{Listen: "[::1]:0"}))
	name := fmt.Sprintf("kernel6-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 3<<20+77)
	t.Cleanup(func() { os.Remove(path) })
	before := g.kernelMaps(t)
	checkCurlTransfers(t, fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr), name, want, "--globoff")
	if n := g.kernelMaps(t) - before; n != 2 {
		t.Errorf("%d transfers handed to the kernel; want 2 (RETR, STOR)", n)
	}
	if n := g.Count(t, "passive data by kernel NAT", "peer", "::1"); n != 2 {
		t.Errorf("%d kernel mappings logged for the peer ::1; want 2", n)
	}
	if up, down, exact := g.kernelBytes(t); up != float64(len(want)) || down != float64(len(want)) || !exact {
		t.Errorf("counted %v up, %v down (exact %v); want %d each way, exact", up, down, exact, len(want))
	}
	noMappings(t, table, "after the transfers")
}

// TestKernelDataPathCrash: ftpguard killed with SIGKILL while a mapping is
// pending leaves its table; the next start deletes and re-creates it
// empty, and transfers go through the kernel again.
func TestKernelDataPathCrash(t *testing.T) {
	table := dataTable(t)
	d := startVsftpd(t)
	o := kernelOpts(table, guardOpts{})
	g := startGuard(t, d.Addr, o)
	r := rawLogin(t, "127.0.0.99", g.Addr)
	r.send("EPSV")
	r.expect(229)
	if !strings.Contains(nftTable(table), "elements") {
		t.Fatal("no mapping for the pending EPSV")
	}
	g.cmd.Process.Signal(syscall.SIGKILL)
	err := <-g.exited
	g.exited <- err
	if !strings.Contains(nftTable(table), "elements") {
		t.Fatal("the crash left no mapping: nothing to test")
	}

	g2 := startGuard(t, d.Addr, o)
	noMappings(t, table, "after the restart")
	name := fmt.Sprintf("crash-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 2<<20)
	t.Cleanup(func() { os.Remove(path) })
	checkCurlTransfers(t, fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g2.Addr), name, want, "--interface", "127.0.0.99")
	if n := g2.kernelMaps(t); n != 2 {
		t.Errorf("%d transfers handed to the kernel after the restart; want 2", n)
	}
	noMappings(t, table, "after the transfers")
	g2.cmd.Process.Signal(syscall.SIGTERM)
	err = <-g2.exited
	g2.exited <- err
	if out := nftTable(table); out != "" {
		t.Fatalf("table left after SIGTERM:\n%s", out)
	}
}

// dialData connects from src to addr within 2 s: a refusal or a timeout
// is an error.
func dialData(src, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, fmt.Errorf("neither refused nor timed out: %w", err)
		}
	}
	return c, err
}

// TestKernelDataPathDaemons: proftpd and pure-ftpd also accept their
// passive data connection before their 1xx (where the mapping is removed):
// curl downloads and uploads byte for byte through the kernel, over EPSV
// and PASV, the bytes are counted exactly, and no mapping is left.
func TestKernelDataPathDaemons(t *testing.T) {
	for _, name := range []string{"proftpd", "pure-ftpd"} {
		t.Run(name, func(t *testing.T) {
			table := dataTable(t)
			d := startDaemon(t, name)
			g := startGuard(t, d.Addr, kernelOpts(table, guardOpts{}))
			file := fmt.Sprintf("kernel-%s-%d.bin", name, time.Now().UnixNano())
			path, want := randomFile(t, testHome, file, 3<<20+7)
			t.Cleanup(func() { os.Remove(path) })
			url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)
			checkCurlTransfers(t, url, file, want, "--interface", "127.0.0.93")
			checkCurlTransfers(t, url, file, want, "--interface", "127.0.0.93", "--disable-epsv")
			if n := g.kernelMaps(t); n != 4 {
				t.Errorf("%d transfers handed to the kernel; want 4", n)
			}
			if up, down, exact := g.kernelBytes(t); up != float64(2*len(want)) || down != float64(2*len(want)) || !exact {
				t.Errorf("counted %v up, %v down (exact %v); want %d each way, exact", up, down, exact, 2*len(want))
			}
			noMappings(t, table, "after the transfers")
		})
	}
}

// TestKernelDataPathRetryAfterRefusal: after a refused RETR (550, a file
// that is not there) the data port announced by the same EPSV carries the
// next transfer, without a new EPSV — on the kernel path as on the relay,
// whose listener stays open until data_timeout: the client connects after
// the refusal, sends RETR of a file that is there and gets it byte for
// byte.
func TestKernelDataPathRetryAfterRefusal(t *testing.T) {
	d := startVsftpd(t)
	name := fmt.Sprintf("retry-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 1<<20+5)
	t.Cleanup(func() { os.Remove(path) })
	eachDataPath(t, "127.0.0.81", "127.0.0.82", func(t *testing.T, c dataPathCase, o guardOpts) {
		g := startGuard(t, d.Addr, o)
		r := rawLogin(t, c.src, g.Addr)
		r.send("TYPE I")
		r.expect(200)
		r.send("EPSV")
		data := fmt.Sprintf("127.0.0.1:%d", epsvPort(t, r.expect(229)))
		r.send("RETR missing-" + name)
		r.expect(550)
		dc, err := dialData(c.src, data)
		if err != nil {
			t.Fatalf("data connection after the refused RETR: %v", err)
		}
		defer dc.Close()
		r.send("RETR " + name)
		r.expect(150)
		dc.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(dc)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("RETR after the refusal: %d bytes, %v; want %d identical bytes", len(got), err, len(want))
		}
		r.expect(226)
		if c.table != "" {
			if n := g.kernelMaps(t); n != 1 {
				t.Errorf("%d passive ports handed to the kernel; want 1", n)
			}
			noMappings(t, c.table, "after the transfer")
		}
	})
}

// kernelBytes sums ftpguard's log lines of the bytes of kernel transfers:
// upload, download, and whether every count was exact.
func (g *guard) kernelBytes(t *testing.T) (up, down float64, exact bool) {
	t.Helper()
	exact = true
	for _, e := range g.Events(t) {
		if e["msg"] != "kernel transfer bytes" {
			continue
		}
		u, _ := e["upload"].(float64)
		d, _ := e["download"].(float64)
		up, down = up+u, down+d
		exact = exact && e["exact"] == true
	}
	return up, down, exact
}

// TestKernelDataPathBytes: the bytes of the transfers the kernel carries
// are counted as the relay counts its own, in ftpguard_bytes_relayed_total
// by direction: a RETR's as download, a STOR's as upload, exactly the
// files' sizes — TCP payload, not a byte of IP or TCP header (the packets
// carried about 52 bytes of headers each) — and logged per transfer
// ("kernel transfer bytes", exact). The relay, in the same test, counts the
// same. (The kernel's transfers used to count nothing: both counters
// stayed at 0.)
func TestKernelDataPathBytes(t *testing.T) {
	d := startVsftpd(t)
	const down, up = 3<<20 + 321, 2<<20 + 123
	name := fmt.Sprintf("bytes-%d.bin", time.Now().UnixNano())
	path, _ := randomFile(t, testHome, name, down)
	t.Cleanup(func() { os.Remove(path) })
	src := filepath.Join(t.TempDir(), "up.bin")
	if err := os.WriteFile(src, make([]byte, up), 0o644); err != nil {
		t.Fatal(err)
	}
	eachDataPath(t, "127.0.0.83", "127.0.0.84", func(t *testing.T, c dataPathCase, o guardOpts) {
		g := adminGuard(t, d.Addr, o)
		url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)
		stored := fmt.Sprintf("bytes-up-%s-%d.bin", c.path, time.Now().UnixNano())
		defer os.Remove(filepath.Join(testHome, stored))
		curl(t, "--interface", c.src, url+name, "-o", filepath.Join(t.TempDir(), "down.bin"))
		curl(t, "--interface", c.src, "-T", src, url+stored)
		gotDown := g.metric(t, `ftpguard_bytes_relayed_total{direction="download"}`)
		gotUp := g.metric(t, `ftpguard_bytes_relayed_total{direction="upload"}`)
		if gotDown != down || gotUp != up {
			t.Errorf("counted %v down, %v up; want %d, %d", gotDown, gotUp, down, up)
		}
		if c.table == "" {
			return
		}
		if n := g.kernelMaps(t); n != 2 {
			t.Errorf("%d transfers handed to the kernel; want 2", n)
		}
		if lu, ld, exact := g.kernelBytes(t); lu != up || ld != down || !exact {
			t.Errorf("logged %v up, %v down (exact %v); want %d, %d, exact", lu, ld, exact, up, down)
		}
		noMappings(t, c.table, "after the transfers")
	})
}

// dataPathCase is one data path of eachDataPath: its name, the client's
// source address, and the test's nftables table ("" for the relay).
type dataPathCase struct {
	path, src, table string
}

// eachDataPath runs fn as a subtest on the relay (the client from
// relaySrc) and on the kernel path (from nftSrc, in a table of the test's
// own), o set for that path.
func eachDataPath(t *testing.T, relaySrc, nftSrc string, fn func(t *testing.T, c dataPathCase, o guardOpts)) {
	t.Helper()
	for _, c := range []dataPathCase{{"relay", relaySrc, ""}, {"nftables", nftSrc, ""}} {
		t.Run(c.path, func(t *testing.T) {
			var o guardOpts
			if c.path == "nftables" {
				c.table = dataTable(t)
				o = kernelOpts(c.table, o)
			}
			fn(t, c, o)
		})
	}
}
