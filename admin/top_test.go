package admin

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode"
)

// TestRenderTop: one frame of `ftpguard top` from a fixed status: the
// rates over the last minute of the history, the bans (worst offender
// first) with time left, the busiest addresses and usernames of the
// recent events, and the health.
func TestRenderTop(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h, f := newFakeHistory(10 * time.Second)
	for i := range 8 { // 7 steps of 10s; the last 6 are the last minute
		f.s.LoginsFailed = uint64(i * 10)
		f.s.LoginsOK = uint64(i)
		f.s.Rejects["banned"] = uint64(i * 30)
		f.s.BytesDown = uint64(i) << 20
		f.s.SessionsActive = 3
		h.Sample(now.Add(time.Duration(i-7) * 10 * time.Second))
	}
	s := Status{
		Version: "v1.2.3", Mode: "enforce", Uptime: "3h2m", Now: now,
		Health: Health{Status: "ok", Backend: backendHealth{Address: "127.0.0.1:2121", OK: true, DialMS: 0.3},
			Store: storeHealth{Kind: "file", OK: true}},
		Counters: snapshot{SessionsActive: 3, SessionsTotal: 90, LoginsOK: 7, LoginsFailed: 70, BansActive: 2, BansTotal: 3},
		Bans: []banView{
			{banJSON: banJSON{Key: "198.51.100.9/32", Reason: "budget", Count: 1, SecondsLeft: 3600, Until: now.Add(time.Hour)}},
			{banJSON: banJSON{Key: "203.0.113.7/32", Reason: "budget", Count: 3, SecondsLeft: 90, Until: now.Add(90 * time.Second)}},
		},
		Events: []Event{
			{Msg: "login failed", Peer: "203.0.113.7", User: "root", Count: 5},
			{Msg: "login failed", Peer: "198.51.100.9", User: "admin", Count: 1},
			{Msg: "reject", Peer: "203.0.113.7", Key: "203.0.113.7/32", Reason: "banned", Count: 8},
			{Msg: "login failed", Peer: "203.0.113.7", User: "admin", Count: 2},
			{Msg: "login ok", Peer: "192.0.2.1", User: "alice", Count: 1},
		},
		History: h.View(),
	}
	var b strings.Builder
	renderTop(&b, s, 10)
	got := b.String()
	for _, want := range []string{
		"ftpguard v1.2.3  mode enforce  up 3h2m",
		"health OK",
		"backend 127.0.0.1:2121 reachable (0.3 ms)   store file ok, 0 errors",
		"rates /min (last 1m): failed guesses 60  logins ok 6  refused 180  bans 0  relayed 6.0 MiB/min",
		"refused /min by reason: banned 180",
		"BANS IN FORCE (2)",
		"KEY              OFFENCES  LEFT   REASON\n203.0.113.7/32   3         1m30s  budget\n198.51.100.9/32  1         1h0m   budget\n",
		"ADDRESS       FAILED  REFUSED    USERNAME  FAILED\n203.0.113.7   7       8          root      5\n198.51.100.9  1       0          admin     3\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("frame lacks %q", want)
		}
	}
	if strings.Contains(got, "alice") {
		t.Error("a successful login's username is listed among the busiest")
	}
	if t.Failed() {
		t.Logf("frame:\n%s", got)
	}

	// No history yet: the frame says so.
	s.History = newHistory(time.Second, f.read).View()
	b.Reset()
	renderTop(&b, s, 10)
	if !strings.Contains(b.String(), "rates /min: none yet (the history takes a sample every 1s)") {
		t.Errorf("frame without history:\n%s", b.String())
	}
}

// TestTerminalControlsCleaned: a username is the client's (any printable
// byte string the daemon accepts, U+0080–U+009F included: the proxy
// refuses only C0 controls), so `ftpguard top` and `users list` must not
// hand a terminal its C1 controls (U+009B is CSI, U+009D OSC: clear the
// screen, retitle it, or set the clipboard with OSC 52) nor bidi overrides.
func TestTerminalControlsCleaned(t *testing.T) {
	const evil = "r\u009b2J\u009d52;c;cm0gLXJmIH4K\u009c\u202eoot\x1b[2J"
	s := Status{Version: "v1", Mode: "enforce", Now: time.Now(),
		Events: []Event{{Msg: "login failed", Peer: "203.0.113.7", User: evil, Count: 3}}}
	var b strings.Builder
	renderTop(&b, s, 10)
	writeUsersTable(&b, []userJSON{{Name: evil, Failures: 5}})
	writeBansTable(&b, []banJSON{{Key: "203.0.113.7/32", Source: "ftpguard", Reason: evil, Count: 1}})
	got := b.String()
	if i := strings.IndexFunc(got, func(r rune) bool {
		return r >= 0x80 && r <= 0x9f || r == 0x1b || r == '\u202e'
	}); i >= 0 {
		t.Errorf("output carries a terminal control at byte %d: %q", i, got)
	}
	if !strings.Contains(got, "r?2J?52;c;cm0gLXJmIH4K??oot?[2J") {
		t.Errorf("the username is not shown with its controls replaced: %q", got)
	}
}

// TestJSONControlsEscaped: the CLI's -json output escapes what the table
// output replaces: a C1 control or a bidi override in a client-chosen
// string is written \uXXXX (encoding/json writes them raw, and a terminal
// obeys them), and the output still decodes to the same value.
func TestJSONControlsEscaped(t *testing.T) {
	const evil = "r\u009b2J\u009d52;c\u009c\u202eoot\x1b[2J \U000e0041 é"
	in := []userJSON{{Name: evil, Failures: 5}}
	var b strings.Builder
	if err := printJSON(&b, in); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	if i := strings.IndexFunc(got, func(r rune) bool {
		return r != '\n' && r != ' ' && !unicode.IsPrint(r)
	}); i >= 0 {
		t.Errorf("output carries a control at byte %d: %q", i, got)
	}
	var back []userJSON
	if err := json.Unmarshal([]byte(got), &back); err != nil || len(back) != 1 || back[0].Name != evil {
		t.Fatalf("decoded back as %+v (%v), want %q", back, err, evil)
	}
	if !strings.Contains(got, `é`) {
		t.Errorf("a printable non-ASCII letter was escaped too: %q", got)
	}
}
