//go:build linux

package filestore

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// tinyDisk mounts a tmpfs of size bytes on a new directory and unmounts it
// at the end of the test. It needs root: without it the test is skipped,
// except under CI (CI set), where it fails — the fault must be injected.
func tinyDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the test does not run as root: it cannot mount the tmpfs that it fills up")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the file system is full, and returns
// its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1024)
	for i := 0; i < 1<<20; i++ { // bounded: the disk is tiny
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return path
		}
	}
	t.Fatal("the tmpfs never filled up")
	return ""
}

// hookLog records a limiter's ban hook calls.
type hookLog struct {
	mu      sync.Mutex
	changes []limiter.BanChange
}

func (h *hookLog) hook(c limiter.BanChange) {
	h.mu.Lock()
	h.changes = append(h.changes, c)
	h.mu.Unlock()
}

func (h *hookLog) all() []limiter.BanChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]limiter.BanChange(nil), h.changes...)
}

// waitFor polls cond until it holds; the deadline only stops a hung test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDiskFullBanStaysAndIsRetried fills the file system the store lives
// on for real (a 64 KiB tmpfs): a budget ban whose SaveBan fails with
// ENOSPC stays in force, is reported Unsaved to the hook and in Stats, and
// is written once space is freed, then reported Saved; it survives a
// restart. Before the retry, the ban was lost after a restart and nothing
// but a store error counter said so.
func TestDiskFullBanStaysAndIsRetried(t *testing.T) {
	dir := tinyDisk(t, "64k")
	path := filepath.Join(dir, "ftpguard.db")
	f, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := limiter.Config{Failures: 2, Window: time.Hour, BanTime: time.Hour}
	lim, err := limiter.New(cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close(); f.Close() }) // before the unmount
	var h hookLog
	lim.SetBanHook(h.hook)
	filler := fillDisk(t, dir)

	// bbolt reuses the pages it freed first: ban until it needs a new one.
	now := time.Now()
	var admin limiter.Ban
	for i := 0; ; i++ {
		if i == 5000 {
			t.Fatal("5000 bans saved on a full disk")
		}
		b, err := lim.BanKey(now, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32), 0, "")
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, limiter.ErrStore) {
				t.Fatalf("BanKey: %v, want ENOSPC", err)
			}
			admin = b
			break
		}
	}
	// A budget ban on the full disk.
	addr := netip.MustParseAddr("192.0.2.7")
	var d limiter.Decision
	for i := 0; i < 2; i++ {
		d = lim.Attempt(now, addr)
		if d.Allowed {
			d = lim.Failure(now, addr)
		}
	}
	if !d.NewBan {
		t.Fatalf("no ban after the budget: %+v", d)
	}
	for _, a := range []netip.Addr{admin.Key.Addr(), addr} {
		if got := lim.Check(now, a); got.Allowed {
			t.Fatalf("the unsaved ban of %v is not in force", a)
		}
	}
	if st := lim.Stats(); st.Unsaved != 2 {
		t.Fatalf("Stats.Unsaved = %d, want 2", st.Unsaved)
	}
	unsaved := map[netip.Prefix]bool{}
	for _, c := range h.all() {
		if c.Unsaved {
			unsaved[c.Ban.Key] = true
		}
	}
	if len(unsaved) != 2 || !unsaved[admin.Key] || !unsaved[d.Ban.Key] {
		t.Fatalf("hook told Unsaved for %v, want %v and %v", unsaved, admin.Key, d.Ban.Key)
	}
	// Still full: the retries fail and keep the bans pending.
	errs := lim.Stats().StoreErrors
	waitFor(t, "a failed retry", func() bool { return lim.Stats().StoreErrors > errs })
	if st := lim.Stats(); st.Unsaved != 2 {
		t.Fatalf("Stats.Unsaved = %d while the disk is full, want 2", st.Unsaved)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the retry to save the bans", func() bool { return lim.Stats().Unsaved == 0 })
	saved := map[netip.Prefix]bool{}
	for _, c := range h.all() {
		if c.Saved {
			saved[c.Ban.Key] = true
		}
	}
	if len(saved) != 2 || !saved[admin.Key] || !saved[d.Ban.Key] {
		t.Fatalf("hook told Saved for %v, want %v and %v", saved, admin.Key, d.Ban.Key)
	}
	lim.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	f2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	lim2, err := limiter.New(cfg, f2)
	if err != nil {
		t.Fatal(err)
	}
	defer lim2.Close()
	for _, a := range []netip.Addr{admin.Key.Addr(), addr} {
		if got := lim2.Check(now, a); got.Allowed {
			t.Fatalf("after a restart the ban of %v made while the disk was full is gone", a)
		}
	}
}
