//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// TestPassivePortsPerKey: against vsftpd, one address opening PASV in
// session after session without ever connecting holds at most
// [passive] max_ports_per_key (default 4) ports; the next PASV gets the
// proxy's own 425 (vsftpd never sees it); another address still gets a
// port; after data_timeout the held ports are given back.
func TestPassivePortsPerKey(t *testing.T) {
	d := startVsftpd(t)
	// data_timeout long enough for five logins on a loaded machine: the
	// four ports must still be held when the fifth session asks.
	g := startGuard(t, d.Addr, guardOpts{Sessions: `data_timeout = "8s"`})
	login := func(src string) *raw {
		r := dialRaw(t, src, g.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
		r.expect(230)
		return r
	}
	var held []*raw
	for range 4 {
		r := login("127.0.0.2")
		r.send("PASV")
		r.expect(227)
		held = append(held, r)
	}
	over := login("127.0.0.2")
	over.send("PASV")
	if text := over.expect(425); !strings.Contains(text, "Too many data ports") {
		t.Errorf("425 text = %q", text)
	}
	over.send("EPSV")
	over.expect(425)

	// Legitimate users first: another address gets a port, and connects.
	other := login("127.0.0.3")
	other.send("PASV")
	ap, err := ftpproto.ParsePASV(other.expect(227))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dialer("127.0.0.3").Dial("tcp", ap.String())
	if err != nil {
		t.Fatalf("data connection of another address: %v", err)
	}
	dc.Close()

	// After data_timeout the four idle ports are released.
	waitForLong(t, 30*time.Second, "the held ports released after data_timeout", func() bool {
		over.send("PASV")
		code, _ := over.reply()
		return code == 227
	})
	for _, r := range held {
		r.send("NOOP")
		r.expect(200)
	}
}
