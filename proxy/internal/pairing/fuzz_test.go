package pairing

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// fuzzVerbs and fuzzCodes are what FuzzMachine's events draw from: every
// kind of verb the table knows and one it does not, and final codes that
// fit some verbs and not others.
var (
	fuzzVerbs = []string{"USER", "PASS", "ACCT", "QUIT", "FEAT", "NOOP", "RETR", "LIST", "STOR", "ABOR", "PASV", "SYST", "SITE"}
	fuzzCodes = []int{110, 150, 200, 202, 211, 215, 220, 221, 226, 227, 230, 232, 250, 331, 332, 350, 421, 426, 500, 530, 550}
)

// abortOnly is the AbortOnly quirk of FuzzMachine's daemon.
var abortOnly = ftpproto.NewReply(226, "abort only")

// FuzzMachine decodes the fuzz bytes into a session's events — the first
// byte the queue's bound (1–8), whether a greeting is awaited and whether
// the daemon has the AbortOnly quirk; then, two bytes each, commands
// forwarded, local replies, daemon replies (1xx, final, the quirk's),
// Delivered (for the reply being delivered, as the session calls it, or
// for any code), the client's end and the session's end — and checks the
// Machine's actions against a model of its queue (docs/design.md, "The
// pairing machine"):
//   - the queue never holds more than its bound, and Wait (from Forward or
//     Local only, alone) takes nothing;
//   - replies reach the client in the order of the commands and local
//     replies they answer: a final reply is delivered to the oldest
//     forwarded entry (past one transfer the quirk's reply to the ABOR
//     behind it leaves unanswered), a local reply written once everything
//     before it is answered, a 1xx written at once, a reply with nothing
//     awaited written as it is (a 421 then closes);
//   - a final reply that cannot answer its entry, or one while another is
//     being delivered, closes the session out of step;
//   - every forwarded command is delivered at most once; Gate only for a
//     transfer's 2xx, just before its Deliver; Close comes last, and after
//     it only End acts;
//   - every login command forwarded is settled exactly once by the time
//     End has run (docs/design.md rule 1: every guess is counted).
func FuzzMachine(f *testing.F) {
	for _, seed := range []struct {
		head   byte // bound − 1 | 8: greeting | 0x10: AbortOnly
		events string
	}{
		{7 | 8, "reply 220, done, fwd USER, reply 331, done, fwd PASS, reply 530, done, fwd QUIT, reply 221, done"},
		{7, "fwd NOOP, fwd SYST, fwd PASV, reply 200, done, reply 215, done, reply 227, done, reply 200"},
		{7, "local 500, fwd NOOP, local 500, fwd FEAT, local 500, reply 200, local 500, done, reply 211, done"},
		{2, "fwd LIST, local 500, local 500, local 500, fwd NOOP, reply 150, reply 226, local 500, done, fwd NOOP"},
		{7 | 0x10, "fwd RETR, reply 150, fwd ABOR, fwd NOOP, reply 150, abort, done, reply 200, done"},
		{7 | 0x10, "fwd RETR, fwd ABOR, fwd PASV, reply 550, done, reply 226, done, reply 227, done"},
		{7, "fwd NOOP, fwd USER, reply 200, done, reply 200, end"},
		{7, "fwd NOOP, reply 200, reply 200"},
		{7, "fwd PASS, fwd ACCT, fwd NOOP, reply 332, end"},
		{7, "fwd PASS, local 500, eof, reply 530, done"},
		{7 | 8, "fwd QUIT, eof, reply 220, done"},
		{7, "reply 421, fwd NOOP, local 500"},
		{7 | 8, "reply 421, done, reply 200"},
	} {
		f.Add(encodeEvents(seed.head, seed.events))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		var quirks Quirks
		if in[0]&0x10 != 0 {
			quirks.AbortOnly = func(r ftpproto.Reply) bool { return r.Code == 226 && r.Text() == abortOnly.Text() }
		}
		md := newModel(t, int(in[0]&7)+1, in[0]&8 != 0, quirks.AbortOnly != nil)
		m := New[int](md.max, md.greeting, quirks)
		in = in[1:]
		for n := 0; len(in) >= 2 && !md.endedByEnd && n < 512; in, n = in[2:], n+1 {
			op, arg := in[0], int(in[1])
			switch op % 8 {
			case 0, 1:
				md.forward(m, fuzzVerbs[arg%len(fuzzVerbs)])
			case 2:
				md.local(m, fuzzCodes[arg%len(fuzzCodes)])
			case 3, 4:
				r := ftpproto.NewReply(fuzzCodes[arg%len(fuzzCodes)], "daemon")
				if arg >= 200 {
					r = abortOnly
				}
				md.reply(m, r)
			case 5:
				md.delivered(m, arg)
			case 6:
				md.eof(m)
			case 7:
				if arg < 16 {
					md.end(m)
				} else {
					md.delivered(m, arg)
				}
			}
		}
		md.end(m)
	})
}

// encodeEvents writes FuzzMachine's input for a readable list of events:
// "fwd VERB", "local CODE", "reply CODE", "abort" (the quirk's reply),
// "done", "eof", "end".
func encodeEvents(head byte, events string) []byte {
	out := []byte{head}
	for _, ev := range strings.Split(events, ", ") {
		name, arg, _ := strings.Cut(ev, " ")
		code, _ := strconv.Atoi(arg)
		v, c := slices.Index(fuzzVerbs, arg), slices.Index(fuzzCodes, code)
		switch {
		case name == "fwd" && v >= 0:
			out = append(out, 0, byte(v))
		case name == "local" && c >= 0:
			out = append(out, 2, byte(c))
		case name == "reply" && c >= 0:
			out = append(out, 3, byte(c))
		case name == "abort":
			out = append(out, 3, 200)
		case name == "done":
			out = append(out, 5, 0)
		case name == "eof":
			out = append(out, 6, 0)
		case name == "end":
			out = append(out, 7, 0)
		default:
			panic("unknown event " + ev)
		}
	}
	return out
}

// item is an entry of the model's queue.
type item struct {
	id       int // the Data of a forwarded command (1, 2, …); 0: the greeting
	verb     string
	local    bool
	greeting bool
	reply    ftpproto.Reply // a local reply, its text unique
}

type model struct {
	t          *testing.T
	max        int
	greeting   bool
	quirk      bool
	q          []item
	busy       int // the Deliver under way: its code, 0 if none
	ids        int
	locals     int
	answered   map[int]bool // the forwarded commands delivered
	settled    map[int]int
	logins     []int // the ids of the login commands taken
	eofed      bool
	closed     bool // a Close was given
	endedByEnd bool
	log        []event // the events, for a failure's message
}

func newModel(t *testing.T, max int, greeting, quirk bool) *model {
	md := &model{t: t, max: max, greeting: greeting, quirk: quirk, answered: map[int]bool{}, settled: map[int]int{}}
	if greeting {
		md.q = append(md.q, item{greeting: true})
	}
	return md
}

// event is one step of FuzzMachine, as its failures print it.
type event struct {
	name, s string
	n       int
}

func (e event) String() string {
	switch e.name {
	case "fwd":
		return fmt.Sprintf("fwd %s#%d", e.s, e.n)
	case "reply":
		return fmt.Sprintf("reply %d %s", e.n, e.s)
	case "local", "done":
		return fmt.Sprintf("%s %d", e.name, e.n)
	}
	return e.name
}

func (md *model) fatalf(format string, args ...any) {
	md.t.Helper()
	evs := make([]string, len(md.log))
	for i, e := range md.log {
		evs[i] = e.String()
	}
	md.t.Fatalf("after %s: %s", strings.Join(evs, ", "), fmt.Sprintf(format, args...))
}

func (md *model) ended() bool { return md.closed || md.endedByEnd }

// check runs the checks every step ends with.
func (md *model) check(m *Machine[int], acts []Action[int]) {
	md.t.Helper()
	for i, a := range acts {
		if a.Op == Close && i != len(acts)-1 {
			md.fatalf("Close is not the last action: %v", acts)
		}
		if a.Op == Close {
			md.closed = true
		}
	}
	if m.Ended() != md.ended() {
		md.fatalf("Ended() = %v, want %v", m.Ended(), md.ended())
	}
	if md.ended() {
		return
	}
	if m.Len() != len(md.q) || m.Len() > md.max {
		md.fatalf("Len() = %d; the model holds %d (bound %d)", m.Len(), len(md.q), md.max)
	}
}

// quiet checks that a step of an ended Machine does nothing.
func (md *model) quiet(acts []Action[int]) bool {
	md.t.Helper()
	if md.ended() && len(acts) > 0 {
		md.fatalf("actions %v after the session's end", acts)
	}
	return md.ended()
}

func (md *model) forward(m *Machine[int], verb string) {
	md.t.Helper()
	md.ids++
	id := md.ids
	md.log = append(md.log, event{"fwd", verb, id})
	room := m.Room()
	acts := m.Forward(verb, id)
	if md.quiet(acts) {
		return
	}
	switch {
	case len(md.q) >= md.max:
		if room || len(acts) != 1 || acts[0].Op != Wait || acts[0].Verb != verb {
			md.fatalf("Forward with a full queue: Room %v, actions %v; want Wait", room, acts)
		}
	case len(acts) != 0:
		md.fatalf("Forward: actions %v", acts)
	default:
		md.q = append(md.q, item{id: id, verb: verb})
		if Lookup(verb).Login {
			md.logins = append(md.logins, id)
		}
	}
	md.check(m, acts)
}

func (md *model) local(m *Machine[int], code int) {
	md.t.Helper()
	md.locals++
	text := "local " + strconv.Itoa(md.locals)
	md.log = append(md.log, event{"local", "", md.locals})
	r := ftpproto.NewReply(code, text)
	acts := m.Local(r)
	if md.quiet(acts) {
		return
	}
	switch {
	case len(md.q) == 0:
		if len(acts) != 1 || acts[0].Op != Write || acts[0].Reply.Text() != text || acts[0].Reply.Code != code {
			md.fatalf("Local with nothing awaited: actions %v; want it written", acts)
		}
	case len(md.q) >= md.max:
		if len(acts) != 1 || acts[0].Op != Wait {
			md.fatalf("Local with a full queue: actions %v; want Wait", acts)
		}
	case len(acts) != 0:
		md.fatalf("Local: actions %v", acts)
	default:
		md.q = append(md.q, item{local: true, reply: r})
	}
	md.check(m, acts)
}

func (md *model) reply(m *Machine[int], r ftpproto.Reply) {
	md.t.Helper()
	md.log = append(md.log, event{"reply", r.Lines[0][4:], r.Code})
	acts := m.Reply(r)
	if md.quiet(acts) {
		return
	}
	write := func() Action[int] { return Action[int]{Op: Write, Reply: r} }
	var want []Action[int]
	switch {
	case len(md.q) == 0:
		want = []Action[int]{write()}
		if r.Code == 421 {
			want = append(want, Action[int]{Op: Close, Why: WhyUnsolicited})
		}
	case md.busy != 0:
		want = []Action[int]{{Op: Close, Reply: OutOfStep, Why: WhyOutOfStep}}
	case r.Code < 200:
		want = []Action[int]{write()}
	default:
		if md.quirk && r.Code == 226 && r.Text() == abortOnly.Text() && len(md.q) >= 2 &&
			Lookup(md.q[0].verb).Transfer && !md.q[0].greeting && !md.q[1].local && md.q[1].verb == "ABOR" {
			md.q = md.q[1:] // the transfer gets no reply of its own
		}
		h := md.q[0] // never a local entry: those behind an answered head are written at once
		if h.local {
			md.fatalf("a local entry heads the queue")
		}
		info := Lookup(h.verb)
		if !info.Fits(r.Code) {
			want = []Action[int]{{Op: Close, Verb: h.verb, Info: info, Reply: OutOfStep, Why: WhyOutOfStep}}
			break
		}
		if md.answered[h.id] && !h.greeting {
			md.fatalf("command #%d delivered twice", h.id)
		}
		md.answered[h.id] = true
		md.busy = r.Code
		if info.Login {
			md.settled[h.id]++
			want = append(want, Action[int]{Op: Settle, Verb: h.verb, Info: info, Data: h.id, Reply: r})
		}
		if info.Transfer && r.Code < 300 {
			want = append(want, Action[int]{Op: Gate, Verb: h.verb, Info: info, Data: h.id, Reply: r})
		}
		want = append(want, Action[int]{Op: Deliver, Verb: h.verb, Info: info, Data: h.id, Reply: r})
	}
	md.same("Reply", acts, want)
	md.check(m, acts)
}

// delivered calls Delivered as the session does, for the reply being
// delivered, or else (nothing being delivered) for a code from arg.
func (md *model) delivered(m *Machine[int], arg int) {
	md.t.Helper()
	code := md.busy
	if code == 0 {
		code = fuzzCodes[arg%len(fuzzCodes)]
	}
	md.log = append(md.log, event{"done", "", code})
	acts := m.Delivered(code)
	if md.quiet(acts) {
		return
	}
	var want []Action[int]
	if md.busy != 0 {
		md.busy = 0
		h := md.q[0]
		md.q = md.q[1:]
		for len(md.q) > 0 && md.q[0].local {
			want = append(want, Action[int]{Op: Write, Reply: md.q[0].reply})
			md.q = md.q[1:]
		}
		switch {
		case Lookup(h.verb).Ends:
			want = append(want, Action[int]{Op: Close, Why: WhyQuit})
		case h.greeting && code != 220:
			want = append(want, Action[int]{Op: Close, Why: WhyNotGreeted})
		case md.eofed && md.onlyGoodbye():
			want = append(want, Action[int]{Op: Close, Why: WhyClientGone})
		}
	}
	md.same("Delivered", acts, want)
	md.check(m, acts)
}

func (md *model) onlyGoodbye() bool {
	return !slices.ContainsFunc(md.q, func(e item) bool { return e.local || e.greeting || !Lookup(e.verb).Ends })
}

func (md *model) eof(m *Machine[int]) {
	md.t.Helper()
	md.log = append(md.log, event{"eof", "", 0})
	md.eofed = true
	acts := m.ClientEOF()
	if md.quiet(acts) {
		return
	}
	var want []Action[int]
	if md.busy == 0 && md.onlyGoodbye() {
		want = []Action[int]{{Op: Close, Why: WhyClientGone}}
	}
	md.same("ClientEOF", acts, want)
	md.check(m, acts)
}

// end runs End, which settles the login commands still awaiting a reply,
// and checks that every login command taken has been settled once.
func (md *model) end(m *Machine[int]) {
	md.t.Helper()
	md.log = append(md.log, event{"end", "", 0})
	acts := m.End()
	if md.endedByEnd && len(acts) > 0 {
		md.fatalf("a second End: actions %v", acts)
	}
	for _, a := range acts {
		if a.Op != Settle || a.Reply.Code != 0 || !a.Info.Login {
			md.fatalf("End: action %+v", a)
		}
		md.settled[a.Data]++
	}
	for _, id := range md.logins {
		if md.settled[id] != 1 {
			md.fatalf("login command #%d settled %d times", id, md.settled[id])
		}
	}
	if len(md.settled) != len(md.logins) {
		md.fatalf("%d settled, %d login commands taken", len(md.settled), len(md.logins))
	}
	md.endedByEnd = true
	if !m.Ended() || m.Len() != 0 {
		md.fatalf("after End: Ended %v, Len %d", m.Ended(), m.Len())
	}
}

// same compares actions with those the model wants, field by field.
func (md *model) same(what string, got, want []Action[int]) {
	md.t.Helper()
	eq := func(a, b Action[int]) bool {
		if a.Op != b.Op || a.Verb != b.Verb || a.Info.Login != b.Info.Login || a.Info.Transfer != b.Info.Transfer ||
			a.Data != b.Data || a.Why != b.Why {
			return false
		}
		return a.Reply.Code == b.Reply.Code && slices.Equal(a.Reply.Lines, b.Reply.Lines)
	}
	if !slices.EqualFunc(got, want, eq) {
		md.fatalf("%s: actions %v; want %v", what, got, want)
	}
}
