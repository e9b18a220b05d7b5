//go:build integration

package integration

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDrainTimeoutKeepsGuessInFlight: SIGTERM while a guess is in flight
// (vsftpd holds its 530 for 30 s: delay_failed_login) and drain_timeout
// (1 s) expires: the session is aborted, its guess settles as a failure
// and bans the key (failures = 1), and that ban is saved before the state
// file is closed, so ftpguard restarted on the same file refuses the key.
// Before, the store was closed while the aborted sessions were still
// settling, and the ban was lost (3 of 3 runs).
func TestDrainTimeoutKeepsGuessInFlight(t *testing.T) {
	d := startVsftpd(t, "delay_failed_login=30")
	dir := t.TempDir()
	opts := guardOpts{Failures: 1, BanTime: "1h", Dir: dir, DrainTimeout: "1s"}
	g := startGuard(t, d.Addr, opts)
	r := dialRaw(t, "127.0.0.61", g.Addr)
	if code, _ := r.reply(); code != 220 {
		t.Fatalf("greeting %d", code)
	}
	r.send("USER "+testUser, "PASS wrong")
	r.expect(331)
	waitFor(t, "the PASS at vsftpd", func() bool {
		b, _ := os.ReadFile(d.LogPath)
		return strings.Contains(string(b), `"PASS <password>"`)
	})
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-g.exited:
		g.exited <- err
		if err != nil {
			t.Fatalf("ftpguard exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ftpguard did not exit after drain_timeout")
	}
	if n := g.Count(t, "ban", "key", "127.0.0.61/32"); n != 1 {
		t.Fatalf("%d ban lines for the guess in flight, want 1", n)
	}
	if n := g.Count(t, "ban not saved"); n != 0 {
		t.Fatalf("the ban of the guess in flight was not saved")
	}

	g2 := startGuard(t, d.Addr, opts)
	r2 := dialRaw(t, "127.0.0.61", g2.Addr)
	if code, _ := r2.reply(); code != 421 {
		t.Fatalf("after SIGTERM mid-guess and a restart: greeting %d, want 421 (the ban was lost)", code)
	}
	// Legitimate users first: another address still logs in.
	c, err := ftpClient(t, "127.0.0.62", g2.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Quit()
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatalf("another address cannot log in: %v", err)
	}
}
