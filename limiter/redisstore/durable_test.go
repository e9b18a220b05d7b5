package redisstore

import (
	"context"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// TestRedisRestartFromOlderSnapshot: Redis restarts from a snapshot taken
// before a ban (the epoch key survives, the ban does not), as after a
// restart from an old dump.rdb or the promotion of a lagging replica.
// Missing in Redis is not an unban: both limiters keep enforcing the ban,
// write it back, and no hook reports it lifted. Before, the resync removed
// it on both limiters and ran their unban hooks.
func TestRedisRestartFromOlderSnapshot(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	a := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	b := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	var ha, hb hookLog
	a.SetBanHook(ha.fn)
	b.SetBanHook(hb.fn)
	admin := newStore(t, srv, Options{})
	ctx := context.Background()
	if err := admin.client.Save(ctx).Err(); err != nil { // the older snapshot: epoch, no ban
		t.Fatal(err)
	}
	p := netip.MustParsePrefix("198.51.100.0/24")
	addr := netip.MustParseAddr("198.51.100.9")
	if _, err := a.BanKey(time.Now(), p, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })

	srv.stop()
	waitFor(t, 2*time.Second, "SharedDown", func() bool { return a.Stats().SharedDown && b.Stats().SharedDown })
	srv.start() // loads the older dump.rdb
	for _, l := range []*limiter.Limiter{a, b} {
		waitFor(t, 5*time.Second, "reconciled", func() bool { s := l.Stats(); return !s.SharedDown && s.Unsynced == 0 })
		if l.Check(time.Now(), addr).Allowed {
			t.Fatal("a ban missing from the older snapshot was lifted")
		}
	}
	bans, err := admin.LoadBans(time.Time{})
	if err != nil || len(bans) != 1 || bans[0].Key != p {
		t.Fatalf("Redis holds %+v, %v; want the ban of %v written back", bans, err, p)
	}
	if a.Stats().Repaired+b.Stats().Repaired == 0 {
		t.Error("no repair counted")
	}
	for name, h := range map[string]*hookLog{"a": &ha, "b": &hb} {
		for _, c := range h.changes() {
			if c.Lifted {
				t.Errorf("%s's hook ran an unban: %+v", name, c)
			}
		}
	}
	// An explicit unban still lifts everywhere.
	if lifted, err := b.Unban(p); err != nil || !lifted {
		t.Fatalf("Unban = %v, %v", lifted, err)
	}
	waitFor(t, 2*time.Second, "unban seen by a", func() bool { return a.Check(time.Now(), addr).Allowed })
}

// TestRedisEvictedBanNotLifted: a ban record evicted (deleted behind the
// limiters' backs, as maxmemory-policy allkeys-lru would) is written back
// at the next resync, not taken for an unban.
func TestRedisEvictedBanNotLifted(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	a := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	var ha hookLog
	a.SetBanHook(ha.fn)
	admin := newStore(t, srv, Options{})
	p := netip.MustParsePrefix("192.0.2.44/32")
	if _, err := a.BanKey(time.Now(), p, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := admin.client.Del(ctx, admin.prefix+"ban:"+p.String()).Err(); err != nil {
		t.Fatal(err)
	}
	// A subscription gap makes a resync; the server comes back with its
	// data as it was (the epoch kept, the record gone).
	if err := admin.client.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	waitFor(t, 2*time.Second, "SharedDown", func() bool { return a.Stats().SharedDown })
	srv.start()
	waitFor(t, 5*time.Second, "reconciled", func() bool { s := a.Stats(); return !s.SharedDown && s.Unsynced == 0 })
	if a.Check(time.Now(), p.Addr()).Allowed {
		t.Fatal("the evicted ban was lifted")
	}
	for _, c := range ha.changes() {
		if c.Lifted {
			t.Errorf("hook ran an unban: %+v", c)
		}
	}
}

// TestRedisEvictionPolicy reads the server's maxmemory-policy.
func TestRedisEvictionPolicy(t *testing.T) {
	srv := startRedis(t)
	st := newStore(t, srv, Options{})
	if p, err := st.EvictionPolicy(context.Background()); err != nil || p != "noeviction" {
		t.Fatalf("EvictionPolicy = %q, %v; want noeviction (the default)", p, err)
	}
	if err := st.client.ConfigSet(context.Background(), "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	if p, err := st.EvictionPolicy(context.Background()); err != nil || p != "allkeys-lru" {
		t.Fatalf("EvictionPolicy = %q, %v; want allkeys-lru", p, err)
	}
}

// TestRedisOutageFailuresCharged: two limiters on one Redis; Redis stops;
// each settles failures of one key locally (3 each, under a shared budget
// of 4); Redis starts again: the failures are charged to the shared
// budget, which they spend: the key is banned on both. Before, they were
// forgotten, and one outage gave the key about twice its budget.
func TestRedisOutageFailuresCharged(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 4, Window: time.Hour, BanTime: time.Hour}
	a := newRedisLimiter(t, srv, cfg, Options{})
	b := newRedisLimiter(t, srv, cfg, Options{})
	addr := netip.MustParseAddr("203.0.113.70")
	other := netip.MustParseAddr("203.0.113.71")
	srv.stop()
	for _, l := range []*limiter.Limiter{a, b} {
		for i := 0; i < 3; i++ {
			now := time.Now()
			d := l.Attempt(now, addr)
			if !d.Allowed {
				t.Fatalf("guess %d refused during the outage: %+v", i, d)
			}
			if d := l.Failure(now, addr); !d.Allowed {
				t.Fatalf("failure %d banned locally: %+v", i, d)
			}
		}
		// Legitimate users first: one failure of another key is charged
		// as one, and leaves it its budget.
		if d := l.Attempt(time.Now(), other); d.Allowed {
			l.Success(time.Now(), other)
		}
	}
	if !a.Stats().SharedDown || !b.Stats().SharedDown {
		t.Fatal("the limiters did not notice the outage")
	}
	srv.start()
	for _, l := range []*limiter.Limiter{a, b} {
		waitFor(t, 10*time.Second, "reconciled", func() bool { s := l.Stats(); return !s.SharedDown && s.Unsynced == 0 })
	}
	for name, l := range map[string]*limiter.Limiter{"a": a, "b": b} {
		waitFor(t, 5*time.Second, "the ban on "+name, func() bool { return !l.Check(time.Now(), addr).Allowed })
		if !l.Check(time.Now(), other).Allowed {
			t.Fatalf("%s refuses the other key", name)
		}
	}
	if d := a.Attempt(time.Now(), other); !d.Allowed || d.Remaining != 3 {
		t.Fatalf("other key after the outage: %+v, want allowed with 3 left", d)
	}
}

// TestRedisEvictionNotUnban: a ban change queued while Redis did not
// answer is written from the table once it does; if the key's record was
// evicted meanwhile (a full table), that must not be written as a
// deletion — in Redis a deletion is an unban, published to every instance
// and left as a tombstone, so one instance's full table would lift the
// ban everywhere.
func TestRedisEvictionNotUnban(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	opt := Options{Timeout: 100 * time.Millisecond}
	a := newRedisLimiter(t, srv, limiter.Config{MaxTracked: 2}, opt)
	b := newRedisLimiter(t, srv, limiter.Config{}, opt)
	x, y, z := netip.MustParsePrefix("192.0.2.60/32"), netip.MustParsePrefix("192.0.2.61/32"), netip.MustParsePrefix("192.0.2.62/32")
	now := time.Now()
	if _, err := a.BanKey(now, x, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "x's ban seen by b", func() bool { return !b.Check(time.Now(), x.Addr()).Allowed })

	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer srv.cmd.Process.Signal(syscall.SIGCONT)
	if _, err := a.BanKey(now, x, 2*time.Hour, ""); err == nil { // queued
		t.Fatal("BanKey saved with Redis frozen")
	}
	if _, err := a.BanKey(now, y, 3*time.Hour, ""); err == nil { // queued
		t.Fatal("BanKey saved with Redis frozen")
	}
	if err := a.Reload(limiter.Config{MaxTracked: 1}); err != nil { // evicts x's record, ending first
		t.Fatal(err)
	}
	if s := a.Stats(); s.BansEvicted != 1 || s.Unsynced != 2 {
		t.Fatalf("a's Stats with Redis frozen = %+v, want x's ban evicted, two changes queued", s)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a back in step", func() bool { s := a.Stats(); return !s.SharedDown && s.Unsynced == 0 })
	// A later ban of a's reaches b after whatever a's queue published.
	if _, err := a.BanKey(time.Now(), z, 4*time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "z's ban seen by b", func() bool { return !b.Check(time.Now(), z.Addr()).Allowed })
	if b.Check(time.Now(), x.Addr()).Allowed {
		t.Error("x's ban lifted on b: a's eviction was written as an unban")
	}
	bans, err := newStore(t, srv, Options{}).LoadBans(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ban := range bans {
		found = found || ban.Key == x
	}
	if !found {
		t.Errorf("Redis holds %+v, without x's ban", bans)
	}
}
