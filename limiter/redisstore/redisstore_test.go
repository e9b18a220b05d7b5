package redisstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/internal/storetest"
)

// redisServer is a throwaway redis-server on a loopback port, without
// persistence, killed at the end of the test.
type redisServer struct {
	tb   testing.TB
	path string
	port int
	dir  string
	cmd  *exec.Cmd
}

// startRedis starts a redis-server for tb. A missing redis-server skips
// the test on a developer's machine, but fails it in CI (CI non-empty) or
// with FTPGUARD_REQUIRE_DAEMONS=1: these tests are the only proof of the
// shared store, and there a missing daemon is a failure, never a skip.
func startRedis(tb testing.TB) *redisServer {
	tb.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		msg := fmt.Sprintf("redis-server is needed by the shared-store tests (%v): install it, e.g. apt-get install redis-server", err)
		if os.Getenv("CI") != "" || os.Getenv("FTPGUARD_REQUIRE_DAEMONS") == "1" {
			tb.Fatal(msg + " (CI or FTPGUARD_REQUIRE_DAEMONS=1: a missing daemon fails)")
		}
		tb.Skip(msg + " (skipped; set FTPGUARD_REQUIRE_DAEMONS=1 to fail instead)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &redisServer{tb: tb, path: path, port: port, dir: tb.TempDir()}
	s.start()
	tb.Cleanup(s.stop)
	return s
}

func (s *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// start runs the server (again) on its port and waits until it answers.
func (s *redisServer) start() {
	s.tb.Helper()
	s.cmd = exec.Command(s.path, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir)
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line == "+PONG\r\n" {
				return
			}
		}
		if time.Now().After(deadline) {
			s.stop()
			s.tb.Fatalf("redis-server on port %d did not answer", s.port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop kills the server, if it runs.
func (s *redisServer) stop() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// noLeaks checks, after every other cleanup of t, that no goroutine
// started during t is left.
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

var quiet = slog.New(slog.DiscardHandler)

// newStore returns a Store on srv, closed at the end of tb.
func newStore(tb testing.TB, srv *redisServer, opt Options) *Store {
	tb.Helper()
	opt.URL = srv.url()
	if opt.Logger == nil {
		opt.Logger = quiet
	}
	st, err := New(opt)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// watched is a Store whose subscription state the test can see: up once
// the limiter has handled EventResync (it then knows the store's bans and
// gets every later one), down from EventLost.
type watched struct {
	*Store
	up atomic.Bool
}

// Subscribe passes the events on to fn, then records the state they give.
func (w *watched) Subscribe(ctx context.Context, fn func(limiter.BanEvent)) {
	w.Store.Subscribe(ctx, func(ev limiter.BanEvent) {
		if ev.Kind == limiter.EventLost {
			w.up.Store(false)
		}
		fn(ev)
		if ev.Kind == limiter.EventResync {
			w.up.Store(true)
		}
	})
}

// newRedisLimiter returns a Limiter on its own Store on srv, once its
// subscription is up; both are closed at the end of tb.
func newRedisLimiter(tb testing.TB, srv *redisServer, cfg limiter.Config, opt Options) *limiter.Limiter {
	tb.Helper()
	st := &watched{Store: newStore(tb, srv, opt)}
	l, err := limiter.New(cfg, st)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() }) // before st.Close: cleanups run last first
	waitFor(tb, 2*time.Second, "subscription up", func() bool { return st.up.Load() && !l.Stats().SharedDown })
	return l
}

// newUsers returns a Users for cfg.
func newUsers(t testing.TB, cfg limiter.UserConfig) *limiter.Users {
	t.Helper()
	u, err := limiter.NewUsers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// waitFor polls cond every 100µs until it holds, and returns how long that
// took; it fails tb after limit.
func waitFor(tb testing.TB, limit time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			tb.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return time.Since(start)
}

// stepNow is a wall-clock base truncated to the millisecond that the
// shared store keeps, so that local and shared bans compare equal.
func stepNow() time.Time { return time.Now().Truncate(time.Millisecond) }

// TestRedisDecidesLikeLocal runs one table of steps on a local limiter and
// on a shared one (alone on its Redis) and wants the same decisions.
func TestRedisDecidesLikeLocal(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 3, Window: 3 * time.Minute, BanTime: time.Hour, BanFactor: 2, MaxBanTime: 3 * time.Hour}
	local := storetest.NewLimiter(t, cfg, nil)
	shared := newRedisLimiter(t, srv, cfg, Options{})
	base := stepNow()
	a := netip.MustParseAddr("192.0.2.7")
	steps := []struct {
		at time.Duration
		ev storetest.Event
	}{
		{0, storetest.EvAttempt}, {0, storetest.EvAttempt}, {0, storetest.EvAttempt}, {0, storetest.EvAttempt}, // the 4th is busy
		{0, storetest.EvFailure}, {0, storetest.EvRelease}, {0, storetest.EvSuccess},
		{0, storetest.EvAttempt}, {0, storetest.EvPenalize}, {0, storetest.EvFailure}, // ban 1
		{time.Second, storetest.EvAttempt}, {time.Second, storetest.EvFailure}, // banned: no token
		{time.Hour + time.Second, storetest.EvAttempt}, {time.Hour + time.Second, storetest.EvFailure},
		{time.Hour + 2*time.Second, storetest.EvAttempt}, {time.Hour + 2*time.Second, storetest.EvFailure},
		{time.Hour + time.Minute + 3*time.Second, storetest.EvAttempt}, // a token came back
		{time.Hour + time.Minute + 3*time.Second, storetest.EvFailure},
		{time.Hour + time.Minute + 4*time.Second, storetest.EvGuess}, // ban 2: 2h
		{3*time.Hour + time.Minute + 5*time.Second, storetest.EvGuess},
		{3*time.Hour + time.Minute + 5*time.Second, storetest.EvGuess},
		{3*time.Hour + time.Minute + 5*time.Second, storetest.EvGuess}, // ban 3: capped at 3h
	}
	do := func(l *limiter.Limiter, now time.Time, ev storetest.Event) limiter.Decision {
		switch ev {
		case storetest.EvAttempt:
			return l.Attempt(now, a)
		case storetest.EvFailure:
			return l.Failure(now, a)
		case storetest.EvPenalize:
			return l.Penalize(now, a)
		case storetest.EvSuccess:
			l.Success(now, a)
		case storetest.EvRelease:
			l.Release(now, a)
		case storetest.EvGuess:
			if d := l.Attempt(now, a); !d.Allowed {
				return d
			}
			return l.Failure(now, a)
		}
		return limiter.Decision{}
	}
	bans := 0
	for i, st := range steps {
		now := base.Add(st.at)
		want, got := do(local, now, st.ev), do(shared, now, st.ev)
		if got.Allowed != want.Allowed || got.Busy != want.Busy || got.NewBan != want.NewBan ||
			got.Remaining != want.Remaining || got.Ban.Count != want.Ban.Count ||
			!got.Ban.Until.Equal(want.Ban.Until) || !got.Ban.Forget.Equal(want.Ban.Forget) {
			t.Fatalf("step %d (%v at %v): shared %+v, local %+v", i, st.ev, st.at, got, want)
		}
		if got.NewBan {
			bans++
		}
	}
	if bans != 3 {
		t.Fatalf("%d bans, want 3", bans)
	}
	if s := shared.Stats(); s.StoreErrors != 0 || s.SharedDown {
		t.Fatalf("shared Stats = %+v, error %v", s, shared.LastStoreError())
	}
}

// TestRedisBudgetSpread spreads one key's failures over two limiters: they
// ban at exactly Failures in all, and the other one enforces the ban (the
// time it took is logged, not asserted: no timing thresholds in tests). The
// store calls get a generous timeout: this test is not about timeouts, and a
// loaded machine made the default 200 ms fail a load of the bans.
func TestRedisBudgetSpread(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 5}
	opt := Options{Timeout: 5 * time.Second}
	lims := []*limiter.Limiter{newRedisLimiter(t, srv, cfg, opt), newRedisLimiter(t, srv, cfg, opt)}
	addr := netip.MustParseAddr("2001:db8:1:2::99")
	now := time.Now()
	for i := range 5 {
		l := lims[i%2]
		if d := l.Attempt(now, addr); !d.Allowed || d.Remaining != 4-i {
			t.Fatalf("attempt %d on limiter %d: %+v", i+1, i%2, d)
		}
		d := l.Failure(now, addr)
		if i < 4 && (!d.Allowed || d.Remaining != 4-i) || i == 4 && (d.Allowed || !d.NewBan || d.Ban.Count != 1) {
			t.Fatalf("failure %d on limiter %d: %+v", i+1, i%2, d)
		}
		if i == 4 {
			if got := d.Ban.Until.Sub(d.Ban.Since); got != limiter.DefaultBanTime {
				t.Fatalf("ban lasts %v, want %v", got, limiter.DefaultBanTime)
			}
		}
	}
	other := lims[1]
	took := waitFor(t, 2*time.Second, "ban seen by the other limiter", func() bool { return !other.Check(time.Now(), addr).Allowed })
	t.Logf("budget ban by limiter 0 enforced by limiter 1 after %v", took)
	if d := other.Attempt(time.Now(), addr); d.Allowed || d.NewBan || d.Ban.Count != 1 {
		t.Fatalf("attempt on the other limiter after the ban: %+v", d)
	}
	for i, l := range lims {
		if s := l.Stats(); s.StoreErrors != 0 || s.SharedDown {
			t.Fatalf("limiter %d: Stats = %+v, error %v", i, s, l.LastStoreError())
		}
	}
	if n := lims[0].Stats().BansCreated + lims[1].Stats().BansCreated; n != 1 {
		t.Fatalf("%d bans created, want 1", n)
	}
}

// TestRedisAdminBanPropagates: BanKey and Unban on one limiter reach the
// other within 100ms, and the escalation count follows.
func TestRedisAdminBanPropagates(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	a := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	b := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	net24 := netip.MustParsePrefix("198.51.100.0/24")
	addr := netip.MustParseAddr("198.51.100.9")
	if _, err := a.BanKey(time.Now(), net24, 0, ""); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 2*time.Second, "admin ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })
	t.Logf("admin ban by a enforced by b after %v", took) // logged, not asserted: no timing thresholds in tests
	// b unbans: a lets the network in again.
	if lifted, err := b.Unban(net24); err != nil || !lifted {
		t.Fatalf("Unban = %v, %v", lifted, err)
	}
	took = waitFor(t, 2*time.Second, "unban seen by a", func() bool { return a.Check(time.Now(), addr).Allowed })
	t.Logf("unban by b seen by a after %v", took)
	// Escalation: a bans, b bans again: the second ban counts 2.
	if _, err := a.BanKey(time.Now(), net24, time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "second ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })
	ban, err := b.BanKey(time.Now(), net24, 0, "")
	if err != nil || ban.Count != 2 || ban.Until.Sub(ban.Since) != 2*limiter.DefaultBanTime {
		t.Fatalf("BanKey on b = %+v, %v; want count 2 for %v", ban, err, 2*limiter.DefaultBanTime)
	}
	waitFor(t, 2*time.Second, "escalated ban seen by a", func() bool { return a.Check(time.Now(), addr).Ban.Count == 2 })
}

// TestRedisEscalationShared: ban 1 made by a's budget, ban 2 by b's lasts
// BanTime × BanFactor.
func TestRedisEscalationShared(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 2, BanTime: time.Hour, BanFactor: 3}
	a := newRedisLimiter(t, srv, cfg, Options{})
	b := newRedisLimiter(t, srv, cfg, Options{})
	addr := netip.MustParseAddr("203.0.113.5")
	now := time.Now()
	guess := func(l *limiter.Limiter, now time.Time) limiter.Decision {
		if d := l.Attempt(now, addr); !d.Allowed {
			return d
		}
		return l.Failure(now, addr)
	}
	guess(a, now)
	if d := guess(a, now); !d.NewBan || d.Ban.Count != 1 {
		t.Fatalf("ban 1 on a: %+v", d)
	}
	waitFor(t, 2*time.Second, "ban 1 seen by b", func() bool { return !b.Check(now, addr).Allowed })
	later := now.Add(time.Hour + time.Second) // ban 1 is over
	if d := guess(b, later); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("first guess on b after ban 1: %+v", d)
	}
	d := guess(b, later)
	if !d.NewBan || d.Ban.Count != 2 || d.Ban.Until.Sub(d.Ban.Since) != 3*time.Hour {
		t.Fatalf("ban 2 on b: %+v, want count 2 for 3h", d)
	}
	waitFor(t, 2*time.Second, "ban 2 seen by a", func() bool { return a.Check(later, addr).Ban.Count == 2 })
}

// TestRedisPendingExpires: the places held by a limiter that dies before
// settling are freed after AttemptTTL.
func TestRedisPendingExpires(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 3}
	addr := netip.MustParseAddr("192.0.2.99")
	now := time.Now()

	st := newStore(t, srv, Options{AttemptTTL: time.Minute})
	dead, err := limiter.New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if d := dead.Attempt(now, addr); !d.Allowed {
			t.Fatalf("attempt %d: %+v", i+1, d)
		}
	}
	dead.Close() // dies with three attempts in flight
	st.Close()

	b := newRedisLimiter(t, srv, cfg, Options{AttemptTTL: time.Minute})
	if d := b.Attempt(now.Add(59*time.Second), addr); !d.Busy {
		t.Fatalf("attempt while the dead limiter's places are held: %+v, want Busy", d)
	}
	if d := b.Attempt(now.Add(61*time.Second), addr); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("attempt after AttemptTTL: %+v, want allowed with 2 left", d)
	}
	// b's own place is released by b's Success, not by anyone else's.
	b.Success(now.Add(62*time.Second), addr)
	for i := range 3 {
		if d := b.Attempt(now.Add(63*time.Second), addr); !d.Allowed || d.Remaining != 2-i {
			t.Fatalf("attempt %d after Success: %+v", i+1, d)
		}
	}
}

// TestRedisDownAndReconcile stops Redis under two limiters: decisions go on
// locally and fast, the errors are counted; once Redis is back, the ban
// made meanwhile is written and reaches the other limiter.
func TestRedisDownAndReconcile(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 3}
	a := newRedisLimiter(t, srv, cfg, Options{})
	b := newRedisLimiter(t, srv, cfg, Options{})
	addr := netip.MustParseAddr("192.0.2.200")

	srv.stop()
	now := time.Now()
	for i := range 3 {
		start := time.Now()
		if d := a.Attempt(now, addr); !d.Allowed {
			t.Fatalf("attempt %d with Redis down: %+v", i+1, d)
		}
		d := a.Failure(now, addr)
		t.Logf("guess %d with Redis down took %v (store timeout %v)", i+1, time.Since(start), DefaultTimeout)
		if i < 2 && !d.Allowed || i == 2 && (!d.NewBan || d.Ban.Count != 1) {
			t.Fatalf("failure %d with Redis down: %+v", i+1, d)
		}
	}
	start := time.Now()
	for range 1000 {
		if a.Check(now, addr).Allowed {
			t.Fatal("Check allows the key banned while Redis was down")
		}
	}
	t.Logf("Check with Redis down: %v each", time.Since(start)/1000)
	waitFor(t, 2*time.Second, "SharedDown", func() bool { return a.Stats().SharedDown })
	s := a.Stats()
	if s.StoreErrors == 0 || s.Unsynced != 1 || a.LastStoreError() == nil {
		t.Fatalf("Stats with Redis down = %+v, last error %v", s, a.LastStoreError())
	}
	t.Logf("with Redis down: %d store errors, last: %v", s.StoreErrors, a.LastStoreError())
	if !b.Check(now, addr).Allowed {
		t.Fatal("b knows a's ban while Redis is down")
	}

	srv.start()
	took := waitFor(t, 5*time.Second, "a reconciled", func() bool { s := a.Stats(); return !s.SharedDown && s.Unsynced == 0 })
	t.Logf("a back in step %v after Redis restarted", took)
	waitFor(t, 5*time.Second, "a's ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })
	bans, err := newStore(t, srv, Options{}).LoadBans(time.Time{})
	if err != nil || len(bans) != 1 || bans[0].Key != a.Key(addr) || bans[0].Count != 1 {
		t.Fatalf("Redis holds %+v, %v; want a's ban of %v", bans, err, a.Key(addr))
	}
	// Shared budgets again: the next key's failures spread over both.
	other := netip.MustParseAddr("192.0.2.201")
	waitFor(t, 5*time.Second, "b reconciled", func() bool { return !b.Stats().SharedDown })
	for i, l := range []*limiter.Limiter{a, b, a} {
		l.Attempt(time.Now(), other)
		if d := l.Failure(time.Now(), other); d.NewBan != (i == 2) {
			t.Fatalf("failure %d after the restart: %+v", i+1, d)
		}
	}
}

// TestRedisSlow freezes Redis (SIGSTOP) so that calls time out while the
// subscription stays up: a guess waits at most the timeout once, then
// decisions are local at once; when Redis thaws the probe writes the ban
// made meanwhile and the other limiter gets it.
func TestRedisSlow(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 2}
	opt := Options{Timeout: 100 * time.Millisecond}
	a := newRedisLimiter(t, srv, cfg, opt)
	b := newRedisLimiter(t, srv, cfg, opt)
	addr := netip.MustParseAddr("192.0.2.150")

	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer srv.cmd.Process.Signal(syscall.SIGCONT)
	now := time.Now()
	start := time.Now()
	if d := a.Attempt(now, addr); !d.Allowed {
		t.Fatalf("attempt with Redis frozen: %+v", d)
	}
	first := time.Since(start)
	if first < opt.Timeout { // it asked Redis and waited; how much longer is logged below, not asserted
		t.Errorf("first attempt with Redis frozen took %v, want at least the timeout %v", first, opt.Timeout)
	}
	start = time.Now()
	a.Failure(now, addr)
	a.Attempt(now, addr)
	d := a.Failure(now, addr)
	t.Logf("guesses after the circuit opened took %v", time.Since(start))
	if !d.NewBan {
		t.Fatalf("second local failure: %+v, want a ban", d)
	}
	t.Logf("Redis frozen: first attempt waited %v, then local; stats %+v", first, a.Stats())
	if s := a.Stats(); !s.SharedDown || s.StoreErrors == 0 || s.Unsynced != 1 {
		t.Fatalf("Stats with Redis frozen = %+v", s)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 5*time.Second, "a's ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })
	t.Logf("ban written and propagated %v after Redis thawed", took)
	waitFor(t, 5*time.Second, "a back in step", func() bool { s := a.Stats(); return !s.SharedDown && s.Unsynced == 0 })
}

// TestRedisRestartEmpty: Redis restarts without its data; the limiters
// keep the bans they knew and write them back, rather than take them for
// unbans.
func TestRedisRestartEmpty(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	a := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	b := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	p := netip.MustParsePrefix("2001:db8:77::/48")
	addr := netip.MustParseAddr("2001:db8:77::1")
	if _, err := a.BanKey(time.Now(), p, 0, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })
	srv.stop()
	waitFor(t, 2*time.Second, "SharedDown", func() bool { return a.Stats().SharedDown && b.Stats().SharedDown })
	srv.start() // empty
	for _, l := range []*limiter.Limiter{a, b} {
		waitFor(t, 5*time.Second, "reconciled", func() bool { s := l.Stats(); return !s.SharedDown && s.Unsynced == 0 })
		if l.Check(time.Now(), addr).Allowed {
			t.Fatal("a ban was dropped when Redis came back empty")
		}
	}
	bans, err := newStore(t, srv, Options{}).LoadBans(time.Time{})
	if err != nil || len(bans) != 1 || bans[0].Key != p {
		t.Fatalf("Redis holds %+v, %v; want the ban of %v written back", bans, err, p)
	}
}

// TestRedisMissedUnban: an unban published while a limiter's subscription
// is broken is applied by the resync that follows.
func TestRedisMissedUnban(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	a := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	stB := &watched{Store: newStore(t, srv, Options{})}
	b, err := limiter.New(limiter.Config{}, stB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	waitFor(t, 2*time.Second, "b subscribed", func() bool { return stB.up.Load() })
	p := netip.MustParsePrefix("203.0.113.0/24")
	addr := netip.MustParseAddr("203.0.113.1")
	if _, err := a.BanKey(time.Now(), p, 0, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "ban seen by b", func() bool { return !b.Check(time.Now(), addr).Allowed })

	// Break b's subscription only, then unban from a while b is deaf.
	ctx := context.Background()
	list, err := stB.client.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name=ftpguard-"+stB.id+" ") && strings.Contains(line, " sub=1 ") {
			id := strings.TrimPrefix(strings.Fields(line)[0], "id=")
			if err := stB.client.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d subscriptions of b, want 1:\n%s", killed, list)
	}
	waitFor(t, 2*time.Second, "b lost its subscription", func() bool { return b.Stats().SharedDown })
	if lifted, err := a.Unban(p); err != nil || !lifted {
		t.Fatalf("Unban = %v, %v", lifted, err)
	}
	if b.Check(time.Now(), addr).Allowed {
		t.Fatal("b got the unban through a broken subscription")
	}
	took := waitFor(t, 5*time.Second, "unban applied by b's resync", func() bool { return b.Check(time.Now(), addr).Allowed })
	t.Logf("missed unban applied %v after it was made", took)
}

// TestRedisFailClosed: with FailClosed, a Redis outage refuses connections
// (but not allowlisted ones) until Redis is back.
func TestRedisFailClosed(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{FailClosed: true, Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	l := newRedisLimiter(t, srv, cfg, Options{})
	addr, inside := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("10.1.2.3")
	if d := l.Check(time.Now(), addr); !d.Allowed {
		t.Fatalf("Check with Redis up: %+v", d)
	}
	srv.stop()
	waitFor(t, 2*time.Second, "SharedDown", func() bool { return l.Stats().SharedDown })
	if d := l.Check(time.Now(), addr); d.Allowed || !d.StoreDown || d.Ban.Key.IsValid() {
		t.Fatalf("Check with Redis down: %+v, want refused with StoreDown", d)
	}
	if d := l.Attempt(time.Now(), addr); d.Allowed || !d.StoreDown {
		t.Fatalf("Attempt with Redis down: %+v, want refused with StoreDown", d)
	}
	if d := l.Check(time.Now(), inside); !d.Allowed {
		t.Fatalf("Check of an allowlisted address with Redis down: %+v", d)
	}
	srv.start()
	waitFor(t, 5*time.Second, "Redis back", func() bool { return l.Check(time.Now(), addr).Allowed })
}

// TestRedisHardCap hammers one key from two limiters at once: however the
// calls interleave, at most Failures guesses get through, and one ban is made.
func TestRedisHardCap(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	const failures = 5
	cfg := limiter.Config{Failures: failures}
	opt := Options{Timeout: 5 * time.Second} // -race on 2 cores: no local fallback here
	lims := []*limiter.Limiter{newRedisLimiter(t, srv, cfg, opt), newRedisLimiter(t, srv, cfg, opt)}
	addr := netip.MustParseAddr("192.0.2.77")
	var through, newBans, busy atomic.Int64
	var wg sync.WaitGroup
	for _, l := range lims {
		for range 8 {
			wg.Go(func() {
				for range 200 {
					now := time.Now()
					d := l.Attempt(now, addr)
					switch {
					case d.Allowed:
						through.Add(1)
						d = l.Failure(now, addr)
					case d.Busy:
						busy.Add(1)
						continue
					}
					if d.NewBan {
						newBans.Add(1)
					}
					if d.Ban.Key.IsValid() {
						return
					}
				}
			})
		}
	}
	wg.Wait()
	t.Logf("%d guesses through, %d busy refusals, %d bans", through.Load(), busy.Load(), newBans.Load())
	if n := through.Load(); n > failures {
		t.Fatalf("%d guesses got through, want ≤ %d", n, failures)
	}
	if n := newBans.Load(); n != 1 {
		t.Fatalf("%d bans made, want 1", n)
	}
	for i, l := range lims {
		if s := l.Stats(); s.StoreErrors != 0 {
			t.Fatalf("limiter %d: %d store errors (%v)", i, s.StoreErrors, l.LastStoreError())
		}
	}
}

// TestRedisStore checks the limiter.Store side of Store: later bans win,
// LoadBans leaves out forgotten ones, DeleteBan keeps nothing.
func TestRedisStore(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	st := newStore(t, srv, Options{Prefix: "test:"})
	now := time.Now().Truncate(time.Millisecond)
	p1, p2 := netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")
	b1 := limiter.Ban{Key: p1, Until: now.Add(time.Hour), Count: 2, Reason: "admin|x", Since: now, Forget: now.Add(2 * time.Hour)}
	b2 := limiter.Ban{Key: p2, Until: now.Add(time.Minute), Count: 1, Reason: limiter.ReasonBudget, Since: now, Forget: now.Add(time.Hour)}
	for _, b := range []limiter.Ban{b1, b2} {
		if err := st.SaveBan(b); err != nil {
			t.Fatal(err)
		}
	}
	older := b1
	older.Since, older.Count = now.Add(-time.Minute), 1
	if err := st.SaveBan(older); err != nil {
		t.Fatal(err)
	}
	bans, err := st.LoadBans(time.Time{})
	if err != nil || len(bans) != 2 || !bans[0].Until.Equal(b2.Until) || bans[1].Count != 2 || bans[1].Reason != "admin|x" {
		t.Fatalf("LoadBans = %+v, %v", bans, err)
	}
	if bans, _ := st.LoadBans(now.Add(90 * time.Minute)); len(bans) != 1 || bans[0].Key != p1 {
		t.Fatalf("LoadBans after b2's Forget = %+v", bans)
	}
	if err := st.DeleteBan(p1); err != nil {
		t.Fatal(err)
	}
	if bans, _ := st.LoadBans(time.Time{}); len(bans) != 1 || bans[0].Key != p2 {
		t.Fatalf("LoadBans after DeleteBan = %+v", bans)
	}
	if err := st.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{URL: "http://x"}); err == nil {
		t.Fatal("New accepts an http URL")
	}
}

// BenchmarkRedisAttemptFailure measures a failed guess with a shared
// budget: Attempt and Failure, two round trips to a loopback Redis.
func BenchmarkRedisAttemptFailure(b *testing.B) {
	srv := startRedis(b)
	l := newRedisLimiter(b, srv, limiter.Config{Failures: 1 << 30, Window: time.Hour}, Options{})
	addr := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		if d := l.Attempt(now, addr); !d.Allowed {
			b.Fatalf("Attempt: %+v", d)
		}
		if d := l.Failure(now, addr); !d.Allowed {
			b.Fatalf("Failure: %+v", d)
		}
	}
	if n := l.Stats().StoreErrors; n != 0 {
		b.Fatalf("%d store errors: %v", n, l.LastStoreError())
	}
}

// BenchmarkRedisBanPropagation measures the time from BanKey on one limiter
// to the ban being enforced by another's Check (ns/propagation).
func BenchmarkRedisBanPropagation(b *testing.B) {
	srv := startRedis(b)
	cfg := limiter.Config{MaxTracked: 1 << 20}
	from := newRedisLimiter(b, srv, cfg, Options{})
	to := newRedisLimiter(b, srv, cfg, Options{})
	var total time.Duration
	i := 0
	for b.Loop() {
		i++
		addr := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		start := time.Now()
		if _, err := from.BanKey(start, netip.PrefixFrom(addr, 32), time.Hour, ""); err != nil {
			b.Fatal(err)
		}
		for to.Check(time.Now(), addr).Allowed {
			if time.Since(start) > 2*time.Second {
				b.Fatalf("ban %d not propagated within 2s", i)
			}
			time.Sleep(20 * time.Microsecond) // leave the 2 cores to Redis and the subscriber
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(i), "ns/propagation")
}

// TestUsersSharedBudget: two limiter.Users on one Redis share each username's
// budget: failures through either count for both, whatever the length of
// the name; other names and known-good pairs are untouched; tokens come
// back over Window; with Redis down each decides by its own budget.
func TestUsersSharedBudget(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.UserConfig{Failures: 4, Window: time.Hour}
	a, b := newUsers(t, cfg), newUsers(t, cfg)
	a.SetShared(newStore(t, srv, Options{}))
	b.SetShared(newStore(t, srv, Options{}))
	now := time.Now()
	key := func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 32) }
	good := netip.MustParsePrefix("192.0.2.1/32")
	long := strings.Repeat("x", 4096)
	a.Success(now, "alice", good)
	for _, name := range []string{"alice", long} {
		for i := range 4 {
			u := []*limiter.Users{a, b}[i%2]
			if d := u.Check(now, name, key(i)); d.Throttled || d.Remaining != 4-i {
				t.Fatalf("%.8s: guess %d: Check = %+v, want %d left", name, i, d, 4-i)
			}
			if d := u.Failure(now, name, key(i)); d.Remaining != 3-i || d.Throttled != (i == 3) {
				t.Fatalf("%.8s: guess %d: Failure = %+v, want %d left", name, i, d, 3-i)
			}
		}
		for _, u := range []*limiter.Users{a, b} {
			if d := u.Check(now, name, key(9)); !d.Throttled || d.Remaining != 0 {
				t.Errorf("%.8s after 4 failures over two instances: %+v, want throttled", name, d)
			}
		}
	}
	if d := b.Check(now, "bob", key(9)); d.Throttled || d.Remaining != 4 {
		t.Errorf("another name: %+v", d)
	}
	if d := a.Check(now, "alice", good); d.Throttled || !d.KnownGood {
		t.Errorf("the owner's known-good address: %+v", d)
	}
	if d := b.Check(now.Add(15*time.Minute), "alice", key(9)); d.Throttled || d.Remaining != 1 {
		t.Errorf("a quarter of Window later: %+v, want 1 token back", d)
	}
	srv.stop()
	// Each instance's own budget took its own two failures of alice.
	if d := a.Check(now, "alice", key(9)); d.Throttled || d.Remaining != 2 {
		t.Errorf("Redis down, a: %+v, want its own 2 left", d)
	}
	if d := b.Failure(now, "alice", key(9)); d.Remaining != 1 {
		t.Errorf("Redis down, b: %+v, want its own 1 left", d)
	}
}

// TestSharedUsersCircuit: the username budgets a limiter.Limiter hands out go
// through its circuit: a failed call opens it, and while it is open the
// calls fail at once instead of waiting for Redis.
func TestSharedUsersCircuit(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	l := newRedisLimiter(t, srv, limiter.Config{Failures: 5, Window: time.Minute, BanTime: time.Minute}, Options{Timeout: 300 * time.Millisecond})
	su := l.SharedUsers()
	if su == nil {
		t.Fatal("no SharedUsers on a Redis limiter")
	}
	now := time.Now()
	if n, err := su.UserFailure(context.Background(), "carol", now, 3, time.Hour); err != nil || n != 2 {
		t.Fatalf("UserFailure = %d, %v; want 2", n, err)
	}
	srv.stop()
	if _, err := su.UserRemaining(context.Background(), "carol", now, 3, time.Hour); err == nil {
		t.Fatal("UserRemaining with Redis stopped: no error")
	}
	if !l.Stats().SharedDown {
		t.Fatal("a failed user-budget call left the circuit closed")
	}
	start := time.Now()
	if _, err := su.UserRemaining(context.Background(), "carol", now, 3, time.Hour); !errors.Is(err, limiter.ErrSharedDown) {
		t.Fatalf("with the circuit open: %v, want limiter.ErrSharedDown", err)
	}
	t.Logf("with the circuit open the call took %v", time.Since(start))
	m, _ := limiter.New(limiter.Config{Failures: 1, Window: time.Minute, BanTime: time.Minute}, limiter.NewMemoryStore())
	defer m.Close()
	if m.SharedUsers() != nil {
		t.Error("SharedUsers on a memory store")
	}
}

// hookLog records the changes a ban hook receives.
type hookLog struct {
	mu  sync.Mutex
	got []limiter.BanChange
}

func (h *hookLog) fn(c limiter.BanChange) {
	h.mu.Lock()
	h.got = append(h.got, c)
	h.mu.Unlock()
}

func (h *hookLog) changes() []limiter.BanChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]limiter.BanChange(nil), h.got...)
}

// TestBanHookShared: a ban made by one limiter reaches the other's hook
// as Remote (once), and so does its unban; the maker's hook sees its own
// ban once, not again when it comes back from the store.
func TestBanHookShared(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	a := newRedisLimiter(t, srv, limiter.Config{Failures: 1}, Options{})
	b := newRedisLimiter(t, srv, limiter.Config{}, Options{})
	var ha, hb hookLog
	a.SetBanHook(ha.fn)
	b.SetBanHook(hb.fn)
	addr := netip.MustParseAddr("203.0.113.9")
	now := stepNow()
	if d := a.Attempt(now, addr); d.Allowed {
		a.Failure(now, addr)
	}
	waitFor(t, 2*time.Second, "ban reaches b's hook", func() bool { return len(hb.changes()) == 1 })
	if c := hb.changes()[0]; !c.Remote || c.Lifted || c.Ban.Key != netip.PrefixFrom(addr, 32) {
		t.Fatalf("b's hook got %+v, want the remote ban of %v", c, addr)
	}
	if _, err := a.Unban(netip.PrefixFrom(addr, 32)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "unban reaches b's hook", func() bool { return len(hb.changes()) == 2 })
	if c := hb.changes()[1]; !c.Remote || !c.Lifted {
		t.Fatalf("b's hook got %+v, want the remote unban", c)
	}
	time.Sleep(50 * time.Millisecond) // a's own ban would have come back by now
	got := ha.changes()
	if len(got) != 2 || got[0].Remote || got[0].Lifted || got[1].Remote || !got[1].Lifted {
		t.Fatalf("a's hook got %+v, want its own ban then its unban", got)
	}
}

func TestConformance(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	storetest.Conformance(t, func(t *testing.T) limiter.Store { return newStore(t, srv, Options{Prefix: "conformance:"}) })
}

// TestSharedWaitForPlace: with budgets shared on Redis, a guess of one
// limiter that finds the key's only place held by another limiter is
// queued (Verdict.Wait). The other limiter's settle cannot signal it: it
// finds the place on its next try (the proxy's poll), and a settle of its
// own limiter does signal the next waiter.
func TestSharedWaitForPlace(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.Config{Failures: 1}
	addr := netip.MustParseAddr("192.0.2.77")
	a := newRedisLimiter(t, srv, cfg, Options{})
	b := newRedisLimiter(t, srv, cfg, Options{})
	now := time.Now()

	held, v := a.Begin(now, addr, "", nil)
	if !v.OK() {
		t.Fatalf("a's guess: %+v", v)
	}
	w1, v := b.Begin(now, addr, "", nil)
	if !v.Busy || v.Wait == nil {
		t.Fatalf("b's guess while a holds the place: %+v, want Busy and queued", v)
	}
	wait1 := v.Wait
	w2, v := b.Begin(now, addr, "", nil)
	if !v.Busy || v.Wait == nil {
		t.Fatalf("b's second guess: %+v, want Busy and queued", v)
	}
	wait2 := v.Wait
	held.Settle(now, limiter.OutcomeSuccess)
	select {
	case <-wait1:
		t.Fatal("another limiter's settle signalled b's waiter")
	default:
	}
	w1, v = w1.Retry(now) // the poll
	if !v.OK() {
		t.Fatalf("b's first waiter after a's success: %+v, want OK", v)
	}
	if w2, v = w2.Retry(now); !v.Busy || v.Wait != wait2 {
		t.Fatalf("b's second waiter: %+v, want Busy at its place", v)
	}
	select { // signalled when the first left the queue: drained
	case <-wait2:
	default:
	}
	w1.Settle(now, limiter.OutcomeSuccess)
	select {
	case <-wait2:
	default:
		t.Fatal("b's own settle did not signal its next waiter")
	}
	if w2, v = w2.Retry(now); !v.OK() {
		t.Fatalf("b's second waiter after b's success: %+v, want OK", v)
	}
	w2.Settle(now, limiter.OutcomeSuccess)
	if st := b.Stats(); st.Waiting != 0 {
		t.Fatalf("waiters left: %d", st.Waiting)
	}
}

// TestUsersSharedReset: spellings of one name share one budget in Redis,
// and Users.Reset on one instance, under any spelling, clears the shared
// budget for all (before it, a reset on one instance left the fleet's
// budget spent).
func TestUsersSharedReset(t *testing.T) {
	noLeaks(t)
	srv := startRedis(t)
	cfg := limiter.UserConfig{Failures: 2, Window: time.Hour}
	a, b := newUsers(t, cfg), newUsers(t, cfg)
	a.SetShared(newStore(t, srv, Options{}))
	b.SetShared(newStore(t, srv, Options{}))
	now := time.Now()
	key := netip.MustParsePrefix("198.51.100.1/32")
	a.Failure(now, "ALICE", key)
	b.Failure(now, "Alice", key)
	if d := a.Check(now, "alice", key); !d.Throttled {
		t.Fatalf("after ALICE on a and Alice on b: %+v, want alice throttled", d)
	}
	if found, err := b.Reset("ａｌｉｃｅ"); !found || err != nil {
		t.Fatalf("Reset = %v, %v", found, err)
	}
	for i, u := range []*limiter.Users{a, b} {
		if d := u.Check(now, "alice", key); d.Throttled || d.Remaining != 2 {
			t.Errorf("instance %d after Reset: %+v, want the full budget", i, d)
		}
	}
	if found, err := b.Reset("nobody"); found || err != nil {
		t.Errorf("Reset(nobody) = %v, %v", found, err)
	}
}
