//go:build integration

package crowdsec

// The real-LAPI test: Debian's crowdsec, run by internal/lapitest as a
// Local API only, on a free loopback port (no traffic leaves 127.0.0.1).
//
//	go test -tags integration -race -count=1 -v -run LAPI ./crowdsec/

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/lapitest"
)

// waitFor polls cond every 5ms until it holds or timeout passes, and
// returns how long it took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func TestLAPI(t *testing.T) {
	l := lapitest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	const interval = time.Second
	b := NewBouncer(&Client{URL: l.URL, APIKey: l.Key}, BouncerConfig{Interval: interval})
	wg.Add(1)
	go func() { defer wg.Done(); b.Run(ctx) }()
	waitFor(t, 10*time.Second, "first poll", func() bool { return b.Stats().PollsOK > 0 })

	lookup := func(s string) (Decision, bool) {
		return b.Lookup(netip.MustParseAddr(s), time.Now())
	}
	bound := interval + 2*time.Second // one interval, and slack for a loaded machine

	t.Run("bouncer", func(t *testing.T) {
		l.Cscli(t, "decisions", "add", "--ip", "127.0.0.77", "--duration", "10m")
		lat := waitFor(t, bound, "ip ban seen", func() bool { _, ok := lookup("127.0.0.77"); return ok })
		t.Logf("cscli decisions add --ip 127.0.0.77 → Lookup reports it after %v (poll interval %v)", lat.Round(time.Millisecond), interval)
		d, _ := lookup("::ffff:127.0.0.77")
		if want := netip.MustParsePrefix("127.0.0.77/32"); d.Prefix != want || d.Origin != "cscli" || d.Scope != "Ip" {
			t.Errorf("IPv4-mapped lookup = %+v, want %v from cscli", d, want)
		}
		if left := time.Until(d.Until); left < 9*time.Minute || left > 10*time.Minute {
			t.Errorf("ban has %v left, want ≈ 10m", left)
		}

		l.Cscli(t, "decisions", "add", "--range", "10.9.0.0/16", "--duration", "10m")
		l.Cscli(t, "decisions", "add", "--ip", "2001:db8::7", "--duration", "10m")
		lat = waitFor(t, bound, "range and IPv6 bans seen", func() bool {
			_, ok1 := lookup("10.9.200.3")
			_, ok2 := lookup("2001:db8::7")
			return ok1 && ok2
		})
		t.Logf("range 10.9.0.0/16 and 2001:db8::7 seen after %v", lat.Round(time.Millisecond))
		if d, _ := lookup("10.9.200.3"); d.Prefix != netip.MustParsePrefix("10.9.0.0/16") || d.Scope != "Range" {
			t.Errorf("range lookup = %+v", d)
		}
		for _, a := range []string{"10.10.0.1", "2001:db8::8", "127.0.0.78"} {
			if d, ok := lookup(a); ok {
				t.Errorf("Lookup(%s) = %+v, want no ban", a, d)
			}
		}
		if n := len(b.List(time.Now())); n != 3 {
			t.Errorf("List has %d bans, want 3: %+v", n, b.List(time.Now()))
		}

		l.Cscli(t, "decisions", "delete", "--ip", "127.0.0.77")
		lat = waitFor(t, bound, "ban lifted", func() bool { _, ok := lookup("127.0.0.77"); return !ok })
		t.Logf("cscli decisions delete --ip 127.0.0.77 → lifted after %v", lat.Round(time.Millisecond))
		if _, ok := lookup("10.9.0.1"); !ok {
			t.Error("deleting 127.0.0.77 lifted the range too")
		}
	})

	t.Run("watcher", func(t *testing.T) {
		c := &Client{URL: l.URL, MachineID: "ftpguard", Password: l.Password}
		w := NewWatcher(c, WatcherConfig{})
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()

		type listed struct {
			Decisions []struct {
				Duration, Origin, Scenario, Scope, Type, Value string
			}
			Message string
		}
		find := func(value string) (d struct{ Duration, Scope, Scenario, Message string }, ok bool) {
			var alerts []listed
			if err := json.Unmarshal([]byte(l.Cscli(t, "decisions", "list", "-o", "json")), &alerts); err != nil {
				t.Fatalf("decisions list -o json: %v", err)
			}
			for _, a := range alerts {
				for _, x := range a.Decisions {
					if x.Value == value && x.Type == "ban" {
						return struct{ Duration, Scope, Scenario, Message string }{x.Duration, x.Scope, x.Scenario, a.Message}, true
					}
				}
			}
			return d, false
		}

		start := time.Now()
		w.Push(Ban{Key: netip.MustParsePrefix("127.0.0.66/32"), Until: start.Add(2 * time.Hour), Count: 3, Reason: "budget"})
		w.Push(Ban{Key: netip.MustParsePrefix("10.66.0.0/16"), Until: start.Add(time.Hour), Count: 1, Reason: "budget"})
		lat := waitFor(t, 10*time.Second, "alert pushed", func() bool { return w.Stats().Pushed == 2 })
		t.Logf("Watcher.Push(127.0.0.66 for 2h, count 3) → LAPI accepted the alert after %v (logins %d)", lat.Round(time.Millisecond), c.Logins())
		d, ok := find("127.0.0.66")
		t.Logf("ban → visible in cscli decisions list after %v", time.Since(start).Round(time.Millisecond))
		if !ok {
			t.Fatal("127.0.0.66 not in cscli decisions list")
		}
		dur, err := ParseDuration(d.Duration)
		if err != nil || dur < 2*time.Hour-time.Minute || dur > 2*time.Hour {
			t.Errorf("duration %q, want ≈ 2h", d.Duration)
		}
		if d.Scope != "Ip" || d.Scenario != Scenario || !strings.Contains(d.Message, "offence 3") {
			t.Errorf("listed %+v", d)
		}
		t.Logf("listed: duration %s, scope %s, scenario %s, message %q", d.Duration, d.Scope, d.Scenario, d.Message)
		if d, ok := find("10.66.0.0/16"); !ok || d.Scope != "Range" {
			t.Errorf("range ban listed %v as %+v", ok, d)
		}
		// ftpguard's own bouncer learns the pushed bans too (origin crowdsec).
		lat = waitFor(t, bound, "pushed ban seen by the bouncer", func() bool { _, ok := lookup("10.66.1.1"); return ok })
		t.Logf("pushed range seen by the Bouncer after a further %v", lat.Round(time.Millisecond))
		if s := w.Stats(); s.PushFailed != 0 || s.Dropped != 0 {
			t.Errorf("watcher stats %+v", s)
		}
	})

	if s := b.Stats(); s.PollsFailed != 0 || s.LastError != nil {
		t.Errorf("bouncer stats %+v", s)
	}

	t.Run("outage", func(t *testing.T) {
		l.Stop(t)
		failed := b.Stats().PollsFailed
		waitFor(t, bound, "a failed poll", func() bool { return b.Stats().PollsFailed > failed })
		t.Logf("LAPI down: poll failed with %v", b.Stats().LastError)
		if _, ok := lookup("10.9.1.1"); !ok {
			t.Error("the range was forgotten while the LAPI is down")
		}
		l.Start(t)
		ok := b.Stats().PollsOK
		lat := waitFor(t, bound+time.Second, "a poll after restart", func() bool { return b.Stats().PollsOK > ok })
		t.Logf("LAPI back: a poll succeeded %v after it answered", lat.Round(time.Millisecond))
		l.Cscli(t, "decisions", "add", "--ip", "127.0.0.88", "--duration", "10m")
		waitFor(t, bound, "a ban after the outage", func() bool { _, ok := lookup("127.0.0.88"); return ok })
		if _, ok := lookup("10.9.1.1"); !ok {
			t.Error("the range is gone after the outage")
		}
	})
}
