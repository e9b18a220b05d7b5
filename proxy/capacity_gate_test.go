package proxy

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// dialFrom connects to addr from src (a 127.0.0.X address).
func dialFrom(t *testing.T, src, addr string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: ftpproto.NewReplyReader(c, 4096, 1<<20)}
}

// TestShedAndPenaltyGate: the gate's side of capacity.go, with the
// in-process fake daemon (the integration test does it against vsftpd): a
// full table sheds the oldest idle session of the key holding the most
// (421 with the reason), never the logged-in one; after noauth After
// sheds the key is refused at the gate; a newcomer is never shed before
// an older idle session.
func TestShedAndPenaltyGate(t *testing.T) {
	f := startFake(t, nil)
	p := startProxy(t, f.ln.Addr().String(), Config{MaxConns: 4, MaxConnsPerIP: 10,
		NoAuth: limiter.NoAuthConfig{Penalty: time.Minute, After: 2}}, loose)
	l := dialFrom(t, "127.0.0.5", p.addr)
	l.expect(220)
	l.send("USER u\r\nPASS good\r\n")
	l.expect(331)
	l.expect(230)
	var a []*client
	for range 3 {
		c := dialFrom(t, "127.0.0.2", p.addr)
		c.expect(220)
		a = append(a, c)
	}
	for i, src := range []string{"127.0.0.3", "127.0.0.4"} {
		dialFrom(t, src, p.addr).expect(220)
		if r := a[i].expect(421); !strings.Contains(r.Text(), "Server busy") {
			t.Fatalf("shed session got %q", r.Text())
		}
		a[i].expectEOF()
	}
	waitUntil(t, "the penalty of 127.0.0.2", func() bool {
		_, ok := p.lim.Penalized(time.Now(), netip.MustParseAddr("127.0.0.2"))
		return ok
	})
	if r := dialFrom(t, "127.0.0.2", p.addr).expect(421); !strings.Contains(r.Text(), "without a login") {
		t.Fatalf("penalised key got %q", r.Text())
	}
	// Full again (l, a[2], two newcomers): the next newcomer sheds a[2],
	// the oldest idle session, not a newcomer.
	dialFrom(t, "127.0.0.6", p.addr).expect(220)
	a[2].expect(421)
	l.send("NOOP\r\n")
	l.expect(200)
	if n := strings.Count(p.logs.String(), "reason=shed"); n != 3 {
		t.Fatalf("%d sheds logged; want 3", n)
	}
}

// TestObserveGuessesSheddable: in observe mode a guess the budget would
// refuse is forwarded all the same, but does not make its session
// unsheddable: one address could otherwise hold the whole table with
// passwords in flight (a daemon weighing each for seconds) and lock
// everybody else out. The guess the budget allows is still kept.
func TestObserveGuessesSheddable(t *testing.T) {
	release := make(chan struct{})
	f := startFake(t, func(c net.Conn, line string) bool {
		if strings.HasPrefix(line, "PASS") {
			<-release // the daemon weighs the password until the test ends
			return true
		}
		return false
	})
	t.Cleanup(func() { close(release) })
	p := startProxy(t, f.ln.Addr().String(), Config{Observe: true, MaxConns: 2, MaxConnsPerIP: 10},
		limiter.Config{Failures: 1, Window: time.Hour, BanTime: time.Hour})
	var guessers []*client
	for i := range 2 {
		c := dialFrom(t, "127.0.0.1", p.addr)
		c.expect(220)
		c.send("USER u\r\nPASS x\r\n")
		c.expect(331)
		guessers = append(guessers, c)
		// The first guess is the one the budget allows: the second
		// guesser starts only once it is at the daemon (the 331 comes
		// before the pipelined PASS is read, and under load the second
		// session's PASS could otherwise be taken first).
		waitUntil(t, "the password at the daemon", func() bool { return f.count("PASS") == i+1 })
	}
	other := dialFrom(t, "127.0.0.2", p.addr)
	other.expect(220) // the over-budget guess's session was shed for it
	if r := guessers[1].expect(421); !strings.Contains(r.Text(), "Server busy") {
		t.Errorf("the over-budget guesser got %q", r.Text())
	}
}
