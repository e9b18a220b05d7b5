package integration

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
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
	g := startGuard(t, d.Addr, guardOpts{Failures: 1000, LogLevel: "info", MaxConnsPerIP: 100})
	name := fmt.Sprintf("bench-%d.bin", time.Now().UnixNano())
	path, _ := randomFile(t, testHome, name, mib<<20)
	t.Cleanup(func() { os.Remove(path) })

	loginRate := func(addr string) float64 {
		start := time.Now()
		for i := 0; i < logins; i++ {
			c, err := ftpClient(t, "127.0.0.20", addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Login(testUser, testPass); err != nil {
				t.Fatal(err)
			}
			c.Quit()
		}
		return float64(logins) / time.Since(start).Seconds()
	}
	retrRate := func(addr string) float64 {
		c, err := ftpClient(t, "127.0.0.21", addr)
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
		n, err := io.Copy(io.Discard, r)
		r.Close()
		if err != nil || n != int64(mib)<<20 {
			t.Fatalf("RETR: %d bytes, %v", n, err)
		}
		return float64(n) / (1 << 20) / time.Since(start).Seconds()
	}

	var ld, lp, rd, rp []float64
	for i := 0; i < runs; i++ {
		ld = append(ld, loginRate(d.Addr))
		lp = append(lp, loginRate(g.Addr))
		rd = append(rd, retrRate(d.Addr))
		rp = append(rp, retrRate(g.Addr))
	}
	report := func(what, unit string, direct, proxied []float64) {
		md, mp := median(direct), median(proxied)
		fmt.Printf("%-22s direct %9.1f %s (%.1f..%.1f)  proxied %9.1f %s (%.1f..%.1f)  ratio %.3f\n",
			what, md, unit, slices.Min(direct), slices.Max(direct), mp, unit, slices.Min(proxied), slices.Max(proxied), mp/md)
	}
	fmt.Printf("ftpguard bench: %d interleaved runs each; medians (min..max)\n", runs)
	report(fmt.Sprintf("logins (%d/run)", logins), "/s  ", ld, lp)
	report(fmt.Sprintf("RETR %d MiB", mib), "MiB/s", rd, rp)
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
