package integration

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
)

// TestBench measures ftpguard against a direct connection to the same
// vsftpd in the same run, interleaving the two, and prints ratios. It runs
// only when FTPGUARD_BENCH=1 (integration/bench.sh sets it): it is a
// measurement, not a test, and asserts nothing about speed.
//
// FTPGUARD_BENCH_RUNS (default 7) runs of each; FTPGUARD_BENCH_LOGINS
// (default 300) logins a run; FTPGUARD_BENCH_MIB (default 256) file size.
func TestBench(t *testing.T) {
	if os.Getenv("FTPGUARD_BENCH") != "1" {
		t.Skip("set FTPGUARD_BENCH=1 (or run integration/bench.sh) to measure")
	}
	runs := envInt("FTPGUARD_BENCH_RUNS", 7)
	logins := envInt("FTPGUARD_BENCH_LOGINS", 300)
	mib := envInt("FTPGUARD_BENCH_MIB", 256)

	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100, Extra: testCert(t, "explicit")})
	name := fmt.Sprintf("bench-%d.bin", time.Now().UnixNano())
	path, _ := randomFile(t, testHome, name, mib<<20)
	t.Cleanup(func() { os.Remove(path) })

	retrRate := func(addr string, opts ...ftp.DialOption) float64 {
		c, err := ftpClient(t, "127.0.0.21", addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Quit()
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
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
		return float64(n) / (1 << 20) / time.Since(start).Seconds()
	}

	// 32 clients at once, each logging in and out in a loop.
	concurrentLogins := func(addr string) float64 {
		const workers = 32
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < logins/workers+1; i++ {
					c, err := ftpClient(t, "127.0.0.22", addr)
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
		return float64(workers*(logins/workers+1)) / time.Since(start).Seconds()
	}
	ftps := ftp.DialWithExplicitTLS(&tls.Config{InsecureSkipVerify: true})
	var ld, lp, cd, cp, rd, rp, rt []float64
	for i := 0; i < runs; i++ {
		ld = append(ld, loginRate(t, "127.0.0.20", d.Addr, logins))
		lp = append(lp, loginRate(t, "127.0.0.20", g.Addr, logins))
		cd = append(cd, concurrentLogins(d.Addr))
		cp = append(cp, concurrentLogins(g.Addr))
		rd = append(rd, retrRate(d.Addr))
		rp = append(rp, retrRate(g.Addr))
		rt = append(rt, retrRate(g.Addr, ftps))
	}
	report := func(what, unit, aName string, a []float64, bName string, b []float64) {
		ma, mb := median(a), median(b)
		fmt.Printf("%-20s %s %8.1f %s (%.1f..%.1f)  %s %8.1f %s (%.1f..%.1f)  ratio %.3f\n",
			what, aName, ma, unit, slices.Min(a), slices.Max(a), bName, mb, unit, slices.Min(b), slices.Max(b), mb/ma)
	}
	fmt.Printf("ftpguard bench: %d interleaved runs each; medians (min..max)\n", runs)
	report(fmt.Sprintf("logins (%d/run)", logins), "/s", "direct", ld, "proxied", lp)
	report("logins, 32 at once", "/s", "direct", cd, "proxied", cp)
	report(fmt.Sprintf("RETR %d MiB", mib), "MiB/s", "direct", rd, "proxied", rp)
	report(fmt.Sprintf("RETR %d MiB", mib), "MiB/s", "proxied plain", rp, "proxied FTPS", rt) // PROT P
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
