package crowdsec

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Scenario is the scenario name under which ftpguard's bans reach the LAPI.
const Scenario = "ftpguard/ftp-bf"

// pushOrigin is the origin of the decisions the Watcher pushes: "crowdsec",
// a local detection, which bouncers enforce under their default origin
// filters.
const pushOrigin = "crowdsec"

// Defaults for WatcherConfig's zero fields.
const (
	DefaultQueue      = 1024
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = time.Minute
	maxBatch          = 100 // alerts per POST
)

// Ban is one of ftpguard's bans to share with the LAPI. The fields mean what
// limiter.Ban's do.
type Ban struct {
	Key    netip.Prefix // the banned network: a single address or a prefix
	Until  time.Time    // the ban applies while now < Until
	Count  int          // how many times Key has been banned, this ban included
	Reason string       // why, e.g. "budget"
}

// WatcherConfig holds a Watcher's settings. The zero value is usable.
type WatcherConfig struct {
	// Queue bounds the bans waiting to be sent (default DefaultQueue). When
	// it is full, Push drops the oldest.
	Queue int
	// MinBackoff and MaxBackoff bound the wait after a failed push, doubled
	// after each failure in a row (defaults 1s and 1m).
	MinBackoff, MaxBackoff time.Duration
	// Logger gets a line when pushes start failing and when they recover
	// (nil: no log).
	Logger *slog.Logger
}

// WatcherStats are a Watcher's counters, for metrics.
type WatcherStats struct {
	Queued      int       // bans waiting to be sent
	Pushed      uint64    // bans the LAPI accepted as alerts
	Dropped     uint64    // bans dropped because the queue was full (the oldest go)
	Expired     uint64    // bans that ended before they could be sent
	PushFailed  uint64    // failed POSTs (their bans were queued again)
	LastError   error     // the error of the latest failed push, nil if none yet
	LastErrorAt time.Time // when it happened
	LastOK      time.Time // the latest successful push, zero if none yet
}

// Watcher pushes ftpguard's bans to the LAPI as alerts with a ban decision
// each, so that CrowdSec's other bouncers enforce them. Push only queues;
// Run logs in and sends what is queued, in batches, retrying with backoff. A
// slow or failing LAPI never slows the caller of Push.
//
// Make one with NewWatcher. Push and Stats are safe for concurrent use with
// each other and with Run. A zero Watcher is not usable.
type Watcher struct {
	c   *Client
	cfg WatcherConfig
	now func() time.Time

	wake chan struct{} // buffered 1: Push's non-blocking nudge to Run

	mu    sync.Mutex // guards the fields below
	buf   []Ban      // ring of cfg.Queue bans
	head  int        // index of the oldest
	n     int        // how many are queued
	stats WatcherStats
}

// NewWatcher returns a Watcher that pushes through c (which needs URL,
// MachineID and Password). If c.Scenarios is empty, NewWatcher sets it to
// [Scenario], the scenario the watcher declares at login; call it before c
// is in use.
func NewWatcher(c *Client, cfg WatcherConfig) *Watcher {
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = []string{Scenario}
	}
	return &Watcher{c: c, cfg: cfg, now: time.Now, wake: make(chan struct{}, 1), buf: make([]Ban, cfg.Queue)}
}

// Push queues b to be sent. It never blocks: when the queue is full, the
// oldest queued ban is dropped (and counted).
func (w *Watcher) Push(b Ban) {
	w.mu.Lock()
	if w.n == len(w.buf) {
		w.head = (w.head + 1) % len(w.buf)
		w.n--
		w.stats.Dropped++
	}
	w.buf[(w.head+w.n)%len(w.buf)] = b
	w.n++
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take removes and returns up to max of the oldest queued bans.
func (w *Watcher) take(max int) []Ban {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := min(max, w.n)
	out := make([]Ban, k)
	for i := range out {
		out[i] = w.buf[w.head]
		w.buf[w.head] = Ban{}
		w.head = (w.head + 1) % len(w.buf)
	}
	w.n -= k
	return out
}

// requeue puts bans back at the front, in order, after a failed push. If
// Push filled the queue meanwhile they are the oldest, and are dropped.
func (w *Watcher) requeue(bans []Ban) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(bans) - 1; i >= 0; i-- {
		if w.n == len(w.buf) {
			w.stats.Dropped += uint64(i + 1)
			return
		}
		w.head = (w.head - 1 + len(w.buf)) % len(w.buf)
		w.buf[w.head] = bans[i]
		w.n++
	}
}

// Run sends queued bans until ctx ends. After a failed push it waits (1s,
// doubling up to MaxBackoff) and tries again; bans keep their place in the
// queue and are sent with the time they have left then.
func (w *Watcher) Run(ctx context.Context) {
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		for {
			bans := w.take(maxBatch)
			if len(bans) == 0 {
				break
			}
			now := w.now()
			alerts := make([]Alert, 0, len(bans))
			sent := bans[:0] // the bans that make alerts, requeued if the push fails
			for _, b := range bans {
				if a, ok := alertFor(b, now); ok {
					alerts = append(alerts, a)
					sent = append(sent, b)
				}
			}
			w.mu.Lock()
			w.stats.Expired += uint64(len(bans) - len(alerts))
			w.mu.Unlock()
			if len(alerts) == 0 {
				continue
			}
			_, err := w.c.PushAlerts(ctx, alerts)
			if err == nil {
				w.mu.Lock()
				w.stats.Pushed += uint64(len(alerts))
				w.stats.LastOK = w.now()
				w.mu.Unlock()
				if backoff > 0 && w.cfg.Logger != nil {
					w.cfg.Logger.Info("crowdsec: pushing alerts works again", "alerts", len(alerts))
				}
				backoff = 0
				continue
			}
			w.requeue(sent)
			w.mu.Lock()
			w.stats.PushFailed++
			w.stats.LastError, w.stats.LastErrorAt = err, w.now()
			w.mu.Unlock()
			if ctx.Err() != nil {
				return
			}
			if backoff == 0 {
				backoff = w.cfg.MinBackoff
				if w.cfg.Logger != nil {
					w.cfg.Logger.Warn("crowdsec: pushing alerts failed; retrying", "err", err, "bans", len(sent))
				}
			} else {
				backoff = min(2*backoff, w.cfg.MaxBackoff)
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// Stats returns the Watcher's counters.
func (w *Watcher) Stats() WatcherStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stats
	s.Queued = w.n
	return s
}

// alertFor makes the alert that shares b at now, with a ban decision for
// the time b has left; ok is false if b has less than a second left.
func alertFor(b Ban, now time.Time) (Alert, bool) {
	left := b.Until.Sub(now).Round(time.Second)
	if left < time.Second || !b.Key.IsValid() {
		return Alert{}, false
	}
	p := b.Key.Masked()
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	src := AlertSource{Scope: "Range", Value: p.String(), Range: p.String()}
	if p.IsSingleIP() {
		src = AlertSource{Scope: "Ip", Value: p.Addr().String(), IP: p.Addr().String()}
	}
	reason := b.Reason
	if reason == "" {
		reason = "too many failed logins"
	}
	count := max(b.Count, 1)
	ts := now.UTC().Format(time.RFC3339)
	return Alert{
		Scenario:        Scenario,
		ScenarioHash:    "",
		ScenarioVersion: "1",
		Message:         fmt.Sprintf("ftpguard banned %s for %s: offence %d (%s)", src.Value, formatDuration(left), count, reason),
		EventsCount:     int32(min(count, 1<<31-1)),
		StartAt:         ts,
		StopAt:          ts,
		Capacity:        0,
		Leakspeed:       "0s",
		Simulated:       false,
		Remediation:     true,
		Events:          []json.RawMessage{},
		Source:          src,
		Decisions: []AlertDecision{{
			Duration: formatDuration(left),
			Origin:   pushOrigin,
			Scenario: Scenario,
			Scope:    src.Scope,
			Type:     "ban",
			Value:    src.Value,
		}},
	}, true
}
