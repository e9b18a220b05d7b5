package pairing

import (
	"strconv"
	"strings"
	"testing"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// pureftpdAbort is pure-ftpd's reply to ABOR mid-transfer, its only final
// reply for both the transfer and ABOR (proxy/quirks.go has the real
// matcher; this one is as strict).
func pureftpdAbort(r ftpproto.Reply) bool {
	return r.Code == 226 && r.Text() == "Since you see this ABOR must've succeeded"
}

// step is one event and the actions it must give, written compactly:
//
//	events:  "fwd VERB [data]", "local CODE", "reply CODE [text]" (lines
//	         joined by "|": a multi-line reply), "done CODE" (Delivered),
//	         "eof", "end"
//	actions: "Op[ VERB][ CODE][ data][ why]" joined by "; "
type step struct{ ev, want string }

func run(t *testing.T, m *Machine[string], steps []step) {
	t.Helper()
	for i, s := range steps {
		f := strings.Fields(s.ev)
		var acts []Action[string]
		switch f[0] {
		case "fwd":
			data := ""
			if len(f) > 2 {
				data = f[2]
			}
			acts = m.Forward(f[1], data)
		case "local":
			code, _ := strconv.Atoi(f[1])
			acts = m.Local(ftpproto.NewReply(code, "local"))
		case "reply":
			acts = m.Reply(parseReply(t, strings.TrimPrefix(s.ev, "reply ")))
		case "done":
			code, _ := strconv.Atoi(f[1])
			acts = m.Delivered(code)
		case "eof":
			acts = m.ClientEOF()
		case "end":
			acts = m.End()
		default:
			t.Fatalf("step %d: unknown event %q", i, s.ev)
		}
		if got := format(acts); got != s.want {
			t.Fatalf("step %d (%s): actions %q; want %q", i, s.ev, got, s.want)
		}
	}
}

// parseReply reads "CODE text" or "CODE-first|CODE last" (multi-line).
func parseReply(t *testing.T, s string) ftpproto.Reply {
	t.Helper()
	lines := strings.Split(s, "|")
	code, err := strconv.Atoi(lines[0][:3])
	if err != nil {
		t.Fatalf("bad reply %q", s)
	}
	if len(lines) == 1 {
		return ftpproto.NewReply(code, strings.TrimSpace(lines[0][3:]))
	}
	return ftpproto.Reply{Code: code, Lines: lines}
}

func format(acts []Action[string]) string {
	var parts []string
	for _, a := range acts {
		p := []string{a.Op.String()}
		if a.Verb != "" {
			p = append(p, a.Verb)
		}
		if a.Reply.Code != 0 {
			p = append(p, strconv.Itoa(a.Reply.Code))
		}
		if a.Data != "" {
			p = append(p, a.Data)
		}
		if a.Why != "" {
			p = append(p, a.Why)
		}
		parts = append(parts, strings.Join(p, " "))
	}
	return strings.Join(parts, "; ")
}

func TestSteps(t *testing.T) {
	pure := Quirks{AbortOnly: pureftpdAbort}
	tests := []struct {
		name     string
		max      int
		greeting bool
		quirks   Quirks
		steps    []step
	}{
		{
			name: "greeting, then a login: the PASS is settled by its own reply", greeting: true,
			steps: []step{
				{"reply 220 hello", "Deliver 220"},
				{"done 220", ""},
				{"fwd USER", ""},
				{"reply 331 password", "Settle USER 331; Deliver USER 331"},
				{"done 331", ""},
				{"fwd PASS a1", ""},
				{"reply 530 no", "Settle PASS 530 a1; Deliver PASS 530 a1"},
				{"done 530", ""},
			},
		},
		{
			name: "a greeting other than 220 ends the session", greeting: true,
			steps: []step{
				{"reply 421 too many", "Deliver 421"},
				{"done 421", "Close not greeted"},
				{"reply 200 late", ""},
			},
		},
		{
			name: "pipelining: replies are paired in order",
			steps: []step{
				{"fwd NOOP", ""},
				{"fwd SYST", ""},
				{"fwd PASV", ""},
				{"reply 200 ok", "Deliver NOOP 200"},
				{"done 200", ""},
				{"reply 215 UNIX", "Deliver SYST 215"},
				{"done 215", ""},
				{"reply 227 Entering Passive Mode (127,0,0,1,4,1)", "Deliver PASV 227"},
				{"done 227", ""},
				{"reply 200 unsolicited", "Write 200"},
			},
		},
		{
			name: "local replies: at once when nothing waits, else after the forwarded ones before them",
			steps: []step{
				{"local 500", "Write 500"},
				{"fwd NOOP", ""},
				{"local 500", ""},
				{"fwd HELP", ""},
				{"local 502", ""},
				{"local 503", ""},
				{"reply 200 ok", "Deliver NOOP 200"},
				{"local 504", ""}, // the head is busy: nothing overtakes it
				{"done 200", "Write 500"},
				{"reply 214-help|214 end", "Deliver HELP 214"},
				{"done 214", "Write 502; Write 503; Write 504"},
				{"local 505", "Write 505"},
			},
		},
		{
			name: "a multi-line reply is one reply",
			steps: []step{
				{"fwd FEAT", ""},
				{"fwd NOOP", ""},
				{"reply 211-Features:| EPSV| UTF8|211 End", "Deliver FEAT 211"},
				{"done 211", ""},
				{"reply 200 ok", "Deliver NOOP 200"},
			},
		},
		{
			name: "1xx then final: the 1xx is written at once, the final waits for the data",
			steps: []step{
				{"fwd RETR", ""},
				{"local 500", ""},
				{"reply 150 opening", "Write 150"},
				{"reply 226 done", "Gate RETR 226; Deliver RETR 226"},
				{"done 226", "Write 500"},
			},
		},
		{
			name: "a failed transfer is not held",
			steps: []step{
				{"fwd STOR", ""},
				{"reply 550 denied", "Deliver STOR 550"},
			},
		},
		{
			name: "ABOR on vsftpd and proftpd: 426 answers the transfer, 226 the ABOR", quirks: pure,
			steps: []step{
				{"fwd RETR", ""},
				{"reply 150 opening", "Write 150"},
				{"fwd ABOR", ""},
				{"fwd PASV", ""},
				{"reply 426 Transfer aborted", "Deliver RETR 426"},
				{"done 426", ""},
				{"reply 226 Abort successful", "Deliver ABOR 226"},
				{"done 226", ""},
				{"reply 227 Entering Passive Mode (127,0,0,1,4,1)", "Deliver PASV 227"},
			},
		},
		{
			name: "ABOR on pure-ftpd: its 226 answers the ABOR, the transfer gets none", quirks: pure,
			steps: []step{
				{"fwd RETR", ""},
				{"reply 150-Accepted data connection|150 32768.0 kbytes to download", "Write 150"},
				{"fwd ABOR", ""},
				{"fwd NOOP", ""},
				{"fwd PASV", ""},
				{"reply 150 0.301 seconds (measured here), 12.48 Mbytes per second", "Write 150"},
				{"reply 226 Since you see this ABOR must've succeeded", "Deliver ABOR 226"},
				{"done 226", ""},
				{"reply 200 ok", "Deliver NOOP 200"},
				{"done 200", ""},
				{"reply 227 Entering Passive Mode (127,0,0,1,4,1)", "Deliver PASV 227"},
			},
		},
		{
			name: "proftpd: RETR of a file named ABOR, then ABOR, then PASV stay paired", quirks: pure,
			steps: []step{
				{"fwd RETR", ""},
				{"fwd ABOR", ""},
				{"fwd PASV", ""},
				{"reply 550 ABOR: No such file or directory", "Deliver RETR 550"},
				{"done 550", ""},
				{"reply 226 Abort successful", "Deliver ABOR 226"},
				{"done 226", ""},
				{"reply 227 Entering Passive Mode (127,0,0,1,177,1).", "Deliver PASV 227"},
			},
		},
		{
			name: "a reply merely naming ABOR is not pure-ftpd's", quirks: pure,
			steps: []step{
				{"fwd RETR", ""},
				{"fwd ABOR", ""},
				{"reply 226 ABOR must've succeeded, see this", "Gate RETR 226; Deliver RETR 226"},
			},
		},
		{
			name: "unsolicited 421: written, then the session ends",
			steps: []step{
				{"reply 421 Timeout.", "Write 421; Close unsolicited 421"},
				{"fwd NOOP", ""},
				{"local 500", ""},
			},
		},
		{
			name: "a daemon that answers twice: the second reply cannot answer PASS",
			steps: []step{
				{"fwd NOOP", ""},
				{"fwd USER", ""},
				{"reply 200 once", "Deliver NOOP 200"},
				{"done 200", ""},
				{"reply 200 twice", "Close USER 421 out of step"},
				{"end", "Settle USER"},
			},
		},
		{
			name: "a daemon that never answers HELP: the 331 cannot answer PASS",
			steps: []step{
				{"fwd HELP", ""},
				{"fwd PASS a1", ""},
				{"reply 331 password", "Deliver HELP 331"},
				{"done 331", ""},
				{"reply 530 no", "Settle PASS 530 a1; Deliver PASS 530 a1"},
			},
		},
		{
			name: "a reply while the head's is being delivered is out of step",
			steps: []step{
				{"fwd NOOP", ""},
				{"reply 200 ok", "Deliver NOOP 200"},
				{"reply 200 again", "Close 421 out of step"},
			},
		},
		{
			name: "the session ends: attempts without a reply are settled once",
			steps: []step{
				{"fwd PASS a1", ""},
				{"fwd ACCT a2", ""},
				{"fwd NOOP", ""},
				{"reply 332 account", "Settle PASS 332 a1; Deliver PASS 332 a1"},
				{"end", "Settle ACCT a2"},
				{"end", ""},
			},
		},
		{
			name: "the client's end: replies still come, then the session ends",
			steps: []step{
				{"fwd PASS a1", ""},
				{"local 500", ""},
				{"eof", ""},
				{"reply 530 no", "Settle PASS 530 a1; Deliver PASS 530 a1"},
				{"done 530", "Write 500; Close client gone"},
			},
		},
		{
			name: "the client's end with nothing awaited",
			steps: []step{
				{"eof", "Close client gone"},
			},
		},
		{
			name: "the client's end after QUIT: its goodbye has nobody to go to",
			steps: []step{
				{"fwd QUIT", ""},
				{"eof", "Close client gone"},
			},
		},
		{
			name: "the client's end after QUIT behind a guess: the guess's reply still comes",
			steps: []step{
				{"fwd PASS a1", ""},
				{"fwd QUIT", ""},
				{"eof", ""},
				{"reply 530 no", "Settle PASS 530 a1; Deliver PASS 530 a1"},
				{"done 530", "Close client gone"},
			},
		},
		{
			name: "the client's end after QUIT, the greeting not in yet", greeting: true,
			steps: []step{
				{"fwd QUIT", ""},
				{"eof", ""},
				{"reply 220 hi", "Deliver 220"},
				{"done 220", "Close client gone"},
			},
		},
		{
			name: "QUIT ends the session after its reply",
			steps: []step{
				{"fwd QUIT", ""},
				{"reply 221 bye", "Deliver QUIT 221"},
				{"done 221", "Close quit"},
			},
		},
		{
			name: "the bound holds for local and forwarded entries alike", max: 3,
			steps: []step{
				{"fwd LIST", ""},
				{"local 500", ""},
				{"local 500", ""},
				{"local 500", "Wait"},
				{"fwd NOOP", "Wait NOOP"},
				{"reply 150 here", "Write 150"},
				{"reply 226 done", "Gate LIST 226; Deliver LIST 226"},
				{"local 500", "Wait"}, // the busy head still holds its place
				{"done 226", "Write 500; Write 500"},
				{"local 500", "Write 500"},
				{"fwd NOOP", ""},
				{"fwd NOOP", ""},
				{"fwd NOOP", ""},
				{"fwd NOOP", "Wait NOOP"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.max
			if n == 0 {
				n = 128
			}
			m := New[string](n, tt.greeting, tt.quirks)
			run(t, m, tt.steps)
		})
	}
}

// TestFloodStaysBounded: a million locally answered lines behind an
// unanswered command never grow the queue past its bound.
func TestFloodStaysBounded(t *testing.T) {
	m := New[string](128, false, Quirks{})
	m.Forward("LIST", "")
	waits := 0
	for i := 0; i < 1_000_000; i++ {
		if acts := m.Local(ftpproto.NewReply(500, "no")); len(acts) == 1 && acts[0].Op == Wait {
			waits++
		}
	}
	if m.Len() != 128 || waits != 1_000_000-127 {
		t.Fatalf("Len %d, %d waits; want 128 and %d", m.Len(), waits, 1_000_000-127)
	}
}

func TestVerbTable(t *testing.T) {
	for _, tt := range []struct {
		verb string
		code int
		fits bool
	}{
		{"USER", 331, true}, {"USER", 232, true}, {"USER", 200, false},
		{"PASS", 230, true}, {"PASS", 202, true}, {"PASS", 200, false}, {"PASS", 530, true},
		{"ACCT", 331, false}, {"ACCT", 202, true},
		{"NOOP", 331, true}, {"XYZ", 200, true},
	} {
		if got := Lookup(tt.verb).Fits(tt.code); got != tt.fits {
			t.Errorf("Lookup(%q).Fits(%d) = %v; want %v", tt.verb, tt.code, got, tt.fits)
		}
	}
	for verb, want := range map[string]string{
		"USER": "pre-login login", "PASS": "pre-login login", "QUIT": "pre-login ends", "FEAT": "pre-login rewrite",
		"RETR": "transfer", "LIST": "transfer", "PASV": "rewrite", "EPSV": "rewrite", "SITE": "", "NOOP": "pre-login",
	} {
		v := Lookup(verb)
		var got []string
		for _, f := range []struct {
			on   bool
			name string
		}{{v.PreLogin, "pre-login"}, {v.Transfer, "transfer"}, {v.Login, "login"}, {v.Rewrite, "rewrite"}, {v.Ends, "ends"}} {
			if f.on {
				got = append(got, f.name)
			}
		}
		if s := strings.Join(got, " "); s != want {
			t.Errorf("%s: %q; want %q", verb, s, want)
		}
	}
}
