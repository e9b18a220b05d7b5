package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeFTPD is an in-process FTP server for edge cases a real daemon cannot
// be made to produce on demand (hang-up right after PASS, an unsolicited
// 421, an endless reply). The integration tests cover real vsftpd.
type fakeFTPD struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex
	lines []string // every command line received, without CRLF
	conns int

	// onCommand may answer a line itself; it returns false to fall back
	// to the default behaviour, and may close c.
	onCommand func(c net.Conn, line string) bool
}

func startFake(t *testing.T, on func(c net.Conn, line string) bool) *fakeFTPD {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveFake(t, ln, on)
}

// startFakeAt starts a fake on addr (a restart), or returns nil if taken.
func startFakeAt(t *testing.T, addr string) *fakeFTPD {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil
	}
	return serveFake(t, ln, nil)
}

func serveFake(t *testing.T, ln net.Listener, on func(c net.Conn, line string) bool) *fakeFTPD {
	f := &fakeFTPD{ln: ln, onCommand: on}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeFTPD) serve() {
	defer f.wg.Done()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		conns = append(conns, c)
		f.mu.Lock()
		f.conns++
		f.mu.Unlock()
		f.wg.Add(1)
		go f.session(c)
	}
}

func (f *fakeFTPD) session(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	fmt.Fprint(c, "220 fake ready\r\n")
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\r\n")
		f.mu.Lock()
		f.lines = append(f.lines, line)
		f.mu.Unlock()
		if f.onCommand != nil && f.onCommand(c, line) {
			continue
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch verb {
		case "USER":
			fmt.Fprint(c, "331 Please specify the password.\r\n")
		case "PASS":
			if arg == "good" {
				fmt.Fprint(c, "230 Login successful.\r\n")
			} else {
				fmt.Fprint(c, "530 Login incorrect.\r\n")
			}
		case "QUIT":
			fmt.Fprint(c, "221 Goodbye.\r\n")
			return
		case "NOOP":
			fmt.Fprint(c, "200 NOOP ok.\r\n")
		default:
			fmt.Fprint(c, "500 Unknown command.\r\n")
		}
	}
}

func (f *fakeFTPD) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func (f *fakeFTPD) count(prefix string) int {
	n := 0
	for _, l := range f.received() {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testProxy struct {
	addr string
	srv  *Server
	lim  *limiter.Limiter
	logs *syncBuf
}

func startProxy(t *testing.T, backend string, cfg Config, lcfg limiter.Config) *testProxy {
	t.Helper()
	return startProxyWith(t, backend, cfg, lcfg, nil)
}

// startProxyWith is startProxy calling setup (nil: none) on the Server
// before it serves, for the hooks that must be set then (SetGate, …).
func startProxyWith(t *testing.T, backend string, cfg Config, lcfg limiter.Config, setup func(*Server)) *testProxy {
	t.Helper()
	return startProxyOn(t, "127.0.0.1:0", backend, cfg, lcfg, setup)
}

// startProxyOn is startProxyWith listening on listen ("[::1]:0": IPv6).
func startProxyOn(t *testing.T, listen, backend string, cfg Config, lcfg limiter.Config, setup func(*Server)) *testProxy {
	t.Helper()
	lim, err := limiter.New(lcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	cfg.Backend = backend
	srv, err := New(cfg, lim, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(srv)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v; want ErrServerClosed", err)
		}
		// Sessions end asynchronously after Close; wait for them.
		deadline := time.Now().Add(5 * time.Second)
		for srv.ActiveSessions() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	})
	return &testProxy{addr: ln.Addr().String(), srv: srv, lim: lim, logs: logs}
}

type client struct {
	t *testing.T
	c net.Conn
	r *ftpproto.ReplyReader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: ftpproto.NewReplyReader(c, 4096, 1<<20)}
}

// pasvData sends PASV and opens the data connection the 227 names
// (closed at the test's end).
func (c *client) pasvData() net.Conn {
	c.t.Helper()
	c.send("PASV\r\n")
	ap, err := ftpproto.ParsePASV(c.expect(227).Text())
	if err != nil {
		c.t.Fatal(err)
	}
	dc, err := net.Dial("tcp", ap.String())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { dc.Close() })
	return dc
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

// replies reads every reply until the connection ends.
func (c *client) replies() []int {
	var codes []int
	for {
		r, err := c.r.ReadReply()
		if err != nil {
			return codes
		}
		codes = append(codes, r.Code)
	}
}

func (c *client) expect(code int) ftpproto.Reply {
	c.t.Helper()
	r, err := c.r.ReadReply()
	if err != nil || r.Code != code {
		c.t.Fatalf("want %d, got %v (err %v)", code, r.Lines, err)
	}
	return r
}

func (c *client) expectEOF() {
	c.t.Helper()
	if r, err := c.r.ReadReply(); err == nil {
		c.t.Fatalf("want the connection closed, got %v", r.Lines)
	}
}

var testLimits = limiter.Config{Failures: 3, Window: time.Hour, BanTime: time.Hour, BanFactor: 2, MaxBanTime: 24 * time.Hour}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name  string
		send  string
		want  []int // replies after the greeting, until close
		fwd   string
		nofwd string
	}{
		{"line too long", strings.Repeat("A", 3000) + "\r\n", []int{500}, "", "AAAA"},
		{"no line end at all", strings.Repeat("B", 1<<20), []int{500}, "", "BBBB"},
		{"NUL then a good command", "NO\x00OP\r\nNOOP\r\nQUIT\r\n", []int{500, 200, 221}, "NOOP", "NO\x00OP"},
		{"bare CR inside a line", "USER a\rPASS b\r\nQUIT\r\n", []int{500, 221}, "QUIT", "USER"},
		{"bare LF splits like CRLF", "user bob\npass bad\r\nQUIT\r\n", []int{331, 530, 221}, "PASS bad", ""},
		{"Telnet IP/DM before a verb", "\xff\xf4\xff\xf2NOOP\r\nQUIT\r\n", []int{200, 221}, "NOOP", "\xff"},
		{"too many commands before login", strings.Repeat("NOOP\r\n", 5), []int{200, 200, 200, 421}, "NOOP", ""},
		{"REIN refused", "REIN\r\nQUIT\r\n", []int{502, 221}, "QUIT", "REIN"},
		{"active mode refused", "USER u\r\nPASS good\r\nPORT 127,0,0,1,4,1\r\nQUIT\r\n", []int{331, 230, 502, 221}, "QUIT", "PORT"},
		{"only what logging in needs before login", "SITE CHMOD 777 x\r\nPASV\r\nQUIT\r\n", []int{530, 530, 221}, "QUIT", "SITE"},
		{"AUTH TLS without TLS", "AUTH TLS\r\nQUIT\r\n", []int{534, 221}, "QUIT", "AUTH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, nil)
			p := startProxy(t, f.ln.Addr().String(), Config{MaxPreauthCommands: 3, MaxLine: 2048}, testLimits)
			c := dial(t, p.addr)
			c.expect(220)
			c.send(tt.send)
			if got := c.replies(); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("replies %v; want %v", got, tt.want)
			}
			for _, l := range f.received() {
				if tt.nofwd != "" && strings.Contains(l, tt.nofwd) {
					t.Errorf("forwarded %q; must not", l)
				}
			}
			if tt.fwd != "" && f.count(tt.fwd) == 0 {
				t.Errorf("did not forward %q; got %q", tt.fwd, f.received())
			}
		})
	}
}

// TestCanonicalForwarding: each parsed command reaches the daemon as
// VERB SP ARG CRLF, verbs upper-cased, never the client's raw bytes.
func TestCanonicalForwarding(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("  user  alice \nPaSs good\r\nnoop\r\nQUIT\r\n")
	if got := c.replies(); fmt.Sprint(got) != "[331 230 200 221]" {
		t.Fatalf("replies %v", got)
	}
	want := []string{"USER  alice ", "PASS good", "NOOP", "QUIT"}
	if got := f.received(); fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Fatalf("daemon received %q; want %q", got, want)
	}
}

// TestPipelinedGuessesCapped: ten guesses in one write; only the budget
// reaches the daemon, the rest are dropped, and the session ends with 421.
func TestPipelinedGuessesCapped(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	var b strings.Builder
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, "USER u\r\nPASS bad%d\r\n", i)
	}
	c.send(b.String())
	codes := c.replies()
	if len(codes) == 0 || codes[len(codes)-1] != 421 {
		t.Fatalf("replies %v; want a final 421", codes)
	}
	if n := f.count("PASS"); n > testLimits.Failures {
		t.Fatalf("daemon got %d PASS lines; budget is %d", n, testLimits.Failures)
	}
	if d := p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")); d.Allowed {
		t.Fatal("the peer is not banned")
	}
	// A new connection from a banned peer never reaches the daemon.
	before := f.conns
	c2 := dial(t, p.addr)
	if r := c2.expect(421); !strings.Contains(r.Text(), "banned") {
		t.Fatalf("banned greeting %q", r.Text())
	}
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	after := f.conns
	f.mu.Unlock()
	if after != before {
		t.Fatal("the daemon was dialed for a banned peer")
	}
}

// TestAttemptWithoutReplyCounts: the daemon hangs up after PASS without a
// reply (as vsftpd and pure-ftpd do after their own max tries), or the
// client hangs up right after PASS: each counts as a failure.
func TestAttemptWithoutReplyCounts(t *testing.T) {
	for _, who := range []string{"daemon hangs up", "client hangs up"} {
		t.Run(who, func(t *testing.T) {
			f := startFake(t, func(c net.Conn, line string) bool {
				if strings.HasPrefix(line, "PASS") && who == "daemon hangs up" {
					c.Close()
					return true
				}
				if strings.HasPrefix(line, "PASS") {
					time.Sleep(100 * time.Millisecond) // reply comes after the client left
				}
				return false
			})
			p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour})
			c := dial(t, p.addr)
			c.expect(220)
			c.send("USER u\r\n")
			c.expect(331)
			c.send("PASS x\r\n")
			if who == "daemon hangs up" {
				c.expect(421)
			} else {
				c.c.Close()
			}
			deadline := time.Now().Add(5 * time.Second)
			for p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")).Allowed {
				if time.Now().After(deadline) {
					t.Fatalf("attempt not counted; logs:\n%s", p.logs)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestUnsolicited421: the daemon's own 421 reaches the client and ends the
// session.
func TestUnsolicited421(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "NOOP" {
			fmt.Fprint(c, "200 ok\r\n421 Timeout.\r\n")
			c.Close()
			return true
		}
		return false
	})
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("NOOP\r\n")
	if got := c.replies(); fmt.Sprint(got) != "[200 421]" {
		t.Fatalf("replies %v; want [200 421]", got)
	}
}

// TestEndlessReply: a reply longer than max_reply ends the session with 421.
func TestEndlessReply(t *testing.T) {
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "HELP" {
			fmt.Fprint(c, "214-help\r\n")
			for i := 0; i < 2000; i++ {
				fmt.Fprintf(c, " line %d %s\r\n", i, strings.Repeat("x", 100))
			}
			fmt.Fprint(c, "214 end\r\n")
			return true
		}
		return false
	})
	p := startProxy(t, f.ln.Addr().String(), Config{MaxReply: 64 << 10}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("HELP\r\n")
	if got := c.replies(); fmt.Sprint(got) != "[421]" {
		t.Fatalf("replies %v; want [421]", got)
	}
}

// TestPasswordsNeverLogged: at debug level the PASS line is logged masked.
func TestPasswordsNeverLogged(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS s3cr3t-value\r\nPASS good\r\nQUIT\r\n")
	c.replies()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.logs.String(), "session end") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	logs := p.logs.String()
	if strings.Contains(logs, "s3cr3t") || strings.Contains(logs, "PASS good") {
		t.Fatalf("a password reached the log:\n%s", logs)
	}
	if !strings.Contains(logs, "PASS ****") || !strings.Contains(logs, "login failed") || !strings.Contains(logs, "login ok") {
		t.Fatalf("expected masked PASS, login failed and login ok events:\n%s", logs)
	}
}

// TestDeadBackend: 421 within dial_timeout when nothing listens.
func TestDeadBackend(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	p := startProxy(t, addr, Config{DialTimeout: time.Second}, testLimits)
	c := dial(t, p.addr)
	c.expect(421)
	c.expectEOF()
}

// TestShutdownDrains: Shutdown waits for an open session, then closes it
// when its context ends; new connections are refused meanwhile.
func TestShutdownDrains(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := p.srv.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown: %v; want DeadlineExceeded", err)
	}
	if time.Since(start) < 150*time.Millisecond {
		t.Fatal("Shutdown did not wait for the open session")
	}
	c.expectEOF()
}

// TestUserRejectsCount: a 530 to USER (a user list deny) costs a token
// when the limiter's CountUserRejects is on, and nothing when it is off.
func TestUserRejectsCount(t *testing.T) {
	for _, count := range []bool{true, false} {
		t.Run(fmt.Sprint("count=", count), func(t *testing.T) {
			f := startFake(t, func(c net.Conn, line string) bool {
				if line == "USER root" {
					fmt.Fprint(c, "530 Permission denied.\r\n")
					return true
				}
				return false
			})
			lcfg := testLimits
			lcfg.CountUserRejects = count
			p := startProxy(t, f.ln.Addr().String(), Config{MaxPreauthCommands: 100}, lcfg)
			c := dial(t, p.addr)
			c.expect(220)
			c.send(strings.Repeat("USER root\r\n", 5) + "QUIT\r\n")
			codes := c.replies()
			banned := !p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")).Allowed
			if count && (banned != true || fmt.Sprint(codes) != "[530 530 530 421]") {
				t.Fatalf("counted: replies %v, banned %v; want [530 530 530 421], banned", codes, banned)
			}
			if !count && (banned || fmt.Sprint(codes) != "[530 530 530 530 530 221]") {
				t.Fatalf("not counted: replies %v, banned %v; want five 530s and 221, not banned", codes, banned)
			}
		})
	}
}

// TestPipelinedLoginNotStarved: USER and PASS in one write with one token
// left: USER holds no token, so the PASS is forwarded and answered.
func TestPipelinedLoginNotStarved(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 2, Window: time.Hour, BanTime: time.Hour})
	for i, want := range []string{"[331 530 221]", "[331 230 221]"} {
		c := dial(t, p.addr)
		c.expect(220)
		pass := "bad"
		if i == 1 {
			pass = "good"
		}
		c.send("USER u\r\nPASS " + pass + "\r\nQUIT\r\n")
		if got := fmt.Sprint(c.replies()); got != want {
			t.Fatalf("login %d: replies %s; want %s", i, got, want)
		}
	}
}

// TestConcurrentAttemptsBusy: when attempts in flight hold every token
// left, one more waits for a place (TestConcurrentLoginsWait); once the
// key's queue is full (max_login_waiters), one more is refused with 421,
// and the peer is not banned for it. The fake daemon holds a reply until
// told to: a real one cannot be made to.
func TestConcurrentAttemptsBusy(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "PASS slow" {
			<-release
		}
		return false
	})
	defer close(release)
	p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour, MaxLoginWaiters: 1})
	c1 := dial(t, p.addr)
	c1.expect(220)
	c1.send("USER u\r\nPASS slow\r\n")
	c1.expect(331)
	waitFor(t, "c1's PASS at the daemon", func() bool { return f.count("PASS slow") == 1 })
	c2 := dial(t, p.addr)
	c2.expect(220)
	c2.send("USER u\r\nPASS other\r\n")
	c2.expect(331)
	waitFor(t, "c2 waiting", func() bool { return p.lim.Stats().Waiting == 1 })
	c3 := dial(t, p.addr)
	c3.expect(220)
	c3.send("USER u\r\n")
	c3.expect(331)
	c3.send("PASS third\r\n")
	if r := c3.expect(421); !strings.Contains(r.Text(), "waiting") {
		t.Fatalf("busy reply %q", r.Text())
	}
	if !p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")).Allowed {
		t.Fatal("a busy refusal banned the peer")
	}
	if f.count("PASS other") != 0 || f.count("PASS third") != 0 {
		t.Fatal("a PASS without a place reached the daemon")
	}
}

// TestConcurrentLoginsWait: logins of one address beyond its budget's
// free places wait in turn for the attempts in flight rather than get
// 421 (issue 12: parallel sessions of one client, offices behind NAT): a
// success gives its place to the first waiter, and the waiters go to the
// daemon in the order they came. The fake daemon holds a reply until told
// to: a real one cannot be made to.
func TestConcurrentLoginsWait(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "PASS slowgood" {
			<-release
			fmt.Fprint(c, "230 Login successful.\r\n")
			return true
		}
		return false
	})
	p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour})
	c1 := dial(t, p.addr)
	c1.expect(220)
	c1.send("USER u\r\nPASS slowgood\r\n")
	c1.expect(331)
	waitFor(t, "c1's PASS at the daemon", func() bool { return f.count("PASS slowgood") == 1 })
	var cs []*client
	for i := range 3 {
		c := dial(t, p.addr)
		c.expect(220)
		c.send("USER u\r\n")
		c.expect(331)
		c.send("PASS good\r\n")
		waitFor(t, "a waiter", func() bool { return p.lim.Stats().Waiting == i+1 })
		cs = append(cs, c)
	}
	if f.count("PASS good") != 0 {
		t.Fatal("a PASS without a place reached the daemon")
	}
	close(release)
	c1.expect(230)
	for _, c := range cs {
		c.expect(230)
	}
	if n := f.count("PASS good"); n != 3 {
		t.Fatalf("%d waiting PASS reached the daemon; want 3", n)
	}
	if st := p.lim.Stats(); st.Waiting != 0 || st.Banned != 0 {
		t.Fatalf("after the logins: %+v", st)
	}
}

// TestWaitEndsWithSession: a session that ends while its PASS waits for
// a place leaves no waiter behind (nor a goroutine: goleak in TestMain),
// and the waiting PASS never reaches the daemon.
func TestWaitEndsWithSession(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, func(c net.Conn, line string) bool {
		if line == "PASS slow" {
			<-release
		}
		return false
	})
	defer close(release)
	p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour})
	c1 := dial(t, p.addr)
	c1.expect(220)
	c1.send("USER u\r\nPASS slow\r\n")
	c1.expect(331)
	waitFor(t, "c1's PASS at the daemon", func() bool { return f.count("PASS slow") == 1 })
	c2 := dial(t, p.addr)
	c2.expect(220)
	c2.send("USER u\r\nPASS waiting\r\n")
	c2.expect(331)
	waitFor(t, "c2 waiting", func() bool { return p.lim.Stats().Waiting == 1 })
	p.srv.Close()
	waitFor(t, "no waiter", func() bool { return p.lim.Stats().Waiting == 0 })
	if f.count("PASS waiting") != 0 {
		t.Fatal("the waiting PASS reached the daemon")
	}
}

// waitFor polls cond until it holds (10 s at most: a bound, not a timing
// threshold).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestClientHalfClose: a client that sends its commands and shuts its
// write side (printf … | nc) still gets every reply, and its PASS is
// settled by the daemon's answer.
func TestClientHalfClose(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour})
	c := dial(t, p.addr)
	c.send("USER u\r\nPASS good\r\nNOOP\r\n")
	c.c.(*net.TCPConn).CloseWrite()
	if got := fmt.Sprint(c.replies()); got != "[220 331 230 200]" {
		t.Fatalf("replies %s; want [220 331 230 200]", got)
	}
	if !p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")).Allowed {
		t.Fatal("a successful login behind a half-close was counted as a failure")
	}
}

// TestBackendClosesAfterGreeting: the daemon says 220 and hangs up: the
// client gets 421 and the session frees everything (goleak checks).
func TestBackendClosesAfterGreeting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "220 hello\r\n")
			c.Close()
		}
	}()
	p := startProxy(t, ln.Addr().String(), Config{}, testLimits)
	c := dial(t, p.addr)
	if got := fmt.Sprint(c.replies()); got != "[220 421]" {
		t.Fatalf("replies %s; want [220 421]", got)
	}
}

// TestTarpit: the reply to a failed login is held, doubling per failure of
// the key up to the cap, while another session of the same key is not
// slowed: its 230 overtakes the held 530.
func TestTarpit(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{}, limiter.Config{Failures: 10, Window: time.Hour, BanTime: time.Hour,
		FailureDelay: 100 * time.Millisecond, MaxFailureDelay: 250 * time.Millisecond})
	for i, want := range []time.Duration{100, 200, 250, 250} {
		c := dial(t, p.addr)
		c.expect(220)
		c.send("USER u\r\n")
		c.expect(331)
		start := time.Now()
		c.send("PASS bad\r\n")
		c.expect(530)
		if got := time.Since(start); got < want*time.Millisecond {
			t.Fatalf("failure %d: reply after %v; want it held ≥ %v", i+1, got, want*time.Millisecond)
		}
	}
	// A held 530 does not hold anyone else.
	slow, fast := dial(t, p.addr), dial(t, p.addr)
	slow.expect(220)
	fast.expect(220)
	slow.send("USER u\r\nPASS bad\r\n")
	slow.expect(331)
	time.Sleep(20 * time.Millisecond) // the failure is being held now
	fast.send("USER u\r\nPASS good\r\n")
	fast.expect(331)
	fast.expect(230)
	held := make(chan int, 1)
	go func() {
		r, _ := slow.r.ReadReply()
		held <- r.Code
	}()
	select {
	case <-held:
		t.Fatal("the held 530 came before the other session's 230 was read")
	default:
	}
	if code := <-held; code != 530 {
		t.Fatalf("held reply %d; want 530", code)
	}
}

// TestObserveMode: everything is counted and the would-be refusals are
// logged, but nothing is refused: every guess reaches the daemon, and the
// banned peer still connects.
func TestObserveMode(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{Observe: true, MaxPreauthCommands: 50}, limiter.Config{Failures: 2, Window: time.Hour, BanTime: time.Hour, FailureDelay: time.Second})
	c := dial(t, p.addr)
	c.expect(220)
	c.send(strings.Repeat("USER u\r\nPASS bad\r\n", 5) + "QUIT\r\n")
	if got := fmt.Sprint(c.replies()); got != "[331 530 331 530 331 530 331 530 331 530 221]" {
		t.Fatalf("replies %s", got)
	}
	if n := f.count("PASS bad"); n != 5 {
		t.Fatalf("daemon saw %d guesses; want all 5 in observe mode", n)
	}
	if p.lim.Check(time.Now(), netip.MustParseAddr("127.0.0.1")).Allowed {
		t.Fatal("the limiter did not record the ban that would have been made")
	}
	dial(t, p.addr).expect(220)
	logs := p.logs.String()
	if !strings.Contains(logs, "observe: would reject") || !strings.Contains(logs, "msg=ban") {
		t.Fatalf("want ban and would-reject events:\n%s", logs)
	}
	// Over max_conns_per_ip: admitted, and logged as a would-be refusal.
	for range p.srv.config().MaxConnsPerIP + 1 {
		dial(t, p.addr).expect(220)
	}
	if n := strings.Count(p.logs.String(), "reason=max_conns_per_ip"); n < 2 {
		t.Fatalf("%d would-be max_conns_per_ip refusals logged; want ≥ 2:\n%s", n, p.logs.String())
	}
}

// TestIdleTimeout: a logged-in session that keeps sending commands is never
// idle, however long it lasts (its idle deadline is moved only now and then,
// and an early expiry is re-armed); once it stops, it gets 421 after
// idle_timeout.
func TestIdleTimeout(t *testing.T) {
	f := startFake(t, nil)
	const idle = 600 * time.Millisecond
	p := startProxy(t, f.ln.Addr().String(), Config{IdleTimeout: idle}, testLimits)
	c := dial(t, p.addr)
	c.expect(220)
	c.send("USER u\r\nPASS good\r\n")
	c.expect(331)
	c.expect(230)
	for start := time.Now(); time.Since(start) < 3*idle; time.Sleep(idle / 12) {
		c.send("NOOP\r\n")
		c.expect(200)
	}
	start := time.Now()
	r := c.expect(421)
	if !strings.Contains(r.Text(), "Idle timeout") {
		t.Fatalf("reply %q, want the idle timeout", r.Text())
	}
	if waited := time.Since(start); waited < idle/2 {
		t.Fatalf("idle timeout after %v of silence, want about %v", waited, idle)
	}
	c.expectEOF()
}

// gatedDeadlineConn records the read deadlines set on it; setting block
// waits until release is closed (entered says it has begun).
type gatedDeadlineConn struct {
	net.Conn
	block            time.Time
	entered, release chan struct{}
	mu               sync.Mutex
	rd               time.Time
}

func (c *gatedDeadlineConn) SetReadDeadline(d time.Time) error {
	if d.Equal(c.block) {
		close(c.entered)
		<-c.release
	}
	c.mu.Lock()
	c.rd = d
	c.mu.Unlock()
	return nil
}

// TestClientDeadlineRace: setClientDeadline called from two goroutines at
// once (relayCommands arming the idle deadline, a transfer beginning in
// relayReplies or a data leg clearing it) leaves the deadline it records
// and the socket's the same. It used to record one and set the other on
// the socket: with "none" recorded and a deadline on the socket, the read
// failed at that deadline, the session read on (a transfer runs), and
// setClientDeadline, believing none was set, set none: every read failed
// at once, a spin for the rest of the transfer.
func TestClientDeadlineRace(t *testing.T) {
	d := time.Now().Add(time.Hour)
	c := &gatedDeadlineConn{block: d, entered: make(chan struct{}), release: make(chan struct{})}
	s := &session{raw: c}
	armed := make(chan struct{})
	go func() { s.setClientDeadline(d); close(armed) }() // relayCommands: idle_timeout
	<-c.entered
	cleared := make(chan struct{})
	go func() { s.setClientDeadline(time.Time{}); close(cleared) }() // a transfer begins
	select {
	case <-cleared:
	case <-time.After(100 * time.Millisecond):
	}
	close(c.release)
	<-armed
	<-cleared
	c.mu.Lock()
	got := c.rd
	c.mu.Unlock()
	var rec time.Time
	if ns := s.rdl.Load(); ns != 0 {
		rec = time.Unix(0, ns)
	}
	if !got.Equal(rec) {
		t.Fatalf("the socket's read deadline is %v, setClientDeadline records %v", got, rec)
	}
}
