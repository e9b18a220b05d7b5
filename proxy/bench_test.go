package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// BenchmarkNOOP measures one control round trip (NOOP → 200) directly to
// the in-process fake daemon and through the proxy; the difference is the
// proxy's added latency. Reported: ns/op for each, and the added p50/p99.
func BenchmarkNOOP(b *testing.B) {
	f := startFakeB(b)
	p := startProxyB(b, f.ln.Addr().String())
	roundTrips := func(addr string, n int) []time.Duration {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		r := ftpproto.NewReplyReader(c, 4096, 1<<20)
		r.ReadReply()
		c.Write([]byte("USER u\r\nPASS good\r\n"))
		r.ReadReply()
		r.ReadReply()
		lat := make([]time.Duration, n)
		for i := range lat {
			start := time.Now()
			c.Write([]byte("NOOP\r\n"))
			if rep, err := r.ReadReply(); err != nil || rep.Code != 200 {
				b.Fatalf("NOOP: %v %v", rep, err)
			}
			lat[i] = time.Since(start)
		}
		return lat
	}
	b.ResetTimer()
	direct := roundTrips(f.ln.Addr().String(), b.N)
	proxied := roundTrips(p.addr, b.N)
	b.StopTimer()
	pct := func(v []time.Duration, q float64) time.Duration {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[int(q*float64(len(s)-1))]
	}
	b.ReportMetric(float64(pct(direct, 0.5).Nanoseconds()), "direct-p50-ns")
	b.ReportMetric(float64(pct(proxied, 0.5).Nanoseconds()), "proxied-p50-ns")
	b.ReportMetric(float64((pct(proxied, 0.5) - pct(direct, 0.5)).Nanoseconds()), "added-p50-ns")
	b.ReportMetric(float64((pct(proxied, 0.99) - pct(direct, 0.99)).Nanoseconds()), "added-p99-ns")
}

// BenchmarkIdleSessions opens FTPGUARD_IDLE_SESSIONS (default 2000)
// logged-in idle sessions through the proxy and reports the heap and stack
// the proxy holds per session (the fake daemon's and the clients' share is
// measured without the proxy and subtracted).
func BenchmarkIdleSessions(b *testing.B) {
	n := 2000
	if v, err := fmt.Sscan(os.Getenv("FTPGUARD_IDLE_SESSIONS"), &n); v != 1 || err != nil {
		n = 2000
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	// Four descriptors a session live in this process (client, proxy ×2,
	// fake): raise the soft limit to the hard one, and fit n under it.
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	if fit := int(lim.Cur-1000) / 4; n > fit {
		b.Logf("%d sessions do not fit in %d descriptors; measuring %d", n, lim.Cur, fit)
		n = fit
	}
	f := startFakeB(b)
	p := startProxyB(b, f.ln.Addr().String())
	open := func(addr string) ([]net.Conn, uint64) {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, 0, n)
		for i := 0; i < n; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatalf("session %d: %v", i, err)
			}
			r := ftpproto.NewReplyReader(c, 512, 4096)
			r.ReadReply()
			c.Write([]byte("USER u\r\nPASS good\r\n"))
			r.ReadReply()
			r.ReadReply()
			conns = append(conns, c)
		}
		time.Sleep(200 * time.Millisecond)
		runtime.GC()
		runtime.ReadMemStats(&after)
		return conns, (after.HeapInuse + after.StackInuse) - (before.HeapInuse + before.StackInuse)
	}
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.Close()
		}
		time.Sleep(300 * time.Millisecond)
	}
	for i := 0; i < b.N; i++ {
		cs, direct := open(f.ln.Addr().String())
		closeAll(cs)
		cs, proxied := open(p.addr)
		closeAll(cs)
		// Through the proxy the fake and the clients hold what they held
		// directly; the rest is the proxy's.
		b.ReportMetric(float64(int64(proxied)-int64(direct))/float64(n), "proxy-bytes/session")
		b.ReportMetric(float64(n), "sessions")
	}
}

func startFakeB(b *testing.B) *fakeFTPD {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f := &fakeFTPD{ln: ln}
	f.wg.Add(1)
	go f.serve()
	b.Cleanup(func() { ln.Close(); f.wg.Wait() })
	return f
}

func startProxyB(b *testing.B, backend string) *testProxy {
	lim, _ := newBenchLimiter()
	srv, err := New(Config{Backend: backend, MaxConnsPerIP: 1 << 20, MaxConns: 1 << 20, MaxPreauthCommands: 100}, lim, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return &testProxy{addr: ln.Addr().String(), srv: srv, lim: lim}
}

func newBenchLimiter() (*limiter.Limiter, error) {
	return limiter.New(limiter.Config{Failures: 1 << 20, Window: time.Hour, BanTime: time.Hour}, nil)
}

func discardLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// BenchmarkLogin: connect, greeting, USER, PASS, QUIT through the proxy to
// the in-process fake daemon (compare BenchmarkLoginDirect): the proxy's
// cost per login, without a real daemon's fork and PAM.
func BenchmarkLogin(b *testing.B) {
	f := startFakeB(b)
	p := startProxyB(b, f.ln.Addr().String())
	benchLogins(b, p.addr)
}

// BenchmarkLoginDirect is BenchmarkLogin straight to the fake daemon.
func BenchmarkLoginDirect(b *testing.B) {
	f := startFakeB(b)
	benchLogins(b, f.ln.Addr().String())
}

func benchLogins(b *testing.B, addr string) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		r := ftpproto.NewReplyReader(c, 512, 4096)
		r.ReadReply()
		c.Write([]byte("USER u\r\n"))
		r.ReadReply()
		c.Write([]byte("PASS good\r\n"))
		if rep, _ := r.ReadReply(); rep.Code != 230 {
			b.Fatalf("login: %v", rep.Lines)
		}
		c.Write([]byte("QUIT\r\n"))
		r.ReadReply()
		c.Close()
	}
}

// BenchmarkEndBans measures the match of one CrowdSec poll's worth of
// decisions (10,000, covering nobody) against 5,000 open sessions' peers:
// one pass over the sessions (a decision at a time, it took ~2 s of CPU).
func BenchmarkEndBans(b *testing.B) {
	srv, bans := endBansSetup(b, "crowdsec: x")
	b.ReportAllocs()
	for b.Loop() {
		if n := srv.EndBans(bans, true, false); n != 0 {
			b.Fatalf("%d sessions ended", n)
		}
	}
}

// BenchmarkEndBansSoon: 10,000 bans learned one at a time (a resync of
// the shared store), covering nobody, against 5,000 open sessions' peers:
// "queued" through EndBansSoon, "one-by-one" each through EndSessions, as
// the limiter's hook did before.
func BenchmarkEndBansSoon(b *testing.B) {
	srv, bans := endBansSetup(b, "shared store")
	b.Run("queued", func(b *testing.B) {
		for b.Loop() {
			for _, ban := range bans {
				srv.EndBansSoon(ban, true, false)
			}
			for {
				srv.endq.mu.Lock()
				busy := srv.endq.busy
				srv.endq.mu.Unlock()
				if !busy {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
	})
	b.Run("one-by-one", func(b *testing.B) {
		for b.Loop() {
			for _, ban := range bans {
				srv.EndSessions(ban.Prefix, ban.Reason, true, false)
			}
		}
	})
}

// endBansSetup returns a server with 5,000 open sessions' peers
// (10.x.y.1) and 10,000 bans (11.x.y.1/32, reason) that cover none of them.
func endBansSetup(b *testing.B, reason string) (*Server, []Ban) {
	lim, err := limiter.New(limiter.Config{Failures: 3}, nil)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Config{Backend: "127.0.0.1:1"}, lim, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	for i := range 5000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
		srv.live.track(&session{peer: netip.AddrPortFrom(a, 21)})
	}
	bans := make([]Ban, 10000)
	for i := range bans {
		bans[i] = Ban{netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 8), byte(i), 1}), 32), reason}
	}
	return srv, bans
}
