//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
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
// (default 320) logins a run; FTPGUARD_BENCH_MIB (default 1024) file size;
// FTPGUARD_BENCH_ONLY=logins measures the two concurrent login cases alone
// (a minute or two, not a quarter of an hour), =ftps the curl RETRs alone
// (plain and FTPS through ftpguard, vsftpd's own FTPS).
//
// A second ftpguard is measured beside the first in the login cases and
// the curl RETRs when
// FTPGUARD_BENCH_GOMAXPROCS=n (it runs with GOMAXPROCS=n) or
// FTPGUARD_BENCH_BASELINE=path (it runs that binary, e.g. one built from
// main: a change and what it replaces, in one run) is set, or both.
func TestBench(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	runs := envInt("FTPGUARD_BENCH_RUNS", 7)
	logins := envInt("FTPGUARD_BENCH_LOGINS", 320)
	mib := envInt("FTPGUARD_BENCH_MIB", 1024)
	only := os.Getenv("FTPGUARD_BENCH_ONLY")
	if only != "" && only != "logins" && only != "ftps" {
		t.Fatalf("FTPGUARD_BENCH_ONLY=%q: want logins, ftps, or unset", only)
	}
	loginsOnly, ftpsOnly := only == "logins", only == "ftps"

	d := startVsftpd(t)
	// The username's budget is raised like the addresses': its places in
	// flight are 20 by default, and 32 new addresses logging in to one
	// account at once would be paused ("logins … from new addresses are
	// paused") until each is known-good. The budgets are checked all the
	// same.
	// Its log goes through a pipe, as in a container (a socket under
	// systemd): not straight into a file.
	opts := guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100, LogPipe: true,
		Extra: "[user_limits]\nfailures = 1000\n" + testCert(t, "explicit")}
	g := startGuard(t, d.Addr, opts)
	hp := startHAProxy(t, d)
	var gmp *guard
	var gmpName string
	if n, bin := os.Getenv("FTPGUARD_BENCH_GOMAXPROCS"), os.Getenv("FTPGUARD_BENCH_BASELINE"); n != "" || bin != "" {
		o := opts
		o.Bin = bin
		if bin != "" {
			gmpName = "baseline"
		}
		if n != "" {
			gmpName = strings.TrimSpace(gmpName + " GOMAXPROCS=" + n)
			t.Setenv("GOMAXPROCS", n) // for the child alone: this process has read its own
		}
		gmp = startGuard(t, d.Addr, o)
		os.Unsetenv("GOMAXPROCS")
	}
	name := fmt.Sprintf("bench-%d.bin", time.Now().UnixNano())
	var dtls *ftpd // vsftpd terminating FTPS itself, on the same files: the reference for ftpguard's FTPS
	if !loginsOnly {
		path, _ := randomFile(t, testHome, name, mib<<20)
		t.Cleanup(func() { os.Remove(path) })
		m := regexp.MustCompile(`cert = "([^"]+)"\nkey = "([^"]+)"`).FindStringSubmatch(testCert(t, "off"))
		dtls = startVsftpd(t, "ssl_enable=YES", "rsa_cert_file="+m[1], "rsa_private_key_file="+m[2],
			"ssl_ciphers=HIGH", "ssl_tlsv1=YES", "ssl_sslv2=NO", "ssl_sslv3=NO", "force_local_data_ssl=YES")
	}

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
	// Context switches a login, by relay pid; and for ftpguard the CPU of
	// the Go runtime's monitor thread (sysmon) a login, which no event-loop
	// relay has.
	switches := map[int][]float64{}
	var monitorCPU []float64
	concurrentLogins := func(addr string, pid, n int, src func(w int) string) (float64, float64) {
		var wg sync.WaitGroup
		per := logins / n
		cpu, cs := procCPU(pid), procSwitches(pid)
		var mon float64
		if pid == g.cmd.Process.Pid {
			mon = procMonitorCPU(pid)
		}
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
		rate := float64(per*n) / time.Since(start).Seconds()
		if pid != 0 {
			switches[pid] = append(switches[pid], float64(procSwitches(pid)-cs)/float64(per*n))
		}
		if pid == g.cmd.Process.Pid {
			monitorCPU = append(monitorCPU, (procMonitorCPU(pid)-mon)*1000/float64(per*n))
		}
		return rate, (procCPU(pid) - cpu) * 1000 / float64(per*n)
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
	var ld, lp, cd, cp, ch, cm, sd, sp, sh, sm, rd, rp, rh, cc, ct, cv, mc, mt []float64
	var gLoginCPU, hLoginCPU, gSameCPU, hSameCPU, mLoginCPU, mSameCPU, gByteCPU, hByteCPU, cByteCPU, tByteCPU, mcByteCPU, mtByteCPU []float64 // ms per login, s per GiB
	for i := 0; i < runs; i++ {
		var r, cpu float64
		if !ftpsOnly {
			if !loginsOnly {
				ld = append(ld, loginRate(t, "127.0.0.20", d.Addr, logins))
				lp = append(lp, loginRate(t, "127.0.0.20", g.Addr, logins))
			}
			r, _ = concurrentLogins(d.Addr, 0, workers, manyAddrs)
			cd = append(cd, r)
			r, cpu = concurrentLogins(g.Addr, gpid, workers, manyAddrs)
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
			if loginsOnly {
				continue
			}
			r, _ = retrRate(d.Addr, 0)
			rd = append(rd, r)
			r, cpu = retrRate(g.Addr, gpid)
			rp, gByteCPU = append(rp, r), append(gByteCPU, cpu*1024/float64(mib))
			if hp != nil {
				r, cpu = retrRate(hp.Addr, hp.pid)
				rh, hByteCPU = append(rh, r), append(hByteCPU, cpu*1024/float64(mib))
			}
		}
		r, cpu = curlRetr(g.Addr, gpid)
		cc, cByteCPU = append(cc, r), append(cByteCPU, cpu*1024/float64(mib))
		r, cpu = curlRetr(g.Addr, gpid, "--ssl-reqd", "-k")
		ct, tByteCPU = append(ct, r), append(tByteCPU, cpu*1024/float64(mib))
		r, _ = curlRetr(dtls.Addr, 0, "--ssl-reqd", "-k")
		cv = append(cv, r)
		if gmp != nil {
			r, cpu = curlRetr(gmp.Addr, gmp.cmd.Process.Pid)
			mc, mcByteCPU = append(mc, r), append(mcByteCPU, cpu*1024/float64(mib))
			r, cpu = curlRetr(gmp.Addr, gmp.cmd.Process.Pid, "--ssl-reqd", "-k")
			mt, mtByteCPU = append(mt, r), append(mtByteCPU, cpu*1024/float64(mib))
		}
	}
	stat := func(name string, v []float64, unit string, base []float64) string {
		s := fmt.Sprintf("  %s %7.1f%s (%.1f..%.1f)", name, median(v), unit, slices.Min(v), slices.Max(v))
		if base != nil {
			s += fmt.Sprintf(" ratio %.3f", median(v)/median(base))
		}
		return s
	}
	fmt.Printf("ftpguard bench: %d interleaved runs each; medians (min..max); ratios to direct\n", runs)
	var line string
	if !ftpsOnly {
		if !loginsOnly {
			fmt.Printf("%-22s%s%s\n", fmt.Sprintf("logins (%d/run)", logins), stat("direct", ld, "/s", nil), stat("ftpguard", lp, "/s", ld))
		}
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
				fmt.Printf("%-22s%s, %.3f ms/login (%.3f..%.3f)", "  "+gmpName,
					stat("ftpguard", c.m, "/s", c.d), median(c.mcpu), slices.Min(c.mcpu), slices.Max(c.mcpu))
				if hp != nil {
					fmt.Printf(" ratio to haproxy %.2f", median(c.mcpu)/median(c.hcpu))
				}
				fmt.Println()
			}
		}
		// Both login cases together: a login's context switches (all threads).
		line = fmt.Sprintf("%-22s  ftpguard %.1f", "  switches/login", median(switches[gpid]))
		if hp != nil {
			line += fmt.Sprintf("   haproxy %.1f", median(switches[hp.pid]))
		}
		if gmp != nil {
			line += fmt.Sprintf("   %s %.1f", gmpName, median(switches[gmp.cmd.Process.Pid]))
		}
		fmt.Println(line)
		// Both login cases together, as the switches.
		fmt.Printf("%-22s  ftpguard %.3f ms/login (%.3f..%.3f): the Go runtime's monitor thread (sysmon)\n",
			"  of which sysmon", median(monitorCPU), slices.Min(monitorCPU), slices.Max(monitorCPU))
	}
	if loginsOnly {
		return
	}
	if !ftpsOnly {
		line = fmt.Sprintf("%-22s%s%s", fmt.Sprintf("RETR %d MiB", mib), stat("direct", rd, " MiB/s", nil), stat("ftpguard", rp, " MiB/s", rd))
		if hp != nil {
			line += stat("haproxy", rh, " MiB/s", rd)
		}
		fmt.Println(line)
	}
	fmt.Printf("%-22s%s%s\n", fmt.Sprintf("curl RETR %d MiB", mib), stat("ftpguard plain", cc, " MiB/s", nil), stat("ftpguard FTPS", ct, " MiB/s", cc)) // PROT P
	fmt.Printf("%-22s%s  ftpguard FTPS / vsftpd's %.3f\n", "", stat("vsftpd's own FTPS", cv, " MiB/s", cc), median(ct)/median(cv))
	fmt.Printf("%-22s  ftpguard plain %.3f s/GiB, FTPS %.3f s/GiB\n", "  relay CPU", median(cByteCPU), median(tByteCPU))
	if gmp != nil {
		fmt.Printf("%-22s%s%s\n", "  "+gmpName, stat("plain", mc, " MiB/s", nil), stat("FTPS", mt, " MiB/s", mc))
		fmt.Printf("%-22s  plain %.3f s/GiB, FTPS %.3f s/GiB\n", "  relay CPU", median(mcByteCPU), median(mtByteCPU))
	}
	if ftpsOnly {
		return
	}
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
	return procStatSeconds(pid, 11) // utime, stime
}

// procStatSeconds is the sum of the two clock-tick fields of
// /proc/pid/stat at i and i+1, counted after the command name's ")" (11:
// utime and stime, 13: cutime and cstime), in seconds (100 ticks a second
// on Linux); 0 when pid is gone.
func procStatSeconds(pid, i int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	a, _ := strconv.ParseFloat(f[i], 64)
	c, _ := strconv.ParseFloat(f[i+1], 64)
	return (a + c) / 100
}

// procChildCPU is the user+system CPU seconds of the children process pid
// has waited for (vsftpd's listener: its sessions once ended).
func procChildCPU(pid int) float64 {
	return procStatSeconds(pid, 13) // cutime, cstime
}

// hasChildren reports whether process pid has child processes.
func hasChildren(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	return err == nil && len(bytes.TrimSpace(b)) > 0
}

// selfCPU is the user+system CPU seconds this process has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// procSwitches is the context switches, voluntary and not, of every
// thread of process pid so far (0: none).
func procSwitches(pid int) int {
	if pid == 0 {
		return 0
	}
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	n := 0
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread has ended
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				m, _ := strconv.Atoi(strings.TrimSpace(v))
				n += m
			}
		}
	}
	return n
}

// procMonitorCPU is the user+system CPU seconds of the Go runtime's
// monitor thread (sysmon) in the Go process pid: the first thread the
// runtime starts after the main one, so the earliest started but main.
func procMonitorCPU(pid int) float64 {
	stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	var best []string
	var bestStart uint64
	bestTid := 0
	for _, p := range stats {
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		b, err := os.ReadFile(p)
		if err != nil || tid == pid {
			continue // ended, or the main thread
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		start, _ := strconv.ParseUint(f[19], 10, 64) // starttime, in clock ticks: ties broken by tid
		if best == nil || start < bestStart || start == bestStart && tid < bestTid {
			best, bestStart, bestTid = f, start, tid
		}
	}
	if best == nil {
		return 0
	}
	u, _ := strconv.ParseFloat(best[11], 64)
	s, _ := strconv.ParseFloat(best[12], 64)
	return (u + s) / 100
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

// TestBenchDataPath compares the data paths for a plain passive RETR and
// STOR of one large file, in the same run: direct to vsftpd, through
// ftpguard relaying ([passive] data_path = "relay"), through ftpguard
// handing the transfer to the kernel's NAT (data_path = "nftables", in a
// table of its own), and through HAProxy (TCP mode, splice) when
// installed. Runs are interleaved, each run in another order; it prints
// medians (min..max), ratios to direct and of the kernel path to HAProxy,
// and the CPU seconds per GiB of the process in front of vsftpd (the
// kernel path's NAT and conntrack work is the kernel's, counted to no
// process). Runs only with FTPGUARD_BENCH=1; FTPGUARD_BENCH_RUNS (7) and
// FTPGUARD_BENCH_MIB (1024) as for TestBench.
func TestBenchDataPath(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	runs := envInt("FTPGUARD_BENCH_RUNS", 7)
	mib := envInt("FTPGUARD_BENCH_MIB", 1024)
	size := int64(mib) << 20

	d := startVsftpd(t)
	o := guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100}
	relay := startGuard(t, d.Addr, o)
	kernel := startGuard(t, d.Addr, kernelOpts(dataTable(t), o))
	if kernel.Count(t, "kernel data path: plain passive transfers by nftables NAT") != 1 {
		t.Fatal("the kernel data path is not in use")
	}
	hp := startHAProxy(t, d)
	name := fmt.Sprintf("bench-data-%d.bin", time.Now().UnixNano())
	path, _ := randomFile(t, testHome, name, int(size))
	t.Cleanup(func() { os.Remove(path) })
	upload := make([]byte, 1<<20)
	rand.Read(upload)
	// Uploads go to a tmpfs, as the download comes from the page cache:
	// the disk's writeback would add its own noise to every path alike.
	upDir, err := os.MkdirTemp("/dev/shm", "ftpguard-bench-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(upDir) })
	if u, err := user.Lookup(testUser); err != nil {
		t.Fatal(err)
	} else {
		uid, _ := strconv.Atoi(u.Uid)
		os.Chown(upDir, uid, -1)
	}

	type target struct {
		name string
		addr string
		pid  int
	}
	targets := []target{{"direct", d.Addr, 0}, {"relay", relay.Addr, relay.cmd.Process.Pid},
		{"nftables", kernel.Addr, kernel.cmd.Process.Pid}}
	if hp != nil {
		targets = append(targets, target{"haproxy", hp.Addr, hp.pid})
	}
	session := func(tg target) *ftp.ServerConn {
		c, err := ftpClient(t, "127.0.0.25", tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Each transfer's rate, and the CPU seconds per GiB of the process in
	// front of vsftpd and of everything the transfer runs in: this
	// process (the client) and the vsftpd session (its listener's
	// children, counted once the session has ended). On loopback the
	// receiving side's TCP, conntrack and NAT run mostly in the sender's
	// system call, so the sum is the transfer's cost on this machine
	// whatever else runs on it, which wall-clock rates are not.
	type result struct{ rate, relayCPU, allCPU float64 }
	measure := func(tg target, op func(c *ftp.ServerConn) time.Duration) result {
		for deadline := time.Now().Add(5 * time.Second); hasChildren(d.pid) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond) // the session before reaped
		}
		c := session(tg)
		relay0, client0, daemon0 := procCPU(tg.pid), selfCPU(), procChildCPU(d.pid)
		elapsed := op(c)
		relay1 := procCPU(tg.pid)
		client1 := selfCPU()
		c.Quit()
		// The session's processes reaped: their CPU is the listener's
		// children's. Waiting for that also keeps a session from being
		// counted in the next measurement.
		for deadline := time.Now().Add(5 * time.Second); hasChildren(d.pid) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		all := client1 - client0 + procChildCPU(d.pid) - daemon0 + relay1 - relay0
		perGiB := 1024 / float64(mib)
		return result{float64(mib) / elapsed.Seconds(), (relay1 - relay0) * perGiB, all * perGiB}
	}
	retr := func(tg target) result {
		return measure(tg, func(c *ftp.ServerConn) time.Duration {
			start := time.Now()
			r, err := c.Retr(name)
			if err != nil {
				t.Fatal(err)
			}
			n, err := drain(r)
			if cerr := r.Close(); err == nil {
				err = cerr
			}
			if err != nil || n != size {
				t.Fatalf("RETR via %s: %d bytes, %v", tg.name, n, err)
			}
			return time.Since(start)
		})
	}
	stor := func(tg target) result {
		up := filepath.Join(upDir, fmt.Sprintf("up-%s-%d.bin", tg.name, time.Now().UnixNano()))
		defer os.Remove(up)
		return measure(tg, func(c *ftp.ServerConn) time.Duration {
			start := time.Now()
			if err := c.Stor(up, &repeatReader{buf: upload, left: size}); err != nil {
				t.Fatalf("STOR via %s: %v", tg.name, err)
			}
			elapsed := time.Since(start)
			if fi, err := os.Stat(up); err != nil || fi.Size() != size {
				t.Fatalf("STOR via %s: the daemon has %v (%v); want %d bytes", tg.name, fi, err, size)
			}
			return elapsed
		})
	}

	rate := map[string]map[string][]float64{"RETR": {}, "STOR": {}}
	relayCPU := map[string]map[string][]float64{"RETR": {}, "STOR": {}}
	allCPU := map[string]map[string][]float64{"RETR": {}, "STOR": {}}
	for i := 0; i < runs; i++ {
		for j := range targets { // each run in another order
			tg := targets[(i+j)%len(targets)]
			for _, op := range []struct {
				name string
				f    func(target) result
			}{{"RETR", retr}, {"STOR", stor}} {
				r := op.f(tg)
				rate[op.name][tg.name] = append(rate[op.name][tg.name], r.rate)
				relayCPU[op.name][tg.name] = append(relayCPU[op.name][tg.name], r.relayCPU)
				allCPU[op.name][tg.name] = append(allCPU[op.name][tg.name], r.allCPU)
			}
		}
	}
	fmt.Printf("ftpguard data paths: %d interleaved runs of %d MiB each; MiB/s medians (min..max), ratio to direct\n", runs, mib)
	for _, op := range []string{"RETR", "STOR"} {
		line := fmt.Sprintf("%-5s", op)
		direct := median(rate[op]["direct"])
		for _, tg := range targets {
			v := rate[op][tg.name]
			line += fmt.Sprintf("  %s %.0f (%.0f..%.0f)", tg.name, median(v), slices.Min(v), slices.Max(v))
			if tg.name != "direct" {
				line += fmt.Sprintf(" %.3f", median(v)/direct)
			}
		}
		if hp != nil {
			line += fmt.Sprintf("  nftables/haproxy %.3f", median(rate[op]["nftables"])/median(rate[op]["haproxy"]))
		}
		fmt.Println(line)
		line = fmt.Sprintf("%-5s", "  CPU")
		for _, tg := range targets {
			a, r := allCPU[op][tg.name], relayCPU[op][tg.name]
			line += fmt.Sprintf("  %s %.2f (%.2f..%.2f)", tg.name, median(a), slices.Min(a), slices.Max(a))
			if tg.pid != 0 {
				line += fmt.Sprintf(" of it relay %.2f", median(r))
			}
		}
		fmt.Println(line + "  s/GiB, client+daemon+relay")
	}
	if hp == nil {
		fmt.Println("(haproxy not installed: no reference relay)")
	}
}

// repeatReader yields left bytes of buf over and over; its WriteTo writes
// buf whole, as a bulk client does (an io.Copy through a 32 KiB buffer
// would measure the client).
type repeatReader struct {
	buf  []byte
	left int64
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.left)], r.buf)
	r.left -= int64(n)
	return n, nil
}

func (r *repeatReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.left > 0 {
		n, err := w.Write(r.buf[:min(int64(len(r.buf)), r.left)])
		total += int64(n)
		r.left -= int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
