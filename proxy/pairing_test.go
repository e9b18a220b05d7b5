package proxy

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRepliesStayPaired: however a daemon answers out of step — no reply
// to a command, two replies to one — a password is never settled by
// another command's reply. The in-process fake daemon plays the daemons'
// misbehaviour on demand; integration/pairing_test.go drives the real
// proftpd and pure-ftpd into it.
func TestRepliesStayPaired(t *testing.T) {
	tests := []struct {
		name   string
		on     func(c net.Conn, line string) bool
		send   string
		want   string // the client's replies, until the connection ends ("|" between alternatives)
		passes int    // PASS lines the daemon received (-1: any)
		failed int    // "login failed" events (-1: as many as PASS lines the daemon received)
	}{
		{
			name: "a refused USER leaves no user: the PASS is answered here",
			on: func(c net.Conn, line string) bool {
				if line == "USER junk" {
					fmt.Fprint(c, "501 Login incorrect.\r\n")
					return true
				}
				return false
			},
			send: "USER u\r\nUSER junk\r\nPASS bad\r\nQUIT\r\n",
			want: "[331 501 503 221]",
		},
		{
			name:   "no second login: USER and PASS after login are answered here",
			send:   "USER u\r\nPASS good\r\nUSER root\r\nPASS bad\r\nQUIT\r\n",
			want:   "[331 230 530 230 221]",
			passes: 1,
		},
		{
			name: "control bytes in a username are refused",
			send: "USER fg\x01test\r\nPASS bad\r\nQUIT\r\n",
			want: "[501 503 221]",
		},
		{
			name: "verbs of no command's shape are answered here",
			send: "!\r\nX-Y\r\nAB\r\nTOOLONGVERB\r\nNOOP\r\nQUIT\r\n",
			want: "[500 500 500 500 200 221]",
		},
		{
			name: "ACCT only after a 332",
			send: "USER u\r\nACCT x\r\nQUIT\r\n",
			want: "[331 503 221]",
		},
		{
			name: "ACCT after a 332 goes to the daemon",
			on: func(c net.Conn, line string) bool {
				switch {
				case strings.HasPrefix(line, "USER"):
					fmt.Fprint(c, "332 Need account for login.\r\n")
				case strings.HasPrefix(line, "ACCT"):
					fmt.Fprint(c, "230 Logged in.\r\n")
				default:
					return false
				}
				return true
			},
			send: "USER u\r\nACCT x\r\nQUIT\r\n",
			want: "[332 230 221]",
		},
		{
			name: "a 200 to PASS ends the session and counts the guess",
			on: func(c net.Conn, line string) bool {
				if strings.HasPrefix(line, "PASS") {
					fmt.Fprint(c, "200 Zzz...\r\n")
					return true
				}
				return false
			},
			send:   "USER u\r\nPASS bad\r\n",
			want:   "[331 421]",
			passes: 1,
			failed: 1,
		},
		{
			name: "a command left unanswered holds the password back",
			on: func(c net.Conn, line string) bool {
				return line == "HELP" // no reply at all
			},
			send: "HELP\r\nUSER u\r\nPASS bad\r\n",
			want: "[331 421]", // the 331 answers HELP; USER never gets its own, so PASS is not sent
		},
		{
			name: "a command answered twice cannot answer the password",
			on: func(c net.Conn, line string) bool {
				if line == "NOOP" {
					fmt.Fprint(c, "200 once\r\n200 twice\r\n")
					return true
				}
				return false
			},
			send: "NOOP\r\nUSER u\r\nPASS bad\r\n",
			// The second 200 answers USER (out of step: 421), or, when it
			// comes before USER is forwarded, is passed on as unsolicited
			// and PASS gets its own 530.
			want:   "[200 421]|[200 200 331 530 421]",
			passes: -1,
			failed: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.on)
			p := startProxy(t, f.ln.Addr().String(), Config{LoginTimeout: 500 * time.Millisecond}, testLimits)
			c := dial(t, p.addr)
			c.expect(220)
			c.send(tt.send)
			if got := fmt.Sprint(c.replies()); !slices.Contains(strings.Split(tt.want, "|"), got) {
				t.Fatalf("replies %s, want %s\nlog:\n%s", got, tt.want, p.logs.String())
			}
			c.c.Close()
			deadline := time.Now().Add(5 * time.Second)
			for p.srv.ActiveSessions() > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			passes := f.count("PASS")
			if tt.passes >= 0 && passes != tt.passes {
				t.Errorf("the daemon received %d PASS, want %d", passes, tt.passes)
			}
			wantFailed := tt.failed
			if wantFailed < 0 {
				wantFailed = passes
			}
			if n := strings.Count(p.logs.String(), "msg=\"login failed\""); n != wantFailed {
				t.Errorf("%d failures counted, want %d\nlog:\n%s", n, wantFailed, p.logs.String())
			}
			for _, l := range f.received() {
				if !knownShape(strings.SplitN(l, " ", 2)[0]) {
					t.Errorf("the daemon received %q", l)
				}
				if strings.HasPrefix(l, "ACCT") && tt.on == nil {
					t.Errorf("the daemon received %q without asking for an account", l)
				}
			}
		})
	}
}
