//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
)

// TestBench measures ftpguard against a direct connection to the same
// vsftpd in the same run, interleaving the two, and prints ratios. Beside
// them it measures HAProxy in TCP mode with splice in front of the same
// vsftpd (control and passive data ports), when haproxy is installed: the
// cost of any relay that ends TCP on this machine, so that ftpguard's own
// share can be told from the price of the second hop. It also prints the
// CPU time ftpguard and HAProxy spend per login and per GiB relayed (from
// /proc), which moves much less between runs than throughput on loopback.
// It runs only when FTPGUARD_BENCH=1 (integration/bench.sh sets it): it is
// a measurement, not a test, and asserts nothing about speed.
//
// FTPGUARD_BENCH_RUNS (default 7) runs of each; FTPGUARD_BENCH_LOGINS
// (default 320) logins a run; FTPGUARD_BENCH_MIB (default 1024) file size.
func TestBench(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	runs := envInt("FTPGUARD_BENCH_RUNS", 7)
	logins := envInt("FTPGUARD_BENCH_LOGINS", 320)
	mib := envInt("FTPGUARD_BENCH_MIB", 1024)

	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100, Extra: testCert(t, "explicit")})
	hp := startHAProxy(t, d)
	// FTPGUARD_BENCH_GOMAXPROCS=n: a second ftpguard, run with GOMAXPROCS=n,
	// is measured beside the first in the login cases.
	var gmp *guard
	if n := os.Getenv("FTPGUARD_BENCH_GOMAXPROCS"); n != "" {
		t.Setenv("GOMAXPROCS", n) // for the child alone: this process has read its own
		gmp = startGuard(t, d.Addr, guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100})
		os.Unsetenv("GOMAXPROCS")
	}
	name := fmt.Sprintf("bench-%d.bin", time.Now().UnixNano())
	path, _ := randomFile(t, testHome, name, mib<<20)
	t.Cleanup(func() { os.Remove(path) })

	// Each measurement returns its rate and the CPU seconds the relay in
	// front of vsftpd (pid; 0: none) spent on it.
	retrRate := func(addr string, pid int, opts ...ftp.DialOption) (float64, float64) {
		c, err := ftpClient(t, "127.0.0.21", addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Quit()
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
		cpu := procCPU(pid)
		start := time.Now()
		r, err := c.Retr(name)
		if err != nil {
			t.Fatal(err)
		}
		n, err := drain(r)
		r.Close()
		if err != nil || n != int64(mib)<<20 {
			t.Fatalf("RETR: %d bytes, %v", n, err)
		}
		return float64(n) / (1 << 20) / time.Since(start).Seconds(), procCPU(pid) - cpu
	}

	// Clients at once, each logging in and out in a loop: 32 clients from
	// 32 addresses (127.0.1.1-32, a limiter key each), and 8 clients from
	// one address (127.0.0.23: one key, its sessions side by side).
	const workers, sameWorkers = 32, 8
	perWorker := max(logins/workers, 1)
	logins = workers * perWorker // what concurrentLogins makes, and the CPU is divided by
	concurrentLogins := func(addr string, pid, n int, src func(w int) string) (float64, float64) {
		var wg sync.WaitGroup
		per := logins / n
		cpu := procCPU(pid)
		start := time.Now()
		for w := 0; w < n; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per; i++ {
					c, err := ftpClient(t, src(w), addr)
					if err != nil {
						t.Error(err)
						return
					}
					if err := c.Login(testUser, testPass); err != nil {
						t.Error(err)
					}
					c.Quit()
				}
			}()
		}
		wg.Wait()
		return float64(per*n) / time.Since(start).Seconds(), (procCPU(pid) - cpu) * 1000 / float64(per*n)
	}
	manyAddrs := func(w int) string { return fmt.Sprintf("127.0.1.%d", w+1) }
	oneAddr := func(int) string { return "127.0.0.23" }
	// RETR with curl through ftpguard, plain and over FTPS (PROT P, the
	// data connection resuming the control connection's TLS session, as
	// require_data_reuse wants): the rate and the relay's CPU seconds.
	curlRetr := func(addr string, pid int, opts ...string) (float64, float64) {
		url := fmt.Sprintf("ftp://%s:%s@%s/%s", testUser, testPass, addr, name)
		args := append([]string{"-s", "-S", "--interface", "127.0.0.24", "-o", "/dev/null", url}, opts...)
		cpu := procCPU(pid)
		start := time.Now()
		if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
			t.Fatalf("curl %v: %v: %s", args, err, out)
		}
		return float64(mib) / time.Since(start).Seconds(), procCPU(pid) - cpu
	}
	gpid := g.cmd.Process.Pid
	var ld, lp, cd, cp, ch, cm, sd, sp, sh, sm, rd, rp, rh, cc, ct []float64
	var gLoginCPU, hLoginCPU, gSameCPU, hSameCPU, mLoginCPU, mSameCPU, gByteCPU, hByteCPU, cByteCPU, tByteCPU []float64 // ms per login, s per GiB
	for i := 0; i < runs; i++ {
		ld = append(ld, loginRate(t, "127.0.0.20", d.Addr, logins))
		lp = append(lp, loginRate(t, "127.0.0.20", g.Addr, logins))
		r, _ := concurrentLogins(d.Addr, 0, workers, manyAddrs)
		cd = append(cd, r)
		r, cpu := concurrentLogins(g.Addr, gpid, workers, manyAddrs)
		cp, gLoginCPU = append(cp, r), append(gLoginCPU, cpu)
		if hp != nil {
			r, cpu = concurrentLogins(hp.Addr, hp.pid, workers, manyAddrs)
			ch, hLoginCPU = append(ch, r), append(hLoginCPU, cpu)
		}
		if gmp != nil {
			r, cpu = concurrentLogins(gmp.Addr, gmp.cmd.Process.Pid, workers, manyAddrs)
			cm, mLoginCPU = append(cm, r), append(mLoginCPU, cpu)
		}
		r, _ = concurrentLogins(d.Addr, 0, sameWorkers, oneAddr)
		sd = append(sd, r)
		r, cpu = concurrentLogins(g.Addr, gpid, sameWorkers, oneAddr)
		sp, gSameCPU = append(sp, r), append(gSameCPU, cpu)
		if hp != nil {
			r, cpu = concurrentLogins(hp.Addr, hp.pid, sameWorkers, oneAddr)
			sh, hSameCPU = append(sh, r), append(hSameCPU, cpu)
		}
		if gmp != nil {
			r, cpu = concurrentLogins(gmp.Addr, gmp.cmd.Process.Pid, sameWorkers, oneAddr)
			sm, mSameCPU = append(sm, r), append(mSameCPU, cpu)
		}
		r, _ = retrRate(d.Addr, 0)
		rd = append(rd, r)
		r, cpu = retrRate(g.Addr, gpid)
		rp, gByteCPU = append(rp, r), append(gByteCPU, cpu*1024/float64(mib))
		if hp != nil {
			r, cpu = retrRate(hp.Addr, hp.pid)
			rh, hByteCPU = append(rh, r), append(hByteCPU, cpu*1024/float64(mib))
		}
		r, cpu = curlRetr(g.Addr, gpid)
		cc, cByteCPU = append(cc, r), append(cByteCPU, cpu*1024/float64(mib))
		r, cpu = curlRetr(g.Addr, gpid, "--ssl-reqd", "-k")
		ct, tByteCPU = append(ct, r), append(tByteCPU, cpu*1024/float64(mib))
	}
	stat := func(name string, v []float64, unit string, base []float64) string {
		s := fmt.Sprintf("  %s %7.1f%s (%.1f..%.1f)", name, median(v), unit, slices.Min(v), slices.Max(v))
		if base != nil {
			s += fmt.Sprintf(" ratio %.3f", median(v)/median(base))
		}
		return s
	}
	fmt.Printf("ftpguard bench: %d interleaved runs each; medians (min..max); ratios to direct\n", runs)
	fmt.Printf("%-22s%s%s\n", fmt.Sprintf("logins (%d/run)", logins), stat("direct", ld, "/s", nil), stat("ftpguard", lp, "/s", ld))
	for _, c := range []struct {
		name                         string
		d, g, h, m, gcpu, hcpu, mcpu []float64
	}{
		{"logins, 32 addrs", cd, cp, ch, cm, gLoginCPU, hLoginCPU, mLoginCPU},
		{"logins, 8 from 1 addr", sd, sp, sh, sm, gSameCPU, hSameCPU, mSameCPU},
	} {
		line := fmt.Sprintf("%-22s%s%s", c.name, stat("direct", c.d, "/s", nil), stat("ftpguard", c.g, "/s", c.d))
		if hp != nil {
			line += stat("haproxy", c.h, "/s", c.d)
		}
		fmt.Println(line)
		line = fmt.Sprintf("%-22s  ftpguard %.3f ms/login (%.3f..%.3f)", "  relay CPU", median(c.gcpu), slices.Min(c.gcpu), slices.Max(c.gcpu))
		if hp != nil {
			line += fmt.Sprintf("   haproxy %.3f ms/login (%.3f..%.3f) ratio %.2f", median(c.hcpu), slices.Min(c.hcpu), slices.Max(c.hcpu), median(c.gcpu)/median(c.hcpu))
		}
		fmt.Println(line)
		if gmp != nil {
			fmt.Printf("%-22s%s, %.3f ms/login (%.3f..%.3f)\n", "  GOMAXPROCS="+os.Getenv("FTPGUARD_BENCH_GOMAXPROCS"),
				stat("ftpguard", c.m, "/s", c.d), median(c.mcpu), slices.Min(c.mcpu), slices.Max(c.mcpu))
		}
	}
	line := fmt.Sprintf("%-22s%s%s", fmt.Sprintf("RETR %d MiB", mib), stat("direct", rd, " MiB/s", nil), stat("ftpguard", rp, " MiB/s", rd))
	if hp != nil {
		line += stat("haproxy", rh, " MiB/s", rd)
	}
	fmt.Println(line)
	fmt.Printf("%-22s%s%s\n", fmt.Sprintf("curl RETR %d MiB", mib), stat("ftpguard plain", cc, " MiB/s", nil), stat("ftpguard FTPS", ct, " MiB/s", cc)) // PROT P
	fmt.Printf("%-22s  ftpguard plain %.3f s/GiB, FTPS %.3f s/GiB\n", "  relay CPU", median(cByteCPU), median(tByteCPU))
	line = fmt.Sprintf("%-22s  ftpguard %.3f s/GiB", "relay CPU", median(gByteCPU))
	if hp != nil {
		line += fmt.Sprintf("   haproxy %.3f s/GiB", median(hByteCPU))
	} else {
		line += "   (haproxy not installed: no reference relay)"
	}
	fmt.Println(line)
}

// haproxy is HAProxy run by a benchmark as a reference relay.
type haproxy struct {
	Addr string
	pid  int
}

// startHAProxy runs HAProxy in TCP mode with splice in front of d: its
// control port on 127.0.0.60, and the same port range as d's passive range
// on 127.0.0.60, each to the same port on d's address, so that EPSV works
// through it. nil when haproxy is not installed.
func startHAProxy(t *testing.T, d *ftpd) *haproxy {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		return nil
	}
	host, _, _ := net.SplitHostPort(d.Addr)
	port := freePort(t)
	conf := fmt.Sprintf(`global
  maxconn 4000
  tune.pipesize 1048576
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option splice-request
  option splice-response
frontend control
  bind 127.0.0.60:%d
  default_backend control
backend control
  server vsftpd %s
frontend data
  bind 127.0.0.60:%d-%d
  default_backend data
backend data
  server vsftpd %s
`, port, d.Addr, d.pasv[0], d.pasv[1], host)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command("haproxy", "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h := &haproxy{Addr: fmt.Sprintf("127.0.0.60:%d", port), pid: cmd.Process.Pid}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", h.Addr); err == nil {
			c.Close()
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not listen on %s: %s", h.Addr, out.String())
		}
	}
}

// procCPU is the user+system CPU seconds process pid has used (0: none).
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name's ")": utime and stime are the 12th
	// and 13th, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// loginRate logs in and out n times in a row from src through addr and
// returns the logins per second.
func loginRate(t *testing.T, src, addr string, n int) float64 {
	start := time.Now()
	for i := 0; i < n; i++ {
		c, err := ftpClient(t, src, addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
		c.Quit()
	}
	return float64(n) / time.Since(start).Seconds()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestBenchStores measures connects/s (connect, greeting, QUIT) and
// logins/s through ftpguard with the memory, file and Redis stores, as
// ratios to memory, and the time from a ban on one instance to its refusal
// by another sharing Redis. Runs only with FTPGUARD_BENCH=1.
func TestBenchStores(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	runs := envInt("FTPGUARD_BENCH_RUNS", 7)
	n := envInt("FTPGUARD_BENCH_CONNECTS", 500)
	logins := envInt("FTPGUARD_BENCH_LOGINS", 300) / 2
	d := startVsftpd(t)
	url, _ := startRedis(t)
	redisExtra := fmt.Sprintf("[store]\nkind = \"redis\"\nurl = %q\n", url)
	base := guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100}
	kinds := []string{"memory", "file", "redis"}
	guards := map[string]*guard{}
	for _, k := range kinds {
		o := base
		o.Extra = fmt.Sprintf("[store]\nkind = %q\n", k)
		if k == "redis" {
			o.Extra = redisExtra
		}
		guards[k] = startGuard(t, d.Addr, o)
	}
	connects := func(addr string) float64 {
		start := time.Now()
		for i := 0; i < n; i++ {
			r := dialRaw(t, "127.0.0.70", addr)
			r.expect(220)
			r.send("QUIT")
			r.expect(221)
			r.c.Close()
		}
		return float64(n) / time.Since(start).Seconds()
	}
	cr, lr := map[string][]float64{}, map[string][]float64{}
	for i := 0; i < runs; i++ {
		for _, k := range kinds {
			cr[k] = append(cr[k], connects(guards[k].Addr))
			lr[k] = append(lr[k], loginRate(t, "127.0.0.71", guards[k].Addr, logins))
		}
	}
	fmt.Printf("ftpguard store bench: %d interleaved runs; medians (min..max); ratio to memory\n", runs)
	for _, k := range kinds {
		fmt.Printf("%-7s connects %7.0f/s (%.0f..%.0f) ratio %.3f   logins %6.1f/s (%.1f..%.1f) ratio %.3f\n", k,
			median(cr[k]), slices.Min(cr[k]), slices.Max(cr[k]), median(cr[k])/median(cr["memory"]),
			median(lr[k]), slices.Min(lr[k]), slices.Max(lr[k]), median(lr[k])/median(lr["memory"]))
	}

	// Ban propagation: a ban made on a (budget 1) refused by b.
	o := base
	o.Failures = 1
	o.Extra = redisExtra
	a, b := startGuard(t, d.Addr, o), startGuard(t, d.Addr, o)
	var lat []float64
	for i := 1; i <= 15; i++ {
		src := fmt.Sprintf("127.0.2.%d", i)
		r := dialRaw(t, src, a.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS wrong")
		r.expect(331)
		r.expect(530) // the ban is made (and published) before this reply
		start := time.Now()
		for {
			p := dialRaw(t, src, b.Addr)
			code, _ := p.reply()
			p.c.Close()
			if code == 421 {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("ban never reached the other instance")
			}
		}
		lat = append(lat, float64(time.Since(start).Microseconds()))
	}
	fmt.Printf("ban propagation a→b (until b's greeting is 421, %d bans): median %.0f µs (%.0f..%.0f)\n",
		len(lat), median(lat), slices.Min(lat), slices.Max(lat))
}

// drain reads r to the end with a 1 MiB buffer, as a bulk client does
// (io.Discard's ReadFrom reads 8 KiB at a time: the client, not the
// transfer, would be measured).
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// TestBenchIdleSessions measures what an idle, logged-in session costs the
// ftpguard process: heap+stack (after a forced GC) and resident memory, at
// FTPGUARD_IDLE_SESSIONS (default 10,000) sessions, against the same
// process with none. ftpguard runs as its own process, as in production, so
// it holds two descriptors a session; this process holds the other two
// ends (the clients and an in-process daemon that greets, accepts any
// login and then only waits: vsftpd forks two processes a session). Runs
// only with FTPGUARD_BENCH=1.
func TestBenchIdleSessions(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	n := envInt("FTPGUARD_IDLE_SESSIONS", 10000)
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	// ftpguard's limit is the same hard limit; each side needs 2n and a
	// few dozen of its own (listeners, log, epoll, admin).
	if fit := (int(lim.Max) - 64) / 2; n > fit {
		fmt.Printf("idle sessions: %d sessions need %d descriptors in each process, the hard limit is %d: measuring %d\n",
			n, 2*n, lim.Max, fit)
		n = fit
	}
	daemon := startIdleDaemon(t)
	g := adminGuard(t, daemon, guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100,
		Sessions: fmt.Sprintf("max_conns = %d\n", n+100), AdminExtra: "pprof = true\n"})
	mem := func() (heapStack, rss, fds float64) {
		if code, body := g.admin(t, "GET", "/debug/pprof/heap?gc=1", adminToken, ""); code != 200 { // gc=1: a GC first
			t.Fatalf("heap profile: %d %s", code, body)
		}
		return g.metric(t, "go_memstats_heap_inuse_bytes") + g.metric(t, "go_memstats_stack_inuse_bytes"),
			g.metric(t, "process_resident_memory_bytes"), g.metric(t, "process_open_fds")
	}
	open := func(count int) []net.Conn {
		conns := make([]net.Conn, 0, count)
		for i := range count {
			src := fmt.Sprintf("127.0.%d.%d", 100+i/100/250, 1+i/100%250) // 100 a source address
			r := dialRaw(t, src, g.Addr)
			r.expect(220)
			r.send("USER u", "PASS p")
			r.expect(331)
			r.expect(230)
			r.c.SetDeadline(time.Time{})
			conns = append(conns, r.c)
		}
		return conns
	}
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.Close()
		}
		for deadline := time.Now().Add(20 * time.Second); g.metric(t, "ftpguard_sessions_active") > 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%v sessions still open 20s after their clients left", g.metric(t, "ftpguard_sessions_active"))
			}
		}
	}
	closeAll(open(500)) // warm up: pools, maps and the limiter's tables
	hs0, rss0, fd0 := mem()
	start := time.Now()
	conns := open(n)
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	hs1, rss1, fd1 := mem()
	if got := g.metric(t, "ftpguard_sessions_active"); got != float64(n) {
		t.Errorf("ftpguard_sessions = %v, want %d", got, n)
	}
	closeAll(conns)
	hs2, _, fd2 := mem()
	fmt.Printf("idle sessions: %d logged in (in %.1fs); ftpguard per session: heap+stack %.1f KiB, resident %.1f KiB, %.2f descriptors; after they left: heap+stack %+.1f MiB, descriptors %+.0f\n",
		n, took.Seconds(), (hs1-hs0)/float64(n)/1024, (rss1-rss0)/float64(n)/1024, (fd1-fd0)/float64(n), (hs2-hs0)/(1<<20), fd2-fd0)
}

// startIdleDaemon serves a minimal FTP daemon on loopback for
// TestBenchIdleSessions: 220, 331 to USER, 230 to PASS, 221 to QUIT, 200
// to anything else. Not vsftpd: it must hold 10,000 sessions.
func startIdleDaemon(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.Write([]byte("220 idle daemon\r\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					verb, _, _ := strings.Cut(strings.ToUpper(sc.Text()), " ")
					switch verb {
					case "USER":
						c.Write([]byte("331 password?\r\n"))
					case "PASS":
						c.Write([]byte("230 in\r\n"))
					case "QUIT":
						c.Write([]byte("221 bye\r\n"))
						return
					default:
						c.Write([]byte("200 ok\r\n"))
					}
				}
			})
		}
	})
	return ln.Addr().String()
}
