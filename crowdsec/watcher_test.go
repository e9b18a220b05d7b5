package crowdsec

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWatcherQueue(t *testing.T) {
	w := NewWatcher(&Client{}, WatcherConfig{Queue: 3})
	now := time.Now()
	for i := range 5 {
		w.Push(Ban{Key: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), Until: now.Add(time.Hour), Count: i})
	}
	if s := w.Stats(); s.Queued != 3 || s.Dropped != 2 {
		t.Fatalf("stats %+v, want 3 queued, 2 dropped", s)
	}
	got := w.take(2)
	if len(got) != 2 || got[0].Count != 2 || got[1].Count != 3 {
		t.Fatalf("take(2) = %+v, want the bans counted 2 and 3 (the oldest kept)", got)
	}
	// A failed push puts them back in front; when Push has filled the queue
	// meanwhile, they are the oldest and go.
	w.Push(Ban{Count: 5})
	w.requeue(got)
	if s := w.Stats(); s.Queued != 3 || s.Dropped != 3 {
		t.Fatalf("after requeue: %+v, want 3 queued, 3 dropped", s)
	}
	var counts []int
	for _, b := range w.take(10) {
		counts = append(counts, b.Count)
	}
	if len(counts) != 3 || counts[0] != 3 || counts[1] != 4 || counts[2] != 5 {
		t.Errorf("queue holds counts %v, want [3 4 5]", counts)
	}
}

// TestWatcherNeverBlocks pushes to a Watcher whose LAPI never answers.
func TestWatcherNeverBlocks(t *testing.T) {
	f := newFakeLAPI(t)
	hang := make(chan struct{})
	f.mu.Lock()
	f.alertErr = func() int { <-hang; return 500 }
	f.mu.Unlock()
	c := f.client()
	c.Timeout = time.Minute
	w := NewWatcher(c, WatcherConfig{Queue: 16})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	start := time.Now()
	for i := range 10_000 {
		w.Push(Ban{Key: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32), Until: start.Add(time.Hour), Count: 1})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("10000 pushes took %v", d)
	}
	if s := w.Stats(); s.Queued > 16 || s.Dropped < 10_000-16-maxBatch {
		t.Errorf("stats %+v", s)
	}
	cancel() // Run ends though the POST hangs: its context is cancelled
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("Run did not return")
	}
	close(hang)
}

func TestWatcherPush(t *testing.T) {
	f := newFakeLAPI(t)
	var mu sync.Mutex
	failures := 2
	f.mu.Lock()
	f.alertErr = func() int {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return 500
		}
		return 0
	}
	f.mu.Unlock()
	c := f.client()
	w := NewWatcher(c, WatcherConfig{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)

	now := time.Now()
	w.Push(Ban{Key: mustPrefix("192.0.2.66/32"), Until: now.Add(2 * time.Hour), Count: 3, Reason: "budget"})
	w.Push(Ban{Key: mustPrefix("2001:db8:66::/48"), Until: now.Add(time.Hour), Count: 1})
	w.Push(Ban{Key: mustPrefix("::ffff:198.51.100.0/120"), Until: now.Add(time.Hour), Count: 1})
	w.Push(Ban{Key: mustPrefix("192.0.2.67/32"), Until: now.Add(-time.Second), Count: 1}) // over already
	waitUntil(t, func() bool { return w.Stats().Pushed == 3 })
	s := w.Stats()
	if s.PushFailed != 2 || s.Expired != 1 || s.Queued != 0 || s.LastError == nil || s.LastOK.IsZero() {
		t.Errorf("stats %+v", s)
	}

	f.mu.Lock()
	var alerts []Alert
	for _, a := range f.alerts {
		alerts = append(alerts, a...)
	}
	raw := strings.Join(f.raw, "\n")
	f.mu.Unlock()
	if len(alerts) != 3 {
		t.Fatalf("LAPI got %d alerts, want 3: %+v", len(alerts), alerts)
	}
	if !strings.Contains(raw, `"events":[]`) {
		t.Errorf("events not sent as []: %s", raw)
	}
	type want struct{ scope, value, ip, rng string }
	for i, w := range []want{
		{"Ip", "192.0.2.66", "192.0.2.66", ""},
		{"Range", "2001:db8:66::/48", "", "2001:db8:66::/48"},
		{"Range", "198.51.100.0/24", "", "198.51.100.0/24"},
	} {
		a := alerts[i]
		if a.Source.Scope != w.scope || a.Source.Value != w.value || a.Source.IP != w.ip || a.Source.Range != w.rng {
			t.Errorf("alert %d source %+v, want %+v", i, a.Source, w)
		}
		if len(a.Decisions) != 1 || a.Decisions[0].Scope != w.scope || a.Decisions[0].Value != w.value ||
			a.Decisions[0].Type != "ban" || a.Decisions[0].Scenario != Scenario || a.Scenario != Scenario {
			t.Errorf("alert %d decisions %+v", i, a.Decisions)
		}
	}
	a := alerts[0]
	d, err := ParseDuration(a.Decisions[0].Duration)
	if err != nil || d > 2*time.Hour || d < 2*time.Hour-time.Minute || d%time.Second != 0 {
		t.Errorf("duration %q, want ≈ 2h in whole seconds", a.Decisions[0].Duration)
	}
	if !strings.Contains(a.Message, "offence 3") || !strings.Contains(a.Message, "budget") || a.EventsCount != 3 {
		t.Errorf("message %q, events_count %d", a.Message, a.EventsCount)
	}
	if _, err := time.Parse(time.RFC3339, a.StartAt); err != nil {
		t.Errorf("start_at %q: %v", a.StartAt, err)
	}

	// The JWT expires: the Watcher's next push logs in again.
	logins := c.Logins()
	f.expire()
	w.Push(Ban{Key: mustPrefix("192.0.2.68/32"), Until: time.Now().Add(time.Hour), Count: 1})
	waitUntil(t, func() bool { return w.Stats().Pushed == 4 })
	if c.Logins() != logins+1 {
		t.Errorf("logins %d → %d, want one more", logins, c.Logins())
	}
}
