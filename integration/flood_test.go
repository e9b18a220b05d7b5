//go:build integration

package integration

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vmRSS reads the resident memory of process pid from /proc, in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// TestLocalRepliesBounded: replies of the proxy's own (a 500 to a line of
// no command's shape) wait behind a forwarded command that is not answered
// yet — here a LIST whose data connection the client never opens. They
// count against the same bound as forwarded commands: a client that sends
// a million such lines makes the proxy stop reading it, not grow. (Before,
// the proxy queued them without bound: ~260 MB resident for this test.)
func TestLocalRepliesBounded(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 5, LogLevel: "info", Sessions: `data_timeout = "60s"`})
	pid := g.cmd.Process.Pid
	r := dialRaw(t, "127.0.0.71", g.Addr)
	r.c.SetDeadline(time.Now().Add(60 * time.Second))
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	r.send("PASV")
	r.expect(227)
	r.send("LIST") // the data connection is never opened: no reply comes
	time.Sleep(200 * time.Millisecond)
	before := vmRSS(t, pid)

	const lines = 1_000_000
	flood := bytes.Repeat([]byte("!\r\n"), lines)
	r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	n, err := r.c.Write(flood)
	t.Logf("wrote %d of %d lines in %v (err %v)", n/3, lines, time.Since(start).Round(time.Millisecond), err)
	// What the proxy read, it has taken into memory by now (give a proxy
	// that reads everything the time to process it).
	var after int64
	for i := 0; i < 20; i++ {
		time.Sleep(250 * time.Millisecond)
		after = max(after, vmRSS(t, pid))
	}
	growth := after - before
	t.Logf("ftpguard VmRSS %d KiB before the flood, %d KiB after: +%d KiB", before>>10, after>>10, growth>>10)
	if growth >= 16<<20 {
		t.Fatalf("ftpguard grew by %d MiB for %d unanswered lines; want < 16 MiB", growth>>20, lines)
	}
}
