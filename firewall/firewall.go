// Package firewall pushes ftpguard's bans into the kernel's firewall, with
// one of two backends: kind "exec" runs the [firewall] ban_command and
// unban_command of the config file for each ban the limiter makes or lifts
// (and, with unban_expired, when a ban runs out), one at a time, each
// within a timeout; kind "nftables" keeps the bans in a table of its own
// over netlink (package nftset), no process per ban. It owns the
// [firewall] section (config.go) and its metrics (metrics.go).
package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/nftset"
)

// fwQueueSize bounds the firewall commands waiting to run: a flood of bans
// or a slow command never holds up the proxy, it drops (and counts) the
// commands beyond.
const fwQueueSize = 1024

// fwOutputMax bounds the output of a firewall command kept for the log.
const fwOutputMax = 2048

// fwJob is one ban or unban to push.
type fwJob struct {
	unban   bool
	expired bool // an unban because the ban ran out (unban_expired)
	ban     limiter.Ban
}

func (j fwJob) action() string {
	if j.unban {
		return "unban"
	}
	return "ban"
}

// fwCounts are the results of one action's commands.
type fwCounts struct{ ok, failed, timeout, dropped uint64 }

// fwStats is a snapshot of a firewall's counters.
type fwStats struct {
	ban, unban fwCounts
	queued     int
}

// Runner runs the [firewall] commands for the limiter's ban changes, one
// at a time and in the order they came, on a goroutine of its own (Run),
// each within the configured timeout (then its process group is killed).
// With unban_expired it also queues the unban of each ban pushed when the
// ban runs out (a timer per banned prefix). Hook never blocks. Make it with
// New; safe for concurrent use.
type Runner struct {
	cfg     atomic.Pointer[Settings]
	nft     *nftset.Config // kind "nftables" at New (a reload does not change the kind); nil: exec
	set     *nftset.Set    // the nftables table; only Run's goroutine uses it; nil: not open
	observe func() bool    // observe mode: log the commands, run none
	queue   chan fwJob
	log     *slog.Logger

	mu       sync.Mutex
	counts   [2]fwCounts // ban, unban
	lastDrop time.Time   // last "queue full" log line
	ends     map[netip.Prefix]*time.Timer
	stopped  bool // Run has returned: no more timers
}

// New returns a Runner of the backend of s: the commands of s, or its
// nftables table (s.Nft, opened by Run). observe reports whether the
// daemon is in observe mode (then the changes are logged, not made); nil:
// never.
func New(s Settings, observe func() bool, log *slog.Logger) *Runner {
	if observe == nil {
		observe = func() bool { return false }
	}
	f := &Runner{queue: make(chan fwJob, fwQueueSize), observe: observe, log: log, ends: make(map[netip.Prefix]*time.Timer),
		nft: s.Nft}
	f.SetConfig(s)
	return f
}

// SetConfig applies reloaded settings to the commands not yet run. The
// kind, and the nftables keys, take effect on restart only.
func (f *Runner) SetConfig(s Settings) {
	if f.nft != nil || s.Nft != nil {
		s.Ban, s.Unban, s.UnbanExpired = nil, nil, true
	}
	f.cfg.Store(&s)
}

// on reports whether the Runner pushes bans anywhere.
func (f *Runner) on() bool { return f.nft != nil || len(f.cfg.Load().Ban) > 0 }

// Hook is the limiter's ban hook: it queues the change, or drops it (and
// counts and logs that) when the queue is full.
func (f *Runner) Hook(c limiter.BanChange) {
	if !f.on() {
		return
	}
	if c.Lifted {
		f.cancelEnd(c.Ban.Key)
	} else {
		f.scheduleEnd(c.Ban, time.Now())
	}
	f.enqueue(fwJob{unban: c.Lifted, ban: c.Ban})
}

// scheduleEnd queues the unban of b when b runs out, in place of the one
// queued for an earlier ban of its prefix (an escalation ends later), if
// unban_expired is on and b is in force.
func (f *Runner) scheduleEnd(b limiter.Ban, now time.Time) {
	if cfg := f.cfg.Load(); f.nft == nil && (!cfg.UnbanExpired || len(cfg.Unban) == 0) || !b.Active(now) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	if t := f.ends[b.Key]; t != nil {
		t.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(b.Until.Sub(now), func() {
		f.mu.Lock()
		current := f.ends[b.Key] == t
		if current {
			delete(f.ends, b.Key)
		}
		f.mu.Unlock()
		if current {
			f.enqueue(fwJob{unban: true, expired: true, ban: b})
		}
	})
	f.ends[b.Key] = t
}

// cancelEnd forgets the scheduled unban of key (it was lifted).
func (f *Runner) cancelEnd(key netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.ends[key]; t != nil {
		t.Stop()
		delete(f.ends, key)
	}
}

// stopEnds stops every scheduled unban: Run has returned.
func (f *Runner) stopEnds() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	for k, t := range f.ends {
		t.Stop()
		delete(f.ends, k)
	}
}

// enqueue queues j, or drops it (and counts and logs that) when the queue
// is full. It never blocks.
func (f *Runner) enqueue(j fwJob) {
	select {
	case f.queue <- j:
	default:
		f.mu.Lock()
		f.counter(j).dropped++
		logIt := time.Since(f.lastDrop) > 10*time.Second
		if logIt {
			f.lastDrop = time.Now()
		}
		f.mu.Unlock()
		if logIt {
			f.log.Error("firewall command dropped: queue full (commands too slow?)", "action", j.action(),
				"key", j.ban.Key.String(), "queue", fwQueueSize)
		}
	}
}

func (f *Runner) counter(j fwJob) *fwCounts {
	if j.unban {
		return &f.counts[1]
	}
	return &f.counts[0]
}

func (f *Runner) stats() fwStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fwStats{ban: f.counts[0], unban: f.counts[1], queued: len(f.queue)}
}

// Run executes queued changes until ctx ends. It first pushes initial
// (the bans in force at start, which the firewall may have lost with a
// reboot) — exec: a ban_command each, only while no change waits in the
// queue; nftables: the table is opened and synced to initial in one
// transaction — and schedules their unbans. With nftables, it closes the
// table when it returns (deleting it with remove_on_exit).
func (f *Runner) Run(ctx context.Context, initial []limiter.Ban) {
	defer f.stopEnds()
	if f.on() {
		now := time.Now()
		for _, b := range initial {
			f.scheduleEnd(b, now)
		}
	}
	if f.nft != nil {
		f.openNft(initial)
		initial = nil
		defer f.closeNft()
	}
	for {
		var j fwJob
		select {
		case <-ctx.Done():
			return
		case j = <-f.queue:
		default:
			if len(initial) > 0 {
				j, initial = fwJob{ban: initial[0]}, initial[1:]
				break
			}
			select {
			case <-ctx.Done():
				return
			case j = <-f.queue:
			}
		}
		f.do(ctx, j)
	}
}

// do runs the command of one job, if one is configured, and logs and
// counts the result.
func (f *Runner) do(ctx context.Context, j fwJob) {
	if f.nft != nil {
		f.doNft(j)
		return
	}
	cfg := f.cfg.Load()
	argv := cfg.Ban
	if j.unban {
		argv = cfg.Unban
	}
	if len(argv) == 0 {
		return
	}
	now := time.Now()
	if !j.unban && !j.ban.Active(now) {
		return // over while it waited: nothing to push
	}
	if j.expired && !cfg.UnbanExpired {
		return // unban_expired turned off by a reload since
	}
	argv = expandArgv(argv, j.ban, now)
	log := f.log.With("action", j.action(), "key", j.ban.Key.String(), "argv", argv)
	if j.expired {
		log = log.With("expired", true)
	}
	if f.observe() {
		log.Info("observe: would run firewall command")
		return
	}
	start := time.Now()
	out, err := runCommand(ctx, argv, cfg.Timeout)
	took := time.Since(start).Round(time.Millisecond)
	f.mu.Lock()
	c := f.counter(j)
	switch {
	case err == nil:
		c.ok++
	case errors.Is(err, context.DeadlineExceeded):
		c.timeout++
	default:
		c.failed++
	}
	f.mu.Unlock()
	switch {
	case err == nil:
		log.Debug("firewall command", "took", took)
	case ctx.Err() != nil:
		// shutting down: the bans are in the store, and pushed again at start
	default:
		log.Warn("firewall command failed", "err", err, "took", took, "output", string(out))
	}
}

// expandArgv substitutes the placeholders of a command for ban b at now:
// {ip} the address of the banned prefix, {prefix} the prefix (CIDR),
// {seconds} the whole seconds left (at least 1 for a ban in force; 0 once
// over), {family} "ip" or "ip6" (nftables' names of the address families).
func expandArgv(argv []string, b limiter.Ban, now time.Time) []string {
	secs := 0
	if left := b.Until.Sub(now); left > 0 {
		secs = int(math.Ceil(left.Seconds()))
	}
	family := "ip"
	if b.Key.Addr().Is6() {
		family = "ip6"
	}
	r := strings.NewReplacer("{ip}", b.Key.Addr().String(), "{prefix}", b.Key.String(),
		"{seconds}", strconv.Itoa(secs), "{family}", family)
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = r.Replace(a)
	}
	return out
}

// runCommand runs argv (no shell) within timeout: then it kills the
// command's whole process group and returns an error wrapping
// context.DeadlineExceeded. It returns the command's output (stdout and
// stderr, the first fwOutputMax bytes).
func runCommand(ctx context.Context, argv []string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out := &limitedBuffer{max: fwOutputMax}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = time.Second // a grandchild holding the output pipe
	killGroupOnCancel(cmd)
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.Bytes(), fmt.Errorf("killed after %v: %w", timeout, ctx.Err())
	}
	return out.Bytes(), err
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.TrimSpace(b.buf.Bytes())
}
