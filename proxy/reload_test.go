package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// panicCounter is an Observer that counts recovered panics.
type panicCounter struct {
	nopObserver
	n atomic.Int32
}

func (p *panicCounter) Panic() { p.n.Add(1) }

// serveImplicit serves implicit FTPS of p's server on a listener of its
// own and returns its address; the listener is closed at cleanup.
func serveImplicit(t *testing.T, p *testProxy) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.srv.ServeImplicitTLS(ln) }()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestReloadTLSOffKeepsPROTP: a session told "200 PROT now Private" keeps
// TLS on its data connections after a reload to [tls] mode = "off" (its
// next RETR is TLS, never clear text); a new session is offered no TLS.
// Explicit and implicit sessions alike.
func TestReloadTLSOffKeepsPROTP(t *testing.T) {
	payload := bytes.Repeat([]byte("secret data "), 1000)
	for _, mode := range []string{"explicit", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			f := dataFake(t, payload)
			cfg := Config{TLS: testTLSConfig(t), DataTimeout: 5 * time.Second}
			p := startProxy(t, f.ln.Addr().String(), cfg, testLimits)
			cache := tls.NewLRUClientSessionCache(4)
			var c *client
			if mode == "explicit" {
				c = tlsLogin(t, p.addr, cache)
			} else {
				c = dial(t, serveImplicit(t, p))
				tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "ftp.test", ClientSessionCache: cache})
				c.c, c.r = tc, ftpproto.NewReplyReader(tc, 4096, 1<<20)
				c.expect(220)
				c.send("USER u\r\nPASS good\r\n")
				c.expect(331)
				c.expect(230)
			}
			off := cfg
			off.TLS = nil
			off.Backend = f.ln.Addr().String()
			p.srv.SetConfig(off) // the reload
			got, _ := retrTLS(t, c, cache)
			if !bytes.Equal(got, payload) {
				t.Fatalf("PROT P data after reload to TLS off: %d bytes over TLS, want %d", len(got), len(payload))
			}
			c.send("PROT P\r\n") // the session keeps its TLS: PROT is still answered
			c.expect(200)
			n := dial(t, p.addr)
			n.expect(220)
			n.send("AUTH TLS\r\n")
			n.expect(534)
		})
	}
}

// TestImplicitAfterTLSOff: a ClientHello on an implicit listener that a
// reload to TLS off has not closed yet ends that connection; the process
// does not panic (it did: a nil TLS config), and the refusal is logged.
func TestImplicitAfterTLSOff(t *testing.T) {
	f := startFake(t, nil)
	cfg := Config{TLS: testTLSConfig(t), Backend: f.ln.Addr().String()}
	p := startProxy(t, f.ln.Addr().String(), cfg, testLimits)
	addr := serveImplicit(t, p)
	first := dial(t, addr) // the listener serves
	tc := tls.Client(first.c, &tls.Config{InsecureSkipVerify: true})
	first.c, first.r = tc, ftpproto.NewReplyReader(tc, 4096, 1<<20)
	first.expect(220)
	off := cfg
	off.TLS = nil
	p.srv.SetConfig(off)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}).Handshake(); err == nil {
		t.Fatal("TLS handshake succeeded on an implicit listener after TLS was turned off")
	}
	waitFor(t, "the refusal", func() bool { return strings.Contains(p.logs.String(), "implicit TLS off") })
	c := dial(t, p.addr) // the plain listener goes on
	c.expect(220)
}

// startObserved is startProxy with obs set before Serve.
func startObserved(t *testing.T, backend string, cfg Config, obs Observer) *testProxy {
	t.Helper()
	lim, err := limiter.New(testLimits, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	cfg.Backend = backend
	srv, err := New(cfg, lim, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	srv.SetObserver(obs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v; want ErrServerClosed", err)
		}
		waitFor(t, "sessions to end", func() bool { return srv.ActiveSessions() == 0 })
	})
	return &testProxy{addr: ln.Addr().String(), srv: srv, lim: lim, logs: logs}
}

// TestPanicRecovered: a panic injected in a session's command loop, or in
// a data relay, ends that session only: it is logged with its stack and
// counted, the attempt in flight settles, another session goes on, a new
// one is admitted, and no goroutine leaks (goleak, TestMain).
func TestPanicRecovered(t *testing.T) {
	for _, where := range []string{"command", "data"} {
		t.Run(where, func(t *testing.T) {
			hook := func(w, arg string) {
				if w == where && (w == "data" || arg == "XPNC") {
					panic("injected panic")
				}
			}
			testHook.Store(&hook)
			defer testHook.Store(nil)
			f := dataFake(t, []byte("payload"))
			obs := &panicCounter{}
			p := startObserved(t, f.ln.Addr().String(), Config{DataTimeout: 5 * time.Second}, obs)
			other := dial(t, p.addr)
			other.expect(220)
			other.send("USER u\r\nPASS good\r\n")
			other.expect(331)
			other.expect(230)

			c := dial(t, p.addr)
			c.expect(220)
			c.send("USER u\r\nPASS good\r\n")
			c.expect(331)
			c.expect(230)
			if where == "command" {
				c.send("XPNC\r\n")
			} else {
				c.send("PASV\r\n")
				ap, err := ftpproto.ParsePASV(c.expect(227).Text())
				if err != nil {
					t.Fatal(err)
				}
				dc, err := net.Dial("tcp", ap.String())
				if err != nil {
					t.Fatal(err)
				}
				defer dc.Close()
				c.send("RETR f\r\n")
				dc.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, dc)
			}
			c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, c.c) // the session ends
			waitFor(t, "the panic counted", func() bool { return obs.n.Load() == 1 })
			logs := p.logs.String()
			if !strings.Contains(logs, "panic recovered") || !strings.Contains(logs, "goroutine") {
				t.Fatalf("panic not logged with its stack:\n%s", logs)
			}
			other.send("NOOP\r\n")
			other.expect(200)
			n := dial(t, p.addr)
			n.expect(220)
			n.send("QUIT\r\n")
			n.expect(221)
		})
	}
}
