//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBenchSiege measures what legitimate users get while ftpguard is under
// attack, against the same run without the attack (docs/benchmarks.md):
// their login latency (p50, p99) and RETR throughput as ratios to the
// unloaded phases, and ftpguard's CPU and resident memory during each phase.
// Phases alternate (quiet, siege, quiet, siege …) so that drift of the
// machine falls on both. The attack, all at once:
//   - wrong passwords from 50 addresses with 4 connections each;
//   - 500 idle pre-login connections from one IPv6 /64, through a trusted
//     PROXY-protocol balancer (127.0.0.250);
//   - a username spray from 10 addresses (a new name each guess).
//
// The legitimate clients (8 addresses logging in and out in a loop, one
// downloading) have logged in before the first phase, as regular users
// have. Every loop is bounded in time; all traffic stays on 127.0.0.0/8.
// It runs only when FTPGUARD_BENCH=1 (integration/bench.sh sets it);
// FTPGUARD_SIEGE_SECONDS (default 8) is the length of a phase,
// FTPGUARD_SIEGE_ROUNDS (default 2) the quiet/siege pairs.
func TestBenchSiege(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	phase := time.Duration(envInt("FTPGUARD_SIEGE_SECONDS", 8)) * time.Second
	rounds := envInt("FTPGUARD_SIEGE_ROUNDS", 2)
	const balancer = "127.0.0.250"

	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{LogLevel: "info", Extra: fmt.Sprintf("\n[proxy_protocol]\ntrusted = [%q]\n", balancer)})
	gpid := g.cmd.Process.Pid
	name := fmt.Sprintf("siege-%d.bin", time.Now().UnixNano())
	const mib = 128
	path, _ := randomFile(t, testHome, name, mib<<20)
	t.Cleanup(func() { os.Remove(path) })

	legit := make([]string, 8)
	for i := range legit {
		legit[i] = fmt.Sprintf("127.0.0.%d", 30+i)
	}
	const downloader = "127.0.0.38"
	for _, src := range append(slices.Clone(legit), downloader) {
		c, err := ftpClient(t, src, g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatalf("first login from %s: %v", src, err)
		}
		c.Quit()
	}

	type result struct {
		lat        []time.Duration
		failed     int
		errs       map[string]int // why legitimate logins failed, by error text
		retr       []float64      // MiB/s
		cpu        float64        // ftpguard CPU seconds per second
		rssMax     int            // KiB
		guesses    int64          // attack PASS lines sent
		idleOpened int64
	}
	run := func(siege bool) result {
		var res result
		var mu sync.Mutex
		var wg sync.WaitGroup
		stop := make(chan struct{})
		end := time.Now().Add(phase)
		for _, src := range legit {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					start := time.Now()
					c, err := ftpClient(t, src, g.Addr)
					if err == nil {
						err = c.Login(testUser, testPass)
						c.Quit()
					}
					mu.Lock()
					if err != nil {
						res.failed++
						if res.errs == nil {
							res.errs = map[string]int{}
						}
						res.errs[err.Error()]++
					} else {
						res.lat = append(res.lat, time.Since(start))
					}
					mu.Unlock()
					if err != nil {
						time.Sleep(50 * time.Millisecond)
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				c, err := ftpClient(t, downloader, g.Addr)
				if err != nil {
					mu.Lock()
					res.failed++
					mu.Unlock()
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if err := c.Login(testUser, testPass); err == nil {
					start := time.Now()
					if r, err := c.Retr(name); err == nil {
						n, err := drain(r)
						r.Close()
						if err == nil && n == mib<<20 {
							mu.Lock()
							res.retr = append(res.retr, float64(n)/(1<<20)/time.Since(start).Seconds())
							mu.Unlock()
						}
					}
				}
				c.Quit()
			}
		}()
		var attack sync.WaitGroup
		if siege {
			for a := 1; a <= 50; a++ {
				for k := 0; k < 4; k++ {
					attack.Add(1)
					go func() {
						defer attack.Done()
						guess(stop, fmt.Sprintf("127.0.1.%d", a), g.Addr, func(int) string { return testUser }, &res.guesses)
					}()
				}
			}
			for a := 1; a <= 10; a++ {
				attack.Add(1)
				go func() {
					defer attack.Done()
					guess(stop, fmt.Sprintf("127.0.2.%d", a), g.Addr, func(i int) string { return fmt.Sprintf("spray%d-%d", a, i) }, &res.guesses)
				}()
			}
			attack.Add(1)
			go func() {
				defer attack.Done()
				holdIdle(stop, balancer, g.Addr, 500, &res.idleOpened)
			}()
		}
		cpu0, t0 := procCPU(gpid), time.Now()
		tick := time.NewTicker(200 * time.Millisecond)
		for time.Now().Before(end) {
			<-tick.C
			res.rssMax = max(res.rssMax, procRSS(gpid))
		}
		tick.Stop()
		res.cpu = (procCPU(gpid) - cpu0) / time.Since(t0).Seconds()
		close(stop)
		attack.Wait()
		wg.Wait()
		return res
	}

	var quiet, siege []result
	for i := 0; i < rounds; i++ {
		quiet = append(quiet, run(false))
		siege = append(siege, run(true))
		time.Sleep(time.Second) // let the siege's sessions end before the next quiet phase
	}
	pct := func(rs []result, q float64) []float64 {
		var out []float64
		for _, r := range rs {
			v := slices.Clone(r.lat)
			slices.Sort(v)
			if len(v) == 0 {
				continue
			}
			out = append(out, float64(v[min(len(v)-1, int(q*float64(len(v))))])/float64(time.Millisecond))
		}
		return out
	}
	field := func(rs []result, f func(result) float64) []float64 {
		var out []float64
		for _, r := range rs {
			out = append(out, f(r))
		}
		return out
	}
	stat := func(v []float64) string {
		if len(v) == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.1f (%.1f..%.1f)", median(v), slices.Min(v), slices.Max(v))
	}
	ratio := func(a, b []float64) string {
		if len(a) == 0 || len(b) == 0 || median(b) == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", median(a)/median(b))
	}
	retr := func(rs []result) []float64 {
		var out []float64
		for _, r := range rs {
			out = append(out, r.retr...)
		}
		return out
	}
	sum := func(rs []result, f func(result) int) (n int) {
		for _, r := range rs {
			n += f(r)
		}
		return n
	}
	fmt.Printf("ftpguard siege: %d quiet/siege pairs of %v; medians over phases (min..max)\n", rounds, phase)
	fmt.Printf("  legit login p50 ms   quiet %s  siege %s  ratio %s\n", stat(pct(quiet, .5)), stat(pct(siege, .5)), ratio(pct(siege, .5), pct(quiet, .5)))
	fmt.Printf("  legit login p99 ms   quiet %s  siege %s  ratio %s\n", stat(pct(quiet, .99)), stat(pct(siege, .99)), ratio(pct(siege, .99), pct(quiet, .99)))
	fmt.Printf("  legit RETR MiB/s     quiet %s  siege %s  ratio %s\n", stat(retr(quiet)), stat(retr(siege)), ratio(retr(siege), retr(quiet)))
	fmt.Printf("  legit logins ok      quiet %d  siege %d; failed quiet %d  siege %d\n",
		sum(quiet, func(r result) int { return len(r.lat) }), sum(siege, func(r result) int { return len(r.lat) }),
		sum(quiet, func(r result) int { return r.failed }), sum(siege, func(r result) int { return r.failed }))
	for _, r := range siege {
		for e, n := range r.errs {
			fmt.Printf("  legit failure under siege: %d × %s\n", n, e)
		}
	}
	fmt.Printf("  ftpguard CPU cores   quiet %s  siege %s\n", stat(field(quiet, func(r result) float64 { return r.cpu })), stat(field(siege, func(r result) float64 { return r.cpu })))
	fmt.Printf("  ftpguard RSS MiB     quiet %s  siege %s\n", stat(field(quiet, func(r result) float64 { return float64(r.rssMax) / 1024 })), stat(field(siege, func(r result) float64 { return float64(r.rssMax) / 1024 })))
	fmt.Printf("  attack: %d guesses sent, %d idle connections opened; the daemon saw %d failed logins\n",
		sum(siege, func(r result) int { return int(r.guesses) }), sum(siege, func(r result) int { return int(r.idleOpened) }), d.FailedLogins(t))
}

// guess sends wrong passwords from src until stop is closed: USER user(i),
// PASS, a new connection whenever ftpguard or the daemon closes one.
func guess(stop <-chan struct{}, src, addr string, user func(int) string, sent *int64) {
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	for i := 0; ; {
		select {
		case <-stop:
			return
		default:
		}
		c, end, err := dialStoppable(stop, &dialer, addr)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		r := bufio.NewReader(c)
		ok := readCode(r) == 220
		for ok {
			fmt.Fprintf(c, "USER %s\r\nPASS wrong-%d\r\n", user(i), i)
			atomic.AddInt64(sent, 1)
			i++
			ok = readCode(r) == 331 && readCode(r) == 530
		}
		end()
		time.Sleep(10 * time.Millisecond) // bounded reconnect rate
	}
}

// holdIdle keeps n pre-login connections open through a PROXY-protocol
// balancer at src, each naming a client of one IPv6 /64, reopening the
// ones ftpguard closes, until stop is closed.
func holdIdle(stop <-chan struct{}, src, addr string, n int, opened *int64) {
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, end, err := dialStoppable(stop, &dialer, addr)
				began := time.Now()
				if err == nil {
					atomic.AddInt64(opened, 1)
					fmt.Fprintf(c, "PROXY TCP6 2001:db8:5::%x ::1 %d 21\r\n", i+1, 40000+i)
					buf := make([]byte, 512)
					for {
						if _, err := c.Read(buf); err != nil {
							break
						}
					}
					end()
				}
				if time.Since(began) < time.Second {
					time.Sleep(500 * time.Millisecond) // refused at once: bounded reconnect rate
				}
			}
		}()
	}
	wg.Wait()
}

// dialStoppable dials addr with d; the connection is closed when stop is
// closed or end is called, whichever comes first (end must be called once
// the caller is done with it), so a load loop blocked in a read ends with
// its phase.
func dialStoppable(stop <-chan struct{}, d *net.Dialer, addr string) (c net.Conn, end func(), err error) {
	c, err = d.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-stop:
		case <-done:
		}
		c.Close()
	}()
	return c, func() { close(done) }, nil
}

// readCode reads one whole reply and returns its code (0 on error).
func readCode(r *bufio.Reader) int {
	for {
		line, err := r.ReadString('\n')
		if err != nil || len(line) < 4 {
			return 0
		}
		if line[3] == ' ' {
			n, _ := strconv.Atoi(line[:3])
			return n
		}
	}
}

// procRSS is the resident memory of pid in KiB (0 if unknown).
func procRSS(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
