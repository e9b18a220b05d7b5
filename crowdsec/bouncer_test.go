package crowdsec

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// dec formats one decision of a stream answer.
func dec(id int, scope, typ, value, duration, origin string) string {
	return fmt.Sprintf(`{"duration":%q,"id":%d,"origin":%q,"scenario":"test","scope":%q,"type":%q,"value":%q}`,
		duration, id, origin, scope, typ, value)
}

func answer(news, deleted []string) string {
	list := func(l []string) string {
		if l == nil {
			return "null"
		}
		return "[" + strings.Join(l, ",") + "]"
	}
	return `{"new":` + list(news) + `,"deleted":` + list(deleted) + `}`
}

// TestBouncerSteps drives a Bouncer through a table of polls against the
// fake LAPI; the clock is the test's.
func TestBouncerSteps(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		name        string
		at          time.Duration // clock when the poll is answered
		code        int           // 0: 200
		body        string
		noPoll      bool // only look up, at at
		wantStartup bool
		ban         map[string]string // address → the banned prefix, "" for none
		wantIgnored uint64
		wantCount   int
		wantFresh   string // the decisions the hook got from this poll, "" for no call
	}
	steps := []step{
		{name: "startup", wantStartup: true, body: answer([]string{
			dec(1, "Ip", "ban", "192.0.2.1", "1h", "cscli"),
			dec(2, "Range", "ban", "10.0.0.0/8", "2h", "crowdsec"),
			dec(3, "Ip", "ban", "2001:db8::1", "1h", "CAPI"),
			dec(4, "range", "ban", "2001:db8:1::/48", "1h", "lists"),
			dec(5, "Ip", "captcha", "192.0.2.5", "1h", "cscli"),        // not a ban: ignored
			dec(6, "Country", "ban", "FR", "1h", "cscli"),              // scope not enforced: ignored
			dec(7, "Ip", "ban", "not-an-ip", "1h", "cscli"),            // ignored
			dec(8, "Ip", "ban", "192.0.2.8", "soon", "cscli"),          // bad duration: ignored
			dec(9, "IP", "BAN", "192.0.2.9", "1h", "cscli"),            // case-insensitive
			dec(10, "Ip", "ban", "192.0.2.0/24", "1h", "cscli"),        // a range in scope Ip: ignored
			dec(11, "Ip", "ban", "::ffff:198.51.100.1", "1h", "cscli"), // read as IPv4
			dec(12, "Ip", "ban", "192.0.2.12", "-1s", "cscli"),         // already expired: skipped
			dec(13, "Range", "ban", "10.1.0.0/16", "30m", "cscli"),     // inside 10/8
			dec(14, "Range", "ban", "::ffff:172.16.0.0/108", "1h", "cscli"),
		}, nil), ban: map[string]string{
			"192.0.2.1":          "192.0.2.1/32",
			"::ffff:192.0.2.1":   "192.0.2.1/32",
			"10.200.0.1":         "10.0.0.0/8",
			"10.1.2.3":           "10.1.0.0/16", // the most specific
			"2001:db8::1":        "2001:db8::1/128",
			"2001:db8::2":        "",
			"2001:db8:1:ffff::9": "2001:db8:1::/48",
			"fe80::1%eth0":       "",
			"192.0.2.5":          "",
			"192.0.2.8":          "",
			"192.0.2.9":          "192.0.2.9/32",
			"192.0.2.12":         "",
			"198.51.100.1":       "198.51.100.1/32",
			"172.31.0.1":         "172.16.0.0/12",
			"::ffff:172.20.0.1":  "172.16.0.0/12",
			"2001:db8:1:0::ffff": "2001:db8:1::/48",
			"11.0.0.1":           "",
		}, wantIgnored: 5, wantCount: 8,
			wantFresh: "192.0.2.1/32 10.0.0.0/8 2001:db8::1/128 2001:db8:1::/48 192.0.2.9/32 198.51.100.1/32 10.1.0.0/16 172.16.0.0/12"},
		{name: "delta lifts and adds", at: 10 * time.Second, body: answer(
			[]string{dec(20, "Ip", "ban", "192.0.2.20", "1h", "cscli")},
			[]string{dec(1, "Ip", "ban", "192.0.2.1", "-10ms", "cscli"), dec(99, "Ip", "ban", "192.0.2.99", "-1s", "cscli")}),
			ban:         map[string]string{"192.0.2.1": "", "192.0.2.20": "192.0.2.20/32", "10.0.0.1": "10.0.0.0/8"},
			wantIgnored: 5, wantCount: 8, wantFresh: "192.0.2.20/32"},
		{name: "expiry without a poll", at: 31 * time.Minute, noPoll: true,
			ban: map[string]string{"10.1.2.3": "10.0.0.0/8", "192.0.2.20": "192.0.2.20/32"}, wantIgnored: 5, wantCount: 8},
		{name: "500 keeps the table", at: 32 * time.Minute, code: 500, body: `{"message":"x"}`,
			ban: map[string]string{"10.1.2.3": "10.0.0.0/8", "192.0.2.20": "192.0.2.20/32"}, wantIgnored: 5, wantCount: 8},
		{name: "garbage keeps the table", at: 33 * time.Minute, wantStartup: true, body: `{"new":[{"id":`,
			ban: map[string]string{"192.0.2.20": "192.0.2.20/32"}, wantIgnored: 5, wantCount: 8},
		// The hook gets only the decision it did not hold before (not the
		// range, held since the first startup).
		{name: "startup after failures replaces the table", at: 34 * time.Minute, wantStartup: true, body: answer(
			[]string{dec(2, "Range", "ban", "10.0.0.0/8", "1h26m", "crowdsec"), dec(30, "Ip", "ban", "192.0.2.30", "1h", "cscli")}, nil),
			ban:         map[string]string{"10.1.2.3": "10.0.0.0/8", "192.0.2.20": "", "2001:db8::1": "", "192.0.2.30": "192.0.2.30/32"},
			wantIgnored: 5, wantCount: 2, wantFresh: "192.0.2.30/32"},
		{name: "a decision held already is not fresh", at: 34*time.Minute + time.Second, body: answer(
			[]string{dec(30, "Ip", "ban", "192.0.2.30", "1h", "cscli")}, nil),
			ban: map[string]string{"192.0.2.30": "192.0.2.30/32"}, wantIgnored: 5, wantCount: 2},
		{name: "null lists", at: 35 * time.Minute, body: answer(nil, nil),
			ban: map[string]string{"10.1.2.3": "10.0.0.0/8"}, wantIgnored: 5, wantCount: 2},
		{name: "the range ends", at: 2 * time.Hour, noPoll: true, ban: map[string]string{"10.1.2.3": ""}, wantIgnored: 5, wantCount: 2},
		{name: "expired entries leave the count at the next poll", at: 2*time.Hour + time.Second, body: answer(nil, nil),
			ban: map[string]string{"10.1.2.3": ""}, wantIgnored: 5, wantCount: 0},
	}

	f := newFakeLAPI(t)
	b := NewBouncer(f.client(), BouncerConfig{})
	var now time.Time
	b.now = func() time.Time { return now }
	var fresh []string // the hook's calls since the last step
	b.SetHook(func(ds []Decision) {
		var l []string
		for _, d := range ds {
			l = append(l, d.Prefix.String())
		}
		fresh = append(fresh, strings.Join(l, " "))
	})
	if _, ok := b.Lookup(netip.MustParseAddr("192.0.2.1"), t0); ok {
		t.Fatal("a Bouncer that never polled bans")
	}
	for _, s := range steps {
		now = t0.Add(s.at)
		if !s.noPoll {
			code := s.code
			if code == 0 {
				code = 200
			}
			f.setStream(func(bool) (int, string) { return code, s.body })
			err := b.Poll(context.Background())
			if (err != nil) != (code != 200 || strings.HasPrefix(s.body, `{"new":[{"id":`)) {
				t.Errorf("%s: Poll: %v", s.name, err)
			}
			f.mu.Lock()
			startup := f.startups[len(f.startups)-1]
			f.mu.Unlock()
			if startup != s.wantStartup && s.code == 0 {
				t.Errorf("%s: startup=%v, want %v", s.name, startup, s.wantStartup)
			}
		}
		if got := strings.Join(fresh, " | "); got != s.wantFresh {
			t.Errorf("%s: hook got %q, want %q", s.name, got, s.wantFresh)
		}
		fresh = nil
		for a, want := range s.ban {
			d, ok := b.Lookup(netip.MustParseAddr(a), now)
			got := ""
			if ok {
				got = d.Prefix.String()
			}
			if got != want {
				t.Errorf("%s: Lookup(%s) = %q, want %q", s.name, a, got, want)
			}
		}
		st := b.Stats()
		if st.Ignored != s.wantIgnored || st.Decisions != s.wantCount {
			t.Errorf("%s: stats %+v, want %d ignored, %d decisions", s.name, st, s.wantIgnored, s.wantCount)
		}
	}
	st := b.Stats()
	if st.PollsFailed != 2 || st.PollsOK != 6 || st.LastError == nil || !st.LastOK.Equal(t0.Add(2*time.Hour+time.Second)) {
		t.Errorf("final stats %+v", st)
	}
}

func TestBouncerOriginsAndList(t *testing.T) {
	f := newFakeLAPI(t)
	f.setStream(func(bool) (int, string) {
		return 200, answer([]string{
			dec(1, "Ip", "ban", "192.0.2.1", "1h", "cscli"),
			dec(2, "Ip", "ban", "192.0.2.2", "1h", "CAPI"),
			dec(3, "Ip", "ban", "192.0.2.3", "1h", "lists"),
			dec(4, "Range", "ban", "192.0.2.0/24", "2h", "capi"),
			dec(5, "Ip", "ban", "192.0.2.1", "3h", "cscli"), // a second decision on one address: the longer counts
			dec(6, "Ip", "ban", "2001:db8::1", "1h", "cscli"),
		}, nil)
	})
	b := NewBouncer(f.client(), BouncerConfig{Origins: []string{"CSCLI", "capi"}, Scopes: []string{"IP", "Range"}})
	if err := b.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var got []string
	for _, d := range b.List(now) {
		got = append(got, fmt.Sprintf("%s %s %d %v", d.Prefix, d.Origin, d.ID, d.Until.Sub(now).Round(time.Hour)))
	}
	want := []string{"192.0.2.0/24 capi 4 2h0m0s", "192.0.2.1/32 cscli 5 3h0m0s", "192.0.2.2/32 CAPI 2 1h0m0s", "2001:db8::1/128 cscli 6 1h0m0s"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("List:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d, ok := b.Lookup(netip.MustParseAddr("192.0.2.3"), now); !ok || d.Prefix.String() != "192.0.2.0/24" {
		t.Errorf("192.0.2.3 (its own ban from lists is filtered out) = %+v %v, want the /24", d, ok)
	}
	if s := b.Stats(); s.Ignored != 1 {
		t.Errorf("ignored %d, want 1 (origin lists)", s.Ignored)
	}
	// Only ranges: addresses are ignored.
	b = NewBouncer(f.client(), BouncerConfig{Scopes: []string{"range"}})
	if err := b.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(b.List(now)); n != 1 {
		t.Errorf("range-only bouncer lists %d bans, want 1", n)
	}
}

// TestBouncerRun checks that Run polls at once and then every interval,
// keeps going through failures, and returns when ctx ends.
func TestBouncerRun(t *testing.T) {
	f := newFakeLAPI(t)
	var mu sync.Mutex
	fail := true
	f.setStream(func(startup bool) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return 503, `{"message":"starting"}`
		}
		return 200, answer([]string{dec(1, "Ip", "ban", "192.0.2.1", "1h", "cscli")}, nil)
	})
	b := NewBouncer(f.client(), BouncerConfig{Interval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	waitUntil(t, func() bool { return b.Stats().PollsFailed >= 2 })
	mu.Lock()
	fail = false
	mu.Unlock()
	waitUntil(t, func() bool { _, ok := b.Lookup(netip.MustParseAddr("192.0.2.1"), time.Now()); return ok })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Every poll up to the first success is a startup poll; deltas after.
	seenDelta := false
	for i, s := range f.startups {
		if !s {
			seenDelta = true
		} else if seenDelta {
			t.Errorf("poll %d is a startup poll after deltas: %v", i, f.startups)
		}
	}
	if !strings.HasPrefix(f.agents[0], "ftpguard/") {
		t.Errorf("User-Agent %q, want ftpguard/VERSION", f.agents[0])
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestBouncerConcurrent runs Lookup and List on many goroutines while polls
// replace the table (for the race detector).
func TestBouncerConcurrent(t *testing.T) {
	f := newFakeLAPI(t)
	var mu sync.Mutex
	n := 0
	f.setStream(func(bool) (int, string) {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		return 200, answer([]string{dec(k, "Ip", "ban", fmt.Sprintf("192.0.2.%d", k%250), "1h", "cscli"),
			dec(1000+k, "Range", "ban", fmt.Sprintf("10.%d.0.0/16", k%250), "1h", "cscli")},
			[]string{dec(k-1, "Ip", "ban", fmt.Sprintf("192.0.2.%d", (k-1)%250), "-1s", "cscli")})
	})
	b := NewBouncer(f.client(), BouncerConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				b.Lookup(netip.AddrFrom4([4]byte{10, byte(i), byte(g), 1}), time.Now())
				if i%100 == 0 {
					b.List(time.Now())
					b.Stats()
				}
			}
		}()
	}
	for range 50 {
		if err := b.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	if _, ok := b.Lookup(netip.MustParseAddr("10.50.1.2"), time.Now()); !ok {
		t.Error("10.50.0.0/16 not banned after 50 polls")
	}
}

func BenchmarkLookup(b *testing.B) {
	bn := NewBouncer(&Client{}, BouncerConfig{})
	now := time.Now()
	for i := range 100_000 {
		d := Decision{ID: int64(i), Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 7}), 32), Until: now.Add(time.Hour)}
		bn.table[tableKey{d.ID, d.Prefix}] = d
	}
	for i, bits := range []int{8, 12, 16, 20, 24} {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100 + byte(i), 0, 0, 0}), bits)
		bn.table[tableKey{int64(-i), p}] = Decision{Prefix: p, Until: now.Add(time.Hour)}
	}
	bn.publishLocked()
	addrs := []netip.Addr{netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("0.1.2.7"), netip.MustParseAddr("::ffff:198.51.100.1"), netip.MustParseAddr("2001:db8::1")}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			bn.Lookup(addrs[i%len(addrs)], now)
			i++
		}
	})
}
