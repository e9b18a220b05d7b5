//go:build integration

package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdIdleConns keeps n idle connections (greeting read, no USER) open
// from src until stop, reconnecting whenever one is closed or refused, as
// an attacker holding slots does. It counts the 421s it was sent, and
// held counts its connections greeted and still open.
func holdIdleConns(stop <-chan struct{}, wg *sync.WaitGroup, src, addr string, n int, held, shed, refused *atomic.Int64) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, end, err := dialStoppable(stop, &d, addr)
				if err != nil {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				br := bufio.NewReader(c)
				greeted := false
				for { // read replies until the proxy closes (bounded by stop)
					line, err := br.ReadString('\n')
					if err != nil {
						break
					}
					switch {
					case strings.HasPrefix(line, "220 "):
						greeted = true
						held.Add(1)
					case strings.HasPrefix(line, "421 ") && greeted:
						shed.Add(1)
					case strings.HasPrefix(line, "421 "):
						refused.Add(1)
					}
				}
				end()
				if greeted {
					held.Add(-1)
				}
				if !greeted {
					// Refused at once: 200 goroutines retry 1,000 times a
					// second in all, a bounded load on a shared test machine.
					time.Sleep(200 * time.Millisecond)
				}
			}
		}()
	}
}

// TestCapacityUnderIdleAttack: max_conns = 100, and 20 addresses each
// holding 10 idle pre-login connections (200, twice the table), which
// reconnect whenever closed. Legitimate clients from fresh addresses keep
// logging in meanwhile: every login succeeds (the attackers' pre-login
// sessions are shed to make room). Sessions logged in before the attack
// are never shed. The attacking keys end up under a no-auth penalty, shown
// by GET /bans.
func TestCapacityUnderIdleAttack(t *testing.T) {
	d := startVsftpd(t)
	// dial_timeout 10s: vsftpd forking for the first burst of 200 connects
	// on a loaded machine may greet after more than the harness's 2 s.
	g := adminGuard(t, d.Addr, guardOpts{LogLevel: "info", DialTimeout: "10s", Sessions: "max_conns = 100\nnoauth_penalty = \"30s\"\nnoauth_penalty_after = 3\nconn_rate = 5.0\nconn_burst = 20\n"})

	// Logged in before the attack: never shed.
	var before []interface{ NoOp() error }
	for i := 201; i <= 205; i++ {
		c, err := ftpClient(t, fmt.Sprintf("127.0.3.%d", i), g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testUser, testPass); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Quit() })
		before = append(before, c)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var held, shed, refused atomic.Int64
	for i := 1; i <= 20; i++ {
		holdIdleConns(stop, &wg, fmt.Sprintf("127.0.3.%d", i), g.Addr, 10, &held, &shed, &refused)
	}
	// The table fills: the attackers hold (nearly) every slot left. The
	// first burst of 200 connects is past, so that what is measured is
	// the proxy's capacity, not vsftpd forking 200 processes at once. (On
	// a loaded machine the penalties may stop them before they hold 80.)
	for deadline := time.Now().Add(30 * time.Second); held.Load() < 80 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("attackers hold %d connections (greeted, open)", held.Load())

	var (
		mu     sync.Mutex
		lat    []time.Duration
		failed []string
		next   atomic.Int32
	)
	end := time.Now().Add(15 * time.Second)
	var lwg sync.WaitGroup
	for range 4 {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			for time.Now().Before(end) {
				n := next.Add(1)
				src := fmt.Sprintf("127.0.%d.%d", 4+n/250, 1+n%250) // a fresh address each time
				start := time.Now()
				c, err := ftpClient(t, src, g.Addr)
				if err == nil {
					err = c.Login(testUser, testPass)
					c.Quit()
				}
				mu.Lock()
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s: %v", src, err))
				} else {
					lat = append(lat, time.Since(start))
				}
				mu.Unlock()
			}
		}()
	}
	lwg.Wait()

	// The attacking keys are penalised: in the bans list, reason noauth.
	code, body := g.admin(t, "GET", "/bans", adminToken, "")
	var bans []struct{ Key, Reason string }
	if code != 200 || json.Unmarshal([]byte(body), &bans) != nil {
		t.Fatalf("GET /bans: %d %s", code, body)
	}
	penalized := 0
	for _, b := range bans {
		if b.Reason == "noauth" && strings.HasPrefix(b.Key, "127.0.3.") {
			penalized++
		}
	}
	close(stop)
	wg.Wait()

	if len(failed) > 0 {
		t.Fatalf("%d of %d legitimate logins failed under the attack, e.g. %v", len(failed), len(failed)+len(lat), failed[:min(3, len(failed))])
	}
	for i, c := range before {
		if err := c.NoOp(); err != nil {
			t.Fatalf("session %d logged in before the attack: NOOP: %v (shed?)", i, err)
		}
	}
	if penalized != 20 {
		t.Fatalf("%d attacking keys under a noauth penalty in GET /bans; want 20:\n%s", penalized, body)
	}
	for i := 201; i <= 205; i++ {
		if n := g.Count(t, "reject", "reason", "shed", "peer", fmt.Sprintf("127.0.3.%d", i)); n != 0 {
			t.Fatal("a logged-in session was shed")
		}
	}
	if g.Count(t, "reject", "reason", "shed") == 0 {
		t.Fatal("no session was shed: the table was never full")
	}
	slices.Sort(lat)
	t.Logf("%d legitimate logins under the attack, all succeeded: p50 %v, p99 %v, max %v; attackers: %d sessions shed, %d connections refused; penalty events %d",
		len(lat), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond),
		lat[len(lat)-1].Round(time.Millisecond), shed.Load(), refused.Load(), g.Count(t, "penalty"))
}

// TestConnsPerKeyIPv6: max_conns_per_ip counts an address key (an IPv6
// /64), not an exact address: 12 connections from 12 addresses of one /64,
// through a trusted PROXY-protocol balancer, with a cap of 2 — 2 admitted;
// another /64 through the same balancer is unaffected.
func TestConnsPerKeyIPv6(t *testing.T) {
	d := startVsftpd(t)
	g := startGuard(t, d.Addr, guardOpts{MaxConnsPerIP: 2, Extra: "[proxy_protocol]\ntrusted = [\"127.0.3.250/32\"]\n"})
	ok, refused := 0, 0
	for i := 1; i <= 12; i++ {
		r := dialViaBalancer(t, "127.0.3.250", g.Addr, fmt.Sprintf("[2001:db8:7::%x]:%d", i, 40000+i))
		switch code, _ := r.reply(); code {
		case 220:
			ok++
		case 421:
			refused++
		default:
			t.Fatalf("connection %d: %d", i, code)
		}
	}
	if ok != 2 || refused != 10 {
		t.Fatalf("%d admitted, %d refused; want 2, 10", ok, refused)
	}
	if n := g.Count(t, "reject", "reason", "max_conns_per_ip"); n != 10 {
		t.Fatalf("%d max_conns_per_ip refusals logged; want 10", n)
	}
	dialViaBalancer(t, "127.0.3.250", g.Addr, "[2001:db8:8::1]:40000").expect(220)
}

// TestConnRate: a burst above conn_burst from one address is refused with
// 421 at the gate — vsftpd never sees those connections — while another
// address is unaffected.
func TestConnRate(t *testing.T) {
	d := startVsftpd(t)
	// 0.1/s: one more token per 10 s, so the burst below is all but over at once.
	g := startGuard(t, d.Addr, guardOpts{MaxConnsPerIP: 100, Sessions: "conn_rate = 0.1\nconn_burst = 5\n"})
	connects := func() int {
		b, err := os.ReadFile(d.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "CONNECT: Client")
	}
	before := connects()
	ok, refused := 0, 0
	for range 15 {
		r := dialRaw(t, "127.0.3.60", g.Addr)
		code, text := r.reply()
		switch {
		case code == 220:
			ok++
		case code == 421 && strings.Contains(text, "per second"):
			refused++
		default:
			t.Fatalf("%d %q", code, text)
		}
		r.c.Close()
	}
	if ok < 5 || ok > 6 || ok+refused != 15 {
		t.Fatalf("%d admitted, %d refused; want 5 (6 if a token came back meanwhile), the rest refused", ok, refused)
	}
	dialRaw(t, "127.0.3.61", g.Addr).expect(220)
	waitFor(t, "vsftpd's CONNECT lines", func() bool { return connects()-before >= ok+1 })
	if n := connects() - before; n != ok+1 {
		t.Fatalf("vsftpd saw %d connections; want %d (the admitted ones only)", n, ok+1)
	}
	if n := g.Count(t, "reject", "reason", "conn_rate", "peer", "127.0.3.60"); n != refused {
		t.Fatalf("%d conn_rate refusals logged; want %d", n, refused)
	}
}
