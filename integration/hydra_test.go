//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHydra: THC hydra, a real brute-force tool, against ftpguard in front
// of vsftpd with 200 wrong passwords and the right one last. ftpguard bans
// 127.0.0.1 (hydra cannot bind another source address) after the budget,
// hydra gives up by itself without finding the password, and vsftpd's own
// log shows no more failed logins than the budget. With 1 task and with 4
// (hydra pauses ~1 s per reconnect: about 10 s and 2 s); each run has its
// own ftpguard, so its own bans.
func TestHydra(t *testing.T) {
	const budget = 3
	if _, err := exec.LookPath("hydra"); err != nil {
		t.Fatalf("hydra is not installed (run .ci/run, or apt-get install -y hydra): %v", err)
	}
	d := startVsftpd(t)
	dir := t.TempDir()
	var words []string
	for i := 1; i <= 200; i++ {
		words = append(words, fmt.Sprintf("wrong-%03d", i))
	}
	words = append(words, testPass)
	if err := os.WriteFile(filepath.Join(dir, "words"), []byte(strings.Join(words, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Control: straight to vsftpd, hydra finds the password at the end of a
	// short list, so the runs below fail to find it because of ftpguard.
	t.Run("control without ftpguard", func(t *testing.T) {
		short := filepath.Join(t.TempDir(), "short")
		os.WriteFile(short, []byte(strings.Join(append(words[:2:2], testPass), "\n")+"\n"), 0o600)
		_, port, _ := strings.Cut(d.Addr, ":")
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "hydra", "-I", "-f", "-t", "1", "-l", testUser, "-P", short, "-s", port, "ftp://127.0.0.1")
		cmd.Dir = t.TempDir()
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "password: "+testPass) {
			t.Fatalf("hydra did not find the password straight at vsftpd:\n%s", out)
		}
	})
	for _, tasks := range []string{"1", "4"} {
		t.Run("tasks="+tasks, func(t *testing.T) {
			g := startGuard(t, d.Addr, guardOpts{Failures: budget, LogLevel: "info"})
			before := d.FailedLogins(t)
			_, port, _ := strings.Cut(g.Addr, ":")
			run := t.TempDir() // hydra writes hydra.restore into its working directory
			found := filepath.Join(run, "found")
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			defer cancel()
			// -I: ignore a restore file; -f: stop at the first password found.
			cmd := exec.CommandContext(ctx, "hydra", "-I", "-f", "-t", tasks, "-l", testUser,
				"-P", filepath.Join(dir, "words"), "-s", port, "-o", found, "ftp://127.0.0.1")
			cmd.Dir = run
			start := time.Now()
			out, err := cmd.CombinedOutput()
			took := time.Since(start).Round(100 * time.Millisecond)
			if ctx.Err() != nil {
				t.Fatalf("hydra did not end within 25s:\n%s", out)
			}
			if b, _ := os.ReadFile(found); strings.Contains(string(out), testPass) || strings.Contains(string(b), testPass) ||
				!strings.Contains(string(out), "0 valid password") {
				t.Fatalf("hydra found the password (exit %v):\n%s", err, out)
			}
			reached := d.FailedLogins(t) - before
			if reached < 1 || reached > budget {
				t.Fatalf("vsftpd logged %d failed logins; want 1..%d (the budget)", reached, budget)
			}
			if n := g.Count(t, "ban", "key", "127.0.0.1/32"); n != 1 {
				t.Fatalf("%d bans of 127.0.0.1/32 logged; want 1", n)
			}
			if n := g.Count(t, "login ok"); n != 0 {
				t.Fatalf("%d logins succeeded", n)
			}
			refused := g.Count(t, "reject", "reason", "banned")
			t.Logf("hydra -t %s gave up after %v without the password: %d guesses reached vsftpd (budget %d), %d connections refused as banned",
				tasks, took, reached, budget, refused)
		})
	}
}
