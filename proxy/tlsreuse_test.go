package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// tlsLogin opens an explicit FTPS session with PROT P, its TLS client
// config using cache (nil: none).
func tlsLogin(t *testing.T, addr string, cache tls.ClientSessionCache) *client {
	t.Helper()
	c := dial(t, addr)
	c.expect(220)
	c.send("AUTH TLS\r\n")
	c.expect(234)
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "ftp.test", ClientSessionCache: cache})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.c, c.r = tc, ftpproto.NewReplyReader(tc, 4096, 1<<20)
	// Replies read after the handshake carry the TLS 1.3 ticket in.
	for _, step := range []struct {
		send string
		want int
	}{{"PBSZ 0", 200}, {"PROT P", 200}, {"USER u", 331}, {"PASS good", 230}} {
		c.send(step.send + "\r\n")
		c.expect(step.want)
	}
	return c
}

// retrTLS runs PASV + RETR with a data connection whose TLS client uses
// cache and returns what it read.
func retrTLS(t *testing.T, c *client, cache tls.ClientSessionCache) ([]byte, bool) {
	t.Helper()
	raw := c.pasvData()
	defer raw.Close() // before the next retrTLS, as a client does
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	dc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "ftp.test", ClientSessionCache: cache})
	c.send("RETR f\r\n")
	c.expect(150)
	var got []byte
	if err := dc.Handshake(); err == nil {
		got, _ = io.ReadAll(dc)
	}
	c.expect(226)
	return got, dc.ConnectionState().DidResume
}

// TestDataTLSReuse: a PROT P data connection must resume the TLS session
// of its own control connection. One that resumes it gets the data; a
// client that does not resume, or resumes another session's ticket (a
// thief on the same address racing for the port), gets nothing; with
// DataNoReuse a full handshake is accepted (old clients).
func TestDataTLSReuse(t *testing.T) {
	payload := bytes.Repeat([]byte("secret data "), 1000)
	for _, tt := range []struct {
		name    string
		noReuse bool
		data    func(own, other tls.ClientSessionCache) tls.ClientSessionCache
		want    bool
	}{
		{"resumes its own session", false, func(own, _ tls.ClientSessionCache) tls.ClientSessionCache { return own }, true},
		{"does not resume", false, func(_, _ tls.ClientSessionCache) tls.ClientSessionCache { return nil }, false},
		{"another session's ticket", false, func(_, other tls.ClientSessionCache) tls.ClientSessionCache { return other }, false},
		{"does not resume, reuse not required", true, func(_, _ tls.ClientSessionCache) tls.ClientSessionCache { return nil }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := dataFake(t, payload)
			p := startProxy(t, f.ln.Addr().String(), Config{TLS: testTLSConfig(t), DataNoReuse: tt.noReuse, DataTimeout: 5 * time.Second}, testLimits)
			own, other := tls.NewLRUClientSessionCache(4), tls.NewLRUClientSessionCache(4)
			c := tlsLogin(t, p.addr, own)
			tlsLogin(t, p.addr, other) // a second session, on the same address
			got, _ := retrTLS(t, c, tt.data(own, other))
			if ok := bytes.Equal(got, payload); ok != tt.want {
				t.Fatalf("data received: %v (%d bytes), want %v", ok, len(got), tt.want)
			}
			refused := strings.Contains(p.logs.String(), "no TLS session reuse")
			if refused == tt.want {
				t.Errorf("refusal logged: %v, want %v", refused, !tt.want)
			}
		})
	}
}
