package crowdsec

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// Link is the running CrowdSec link of a daemon: its Bouncer and Watcher
// (either may be nil: that half is off), their goroutines, and the two
// functions that join them to the limiter (External, Hook). Make it with
// Settings.Start; a nil *Link is a link that is off, and every method is a
// no-op on it. Safe for concurrent use.
type Link struct {
	Bouncer *Bouncer // nil: the bouncer half is off
	Watcher *Watcher // nil: the watcher half is off

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start makes the Bouncer and Watcher of s (logging to log) and starts
// their goroutines. It returns nil when both halves are off. It does not
// wait for the LAPI: until the first poll succeeds the Bouncer enforces no
// decision, and a LAPI that cannot be reached is logged and counted
// (Stats), never fatal. Stop ends the goroutines.
func (s Settings) Start(log *slog.Logger) *Link {
	if !s.Enabled() {
		return nil
	}
	s.Bouncer.Logger, s.Watcher.Logger = log, log
	l := &Link{Bouncer: s.NewBouncer(), Watcher: s.NewWatcher()}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	if l.Bouncer != nil {
		l.wg.Go(func() { l.Bouncer.Run(ctx) })
	}
	if l.Watcher != nil {
		l.wg.Go(func() { l.Watcher.Run(ctx) })
	}
	log.Info("crowdsec link started", "lapi", s.url(), "bouncer", l.Bouncer != nil, "watcher", l.Watcher != nil,
		"poll_interval", s.Bouncer.Interval)
	return l
}

// url is the LAPI URL of whichever half is on.
func (s Settings) url() string {
	if s.BouncerClient != nil {
		return s.BouncerClient.URL
	}
	if s.WatcherClient != nil {
		return s.WatcherClient.URL
	}
	return ""
}

// Stop ends the Bouncer's and Watcher's goroutines and waits for them
// (a push in flight is bounded by the client's timeout).
func (l *Link) Stop() {
	if l == nil {
		return
	}
	l.cancel()
	l.wg.Wait()
}

// External returns the limiter's external ban source (Limiter.SetExternal)
// that enforces the Bouncer's decisions, or nil when the bouncer is off.
// The Ban it reports has Key the decision's network, Until its end and
// Reason "crowdsec: " and the decision's scenario.
func (l *Link) External() limiter.External {
	if l == nil || l.Bouncer == nil {
		return nil
	}
	b := l.Bouncer
	return func(addr netip.Addr, now time.Time) (limiter.Ban, bool) {
		d, ok := b.Lookup(addr, now)
		if !ok {
			return limiter.Ban{}, false
		}
		return limiter.Ban{Key: d.Prefix, Until: d.Until, Count: 1, Reason: Source + ": " + d.Scenario}, true
	}
}

// SetDecisionHook makes fn receive the new ban decisions of each poll of
// the Bouncer (Bouncer.SetHook): for a daemon to end the open sessions
// they cover, as its own bans do. It does nothing when the bouncer is off;
// nil removes the hook. Decisions of a poll made before the hook is set
// are not reported (at start, the daemon serves no session yet).
func (l *Link) SetDecisionHook(fn func(fresh []Decision)) {
	if l == nil || l.Bouncer == nil {
		return
	}
	l.Bouncer.SetHook(fn)
}

// Hook is the part of the limiter's ban hook that shares ftpguard's bans
// with the LAPI: each ban this instance makes (a spent budget, an admin
// ban) is pushed to the Watcher. Lifts are not (CrowdSec's decisions run
// out by themselves), nor bans learned from the shared store (the instance
// that made them pushed them), nor CrowdSec's own decisions (they never
// reach the hook: see External). It never blocks.
func (l *Link) Hook(c limiter.BanChange) {
	if l == nil || l.Watcher == nil || c.Lifted || c.Remote {
		return
	}
	l.Watcher.Push(Ban{Key: c.Ban.Key, Until: c.Ban.Until, Count: c.Ban.Count, Reason: c.Ban.Reason})
}

// Covering returns the Bouncer's decisions in force at now whose network
// overlaps p (for an admin asking to lift p, which only CrowdSec can lift),
// the most specific first.
func (l *Link) Covering(p netip.Prefix, now time.Time) []Decision {
	if l == nil || l.Bouncer == nil {
		return nil
	}
	var out []Decision
	for _, d := range l.Bouncer.List(now) {
		if d.Prefix.Overlaps(p) {
			out = append(out, d)
		}
	}
	return out
}
