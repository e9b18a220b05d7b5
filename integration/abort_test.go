//go:build integration

package integration

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// TestAbortFileNamedABOR: pure-ftpd's quirk (its reply to ABOR is the
// transfer's only final reply) must not be read into another daemon's
// replies. On proftpd, "RETR ABOR" (a file named ABOR) is answered with a
// reply naming the file; taken for the ABOR's own reply, it once put every
// later reply one command late, and the daemon's own 227 reached the
// client unrewritten.
func TestAbortFileNamedABOR(t *testing.T) {
	d := startProftpd(t)
	g := startGuard(t, d.Addr, guardOpts{Failures: 5})
	conf, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`ports = "(\d+)-(\d+)"`).FindSubmatch(conf)
	if m == nil {
		t.Fatal("no passive ports in ftpguard's config")
	}
	lo, _ := strconv.Atoi(string(m[1]))
	hi, _ := strconv.Atoi(string(m[2]))

	r := dialRaw(t, "127.0.0.72", g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	r.expect(230)
	r.send("RETR ABOR", "ABOR", "PASV", "NOOP", "QUIT")
	var got []string
	for {
		rep, err := r.r.ReadReply()
		if err != nil {
			break
		}
		got = append(got, fmt.Sprintf("%d %s", rep.Code, rep.Text()))
		if rep.Code != 227 {
			continue
		}
		ap, err := ftpproto.ParsePASV(rep.Text())
		if err != nil {
			t.Fatalf("227 %q: %v", rep.Text(), err)
		}
		if p := int(ap.Port()); p < lo || p > hi {
			t.Errorf("227 announces port %d, outside ftpguard's passive ports %d-%d: the daemon's own reply passed through", p, lo, hi)
		}
	}
	t.Logf("replies: %q", got)
	if len(got) != 5 {
		t.Fatalf("%d replies to RETR ABOR, ABOR, PASV, NOOP, QUIT; want 5: %q", len(got), got)
	}
	for i, want := range []string{"", "", "227", "200", "221"} {
		if want != "" && got[i][:3] != want {
			t.Errorf("reply %d is %q; want %s (replies out of step)", i+1, got[i], want)
		}
	}
	if c := got[0][:1]; c != "4" && c != "5" {
		t.Errorf("RETR ABOR answered %q; want a refusal", got[0])
	}
}
