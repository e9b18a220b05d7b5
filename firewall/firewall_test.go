package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

func TestExpandArgv(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	argv := []string{"nft", "add", "element", "inet", "filter", "ftpguard_{family}", "{ {prefix} timeout {seconds}s }", "{ip}", "{unknown}"}
	tests := []struct {
		key  string
		left time.Duration
		want []string
	}{
		{"203.0.113.7/32", time.Hour, []string{"ftpguard_ip", "{ 203.0.113.7/32 timeout 3600s }", "203.0.113.7"}},
		{"2001:db8::/64", 1500 * time.Millisecond, []string{"ftpguard_ip6", "{ 2001:db8::/64 timeout 2s }", "2001:db8::"}},
		{"198.51.100.0/24", -time.Second, []string{"ftpguard_ip", "{ 198.51.100.0/24 timeout 0s }", "198.51.100.0"}},
	}
	for _, tt := range tests {
		b := limiter.Ban{Key: netip.MustParsePrefix(tt.key), Until: now.Add(tt.left)}
		got := expandArgv(argv, b, now)
		if !slices.Equal(got[5:8], tt.want) || got[0] != "nft" || got[8] != "{unknown}" {
			t.Errorf("%s: %q, want …%q", tt.key, got, tt.want)
		}
	}
}

// startFirewall runs a firewall with argv as its ban command (and unban
// with "unban" put first) until the test ends; its log goes to logs.
func startFirewall(t *testing.T, ban, unban []string, timeout time.Duration, observe bool) (*Runner, *syncBuffer) {
	t.Helper()
	return runFirewall(t, Settings{Ban: ban, Unban: unban, Timeout: timeout}, observe, nil)
}

// runFirewall runs a firewall with fs, pushing initial first, until the
// test ends.
func runFirewall(t *testing.T, fs Settings, observe bool, initial []limiter.Ban) (*Runner, *syncBuffer) {
	t.Helper()
	logs := new(syncBuffer)
	fw := New(fs, func() bool { return observe }, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fw.Run(ctx, initial) }()
	t.Cleanup(func() { cancel(); <-done })
	return fw, logs
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFirewallCommands: each ban and unban runs its command with the
// placeholders substituted, in order, without a shell between.
func TestFirewallCommands(t *testing.T) {
	out := filepath.Join(t.TempDir(), "fw.log")
	script := `echo "$@" >> ` + out
	fw, _ := startFirewall(t,
		[]string{"/bin/sh", "-c", script, "sh", "ban", "{ip}", "{prefix}", "{seconds}", "{family}", "; rm -rf /"},
		[]string{"/bin/sh", "-c", script, "sh", "unban", "{prefix}"}, 5*time.Second, false)
	now := time.Now()
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("203.0.113.7/32"), Until: now.Add(time.Hour)}})
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("2001:db8::/64"), Until: now.Add(90 * time.Second)}, Remote: true})
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("203.0.113.7/32"), Until: now.Add(time.Hour)}, Lifted: true})
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("192.0.2.1/32"), Until: now.Add(-time.Second)}}) // over: skipped
	waitUntil(t, "three commands", func() bool { return fw.stats().unban.ok == 1 })
	b, _ := os.ReadFile(out)
	want := "ban 203.0.113.7 203.0.113.7/32 3600 ip ; rm -rf /\nban 2001:db8:: 2001:db8::/64 90 ip6 ; rm -rf /\nunban 203.0.113.7/32\n"
	if string(b) != want {
		t.Errorf("commands ran as:\n%s\nwant:\n%s", b, want)
	}
	if s := fw.stats(); s.ban.ok != 2 || s.ban.failed != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestFirewallTimeout: a command that hangs is killed after the timeout,
// with the children it forked, and the failure is logged and counted; the
// next command runs.
func TestFirewallTimeout(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	hang := []string{"/bin/sh", "-c", `sleep 60 & echo $! > ` + pidFile + `; wait`}
	fw, logs := startFirewall(t, hang, []string{"/bin/sh", "-c", "echo unban-ran > " + filepath.Join(dir, "unban")}, 300*time.Millisecond, false)
	ban := limiter.Ban{Key: netip.MustParsePrefix("203.0.113.9/32"), Until: time.Now().Add(time.Hour)}
	start := time.Now()
	fw.Hook(limiter.BanChange{Ban: ban})
	fw.Hook(limiter.BanChange{Ban: ban, Lifted: true})
	waitUntil(t, "the timeout", func() bool { return fw.stats().ban.timeout == 1 })
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the hanging command was killed after %v, want about 300ms", took)
	}
	waitUntil(t, "the next command", func() bool { return fw.stats().unban.ok == 1 })
	if !strings.Contains(logs.String(), "firewall command failed") || !strings.Contains(logs.String(), "killed after 300ms") {
		t.Errorf("log lacks the failure:\n%s", logs)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitUntil(t, "the forked child to die", func() bool {
		// A zombie is dead too: it is gone from the process group.
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return err != nil || strings.Contains(string(st), ") Z ") || errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	})
}

func TestFirewallFailureLogged(t *testing.T) {
	fw, logs := startFirewall(t, []string{"/bin/sh", "-c", "echo 'Error: No such file or directory' >&2; exit 1"}, nil, 5*time.Second, false)
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("203.0.113.10/32"), Until: time.Now().Add(time.Hour)}})
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("203.0.113.10/32")}, Lifted: true}) // no unban command
	waitUntil(t, "the failure", func() bool { return fw.stats().ban.failed == 1 })
	waitUntil(t, "the log line", func() bool { return strings.Contains(logs.String(), "firewall command failed") })
	l := logs.String()
	if !strings.Contains(l, "exit status 1") || !strings.Contains(l, "No such file or directory") || !strings.Contains(l, "key=203.0.113.10/32") {
		t.Errorf("log:\n%s", l)
	}
}

// TestFirewallQueueBounded: with the worker stuck, changes beyond the
// queue are dropped and counted, and hook never blocks.
func TestFirewallQueueBounded(t *testing.T) {
	fw := New(Settings{Ban: []string{"/bin/true"}, Timeout: time.Second}, nil, slog.New(slog.DiscardHandler))
	ban := limiter.Ban{Key: netip.MustParsePrefix("203.0.113.11/32"), Until: time.Now().Add(time.Hour)}
	start := time.Now()
	for range fwQueueSize + 10 {
		fw.Hook(limiter.BanChange{Ban: ban})
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("hook blocked for %v", took)
	}
	if s := fw.stats(); s.ban.dropped != 10 || s.queued != fwQueueSize {
		t.Errorf("stats %+v, want 10 dropped, %d queued", s, fwQueueSize)
	}
}

// TestFirewallObserve: in observe mode the commands are logged, not run.
func TestFirewallObserve(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ran")
	fw, logs := startFirewall(t, []string{"/bin/sh", "-c", "touch " + out}, nil, time.Second, true)
	fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: netip.MustParsePrefix("203.0.113.12/32"), Until: time.Now().Add(time.Hour)}})
	waitUntil(t, "the log line", func() bool { return strings.Contains(logs.String(), "observe: would run firewall command") })
	if _, err := os.Stat(out); err == nil {
		t.Error("the command ran in observe mode")
	}
}

// TestFirewallUnbanExpired: with unban_expired, a ban that runs out is
// unbanned in the firewall at its end; an escalated ban at the later end;
// a lifted ban once (by the lift); a ban in force at start too. Without
// it, running out runs nothing.
func TestFirewallUnbanExpired(t *testing.T) {
	p := netip.MustParsePrefix
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("unban_expired=", on), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "fw.log")
			script := `echo "$@" >> ` + out
			now := time.Now()
			short := now.Add(3 * time.Second) // ends after the runner has started, even on a loaded machine
			initial := []limiter.Ban{{Key: p("198.51.100.4/32"), Until: short}}
			fw, logs := runFirewall(t, Settings{
				Ban:          []string{"/bin/sh", "-c", script, "sh", "ban", "{prefix}"},
				Unban:        []string{"/bin/sh", "-c", script, "sh", "unban", "{prefix}"},
				Timeout:      5 * time.Second,
				UnbanExpired: on,
			}, false, initial)
			fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: p("203.0.113.1/32"), Until: short}})               // runs out
			fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: p("203.0.113.2/32"), Until: short}})               // escalated:
			fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: p("203.0.113.2/32"), Until: now.Add(time.Hour)}})  // ends later
			fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: p("203.0.113.3/32"), Until: short}})               // lifted
			fw.Hook(limiter.BanChange{Ban: limiter.Ban{Key: p("203.0.113.3/32"), Until: short}, Lifted: true}) // before its end
			want := "ban 203.0.113.1/32\nban 203.0.113.2/32\nban 203.0.113.2/32\nban 203.0.113.3/32\nunban 203.0.113.3/32\nban 198.51.100.4/32\n"
			unbans := 1
			if on {
				want += "unban 203.0.113.1/32\nunban 198.51.100.4/32\n"
				unbans = 3
			}
			waitUntil(t, "the commands", func() bool { s := fw.stats(); return s.ban.ok == 5 && s.unban.ok == uint64(unbans) })
			time.Sleep(time.Until(short) + 500*time.Millisecond) // no more commands come
			b, _ := os.ReadFile(out)
			// The bans at start and the expiries race the others: compare
			// as sorted lists (one queue keeps each prefix's in order).
			if got := sortLines(string(b)); got != sortLines(want) {
				t.Errorf("commands ran as:\n%s\nwant:\n%s", b, want)
			}
			if on != strings.Contains(logs.String(), "expired=true") {
				t.Errorf("log (expired=true expected: %v):\n%s", on, logs)
			}
			fw.mu.Lock()
			pending := len(fw.ends)
			fw.mu.Unlock()
			if wantPending := map[bool]int{true: 1, false: 0}[on]; pending != wantPending { // 203.0.113.2 for an hour
				t.Errorf("%d unbans scheduled, want %d", pending, wantPending)
			}
		})
	}
}

func sortLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
