// Package pairing pairs an FTP daemon's replies with the commands they
// answer, and orders the proxy's own replies among them.
//
// A Machine is the session's queue of entries awaiting their turn: the
// daemon's greeting, each command forwarded (with the caller's data T, e.g.
// the login attempt it carries), each reply of the proxy's own that must
// wait for the replies to commands before it. Events go in — a command
// forwarded, a local reply, a reply of the daemon, the client's end of
// input, the session's end — and Actions come out: write this reply, let
// the login policy settle that entry, hold the reply until the data is
// relayed, wait for room, close the session. In the spirit of
// net/textproto's Pipeline, the sequencing is kept apart from the I/O: a
// Machine does no I/O, takes no lock, reads no clock and knows no limiter.
// The session's two I/O loops carry out its actions.
//
// The reply to the head entry is delivered in two steps: Reply returns
// the actions that come before its write (Settle, Gate, Deliver) and
// leaves the head in place — busy — so that nothing overtakes it while the
// caller settles, holds (tarpit, data gate) and rewrites it; Delivered,
// called once the reply is written, pops it and returns what comes next
// (local replies that waited for it, the end of the session).
//
// A Machine is not safe for concurrent use: the session steps it, and
// carries out its Write actions, under one lock, so writes to the client
// keep the order the Machine gives them. Its zero value is not usable;
// make one with New.
package pairing

import (
	"github.com/ftpguard/ftpguard/ftpproto"
)

// Op is what an Action asks of the session.
type Op uint8

const (
	// Write: write Reply to the client as it is, now.
	Write Op = iota + 1
	// Settle: the login policy takes Reply, the final reply to the login
	// command Verb, and settles the attempt Data carries. Reply.Code 0: no
	// reply will come (the session ends first): a guess is a failure
	// (docs/design.md rule 1).
	Settle
	// Gate: a transfer's positive final reply: hold it until the data it
	// reports complete has been relayed to the client.
	Gate
	// Deliver: write Reply, the head's final reply — rewritten by the
	// proxy first if Info.Rewrite — then call Delivered.
	Deliver
	// Wait: the queue is full (Max entries): the command or local reply
	// was not taken; stop reading the client until Room, then step it
	// again.
	Wait
	// Close: end the session, writing Reply first unless its Code is 0.
	Close
)

var opNames = [...]string{"?", "Write", "Settle", "Gate", "Deliver", "Wait", "Close"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "?"
}

// Action is one thing for the session to do, in order.
type Action[T any] struct {
	Op    Op
	Verb  string // the entry's verb ("" for the greeting); for Write of a local reply, ""
	Info  Verb   // Lookup(Verb)
	Data  T      // the entry's data (Settle, Deliver)
	Reply ftpproto.Reply
	// Why says, for a Close, what happened (Why… constants).
	Why string
}

// Why a Machine closes a session (Action.Why of a Close).
const (
	WhyOutOfStep   = "out of step"     // a reply that cannot answer its command, or one too many
	WhyUnsolicited = "unsolicited 421" // the daemon's own 421 with nothing awaiting a reply
	WhyQuit        = "quit"            // the reply to QUIT was written
	WhyNotGreeted  = "not greeted"     // the daemon's greeting was not 220
	WhyClientGone  = "client gone"     // the client's input ended and nothing awaits a reply
)

// Quirks are the daemons' ways of answering that the pairing must know of.
// The zero value knows none.
type Quirks struct {
	// AbortOnly reports whether r, a final reply while a transfer command
	// and then ABOR await their replies, is the ABOR's own and the
	// transfer gets none (pure-ftpd). It must match only what the daemon
	// that has the quirk really sends.
	AbortOnly func(r ftpproto.Reply) bool
}

// OutOfStep is the reply written when the daemon answered a command twice
// or not at all: from there on replies would settle the wrong commands.
var OutOfStep = ftpproto.NewReply(421, "Service not available: the FTP server's replies are out of step; closing.")

type entry[T any] struct {
	verb     string
	info     Verb
	data     T
	local    bool // a reply of the proxy's own, waiting for its turn
	reply    ftpproto.Reply
	greeting bool
	settled  bool // Settle was given for it
}

// Machine is the pairing state of one session.
type Machine[T any] struct {
	q      []entry[T]
	max    int
	quirks Quirks
	busy   bool // the head's reply is being delivered (Reply → Delivered)
	eof    bool // the client's input ended
	ended  bool // Close or End was given
}

// New makes a Machine holding at most max entries (forwarded commands
// and local replies alike; at least 1). greeting: the daemon's greeting is
// awaited first.
func New[T any](n int, greeting bool, q Quirks) *Machine[T] {
	m := &Machine[T]{max: max(n, 1), quirks: q}
	if greeting {
		m.q = append(m.q, entry[T]{greeting: true})
	}
	return m
}

// Len is the number of entries awaiting their turn, the head included.
func (m *Machine[T]) Len() int { return len(m.q) }

// Room reports whether one more entry can be taken.
func (m *Machine[T]) Room() bool { return len(m.q) < m.max }

// Ended reports whether the Machine gave Close or End.
func (m *Machine[T]) Ended() bool { return m.ended }

// Forward records that the command verb is about to be sent to the
// daemon, carrying data. With no room it returns Wait and records
// nothing: the command must not be sent yet.
func (m *Machine[T]) Forward(verb string, data T) []Action[T] {
	if m.ended {
		return nil
	}
	if !m.Room() {
		return []Action[T]{{Op: Wait, Verb: verb}}
	}
	m.q = append(m.q, entry[T]{verb: verb, info: Lookup(verb), data: data})
	return nil
}

// Local orders r, a reply of the proxy's own, after the replies to the
// commands forwarded before it: Write now if none awaits, else queued.
// Queued replies count against the bound like commands (a client that
// sends lines the proxy answers itself while a command is unanswered
// cannot make the queue grow): with no room it returns Wait.
func (m *Machine[T]) Local(r ftpproto.Reply) []Action[T] {
	if m.ended {
		return nil
	}
	if len(m.q) == 0 {
		return []Action[T]{{Op: Write, Reply: r}}
	}
	if !m.Room() {
		return []Action[T]{{Op: Wait}}
	}
	m.q = append(m.q, entry[T]{local: true, reply: r})
	return nil
}

// Reply takes one reply of the daemon.
//
//   - With nothing awaiting a reply it is unsolicited (the daemon's own
//     timeout): written as it is; a 421 then ends the session.
//   - A 1xx is written at once: the command awaits more.
//   - A final reply that cannot answer the head (Verb.Fits), or one that
//     comes while the head's reply is being delivered, means the daemon
//     is out of step: Close with OutOfStep.
//   - Else the head becomes busy and the actions are Settle (login
//     verbs), Gate (a transfer's positive reply) and Deliver.
func (m *Machine[T]) Reply(r ftpproto.Reply) []Action[T] {
	if m.ended {
		return nil
	}
	if len(m.q) == 0 {
		acts := []Action[T]{{Op: Write, Reply: r}}
		if r.Code == 421 {
			acts = append(acts, m.close(ftpproto.Reply{}, WhyUnsolicited))
		}
		return acts
	}
	if m.busy {
		return []Action[T]{m.close(OutOfStep, WhyOutOfStep)}
	}
	if r.Code < 200 {
		return []Action[T]{{Op: Write, Reply: r}}
	}
	if m.answersAbort(r) {
		m.q = m.q[1:] // the transfer gets no reply of its own
	}
	h := &m.q[0]
	if !h.info.Fits(r.Code) {
		a := m.close(OutOfStep, WhyOutOfStep)
		a.Verb, a.Info = h.verb, h.info
		return []Action[T]{a}
	}
	m.busy = true
	var acts []Action[T]
	if h.info.Login {
		h.settled = true
		acts = append(acts, Action[T]{Op: Settle, Verb: h.verb, Info: h.info, Data: h.data, Reply: r})
	}
	if h.info.Transfer && r.Code < 300 {
		acts = append(acts, Action[T]{Op: Gate, Verb: h.verb, Info: h.info, Data: h.data, Reply: r})
	}
	return append(acts, Action[T]{Op: Deliver, Verb: h.verb, Info: h.info, Data: h.data, Reply: r})
}

// answersAbort reports whether r is the reply to an ABOR queued right
// behind a transfer that gets no reply of its own (Quirks.AbortOnly).
func (m *Machine[T]) answersAbort(r ftpproto.Reply) bool {
	return m.quirks.AbortOnly != nil && len(m.q) >= 2 && m.q[0].info.Transfer && !m.q[1].local &&
		m.q[1].verb == "ABOR" && m.quirks.AbortOnly(r)
}

// Delivered records that the head's final reply (of code) was written: the
// head is popped, and the local replies that waited for it are written.
// The session ends after the reply to QUIT, after a greeting other than
// 220, or when the client's input has ended and nothing awaits a reply
// but, maybe, a QUIT's.
func (m *Machine[T]) Delivered(code int) []Action[T] {
	if m.ended || !m.busy || len(m.q) == 0 {
		return nil
	}
	m.busy = false
	h := m.q[0]
	m.q = m.q[1:]
	var acts []Action[T]
	for len(m.q) > 0 && m.q[0].local {
		acts = append(acts, Action[T]{Op: Write, Reply: m.q[0].reply})
		m.q = m.q[1:]
	}
	switch {
	case h.info.Ends:
		acts = append(acts, m.close(ftpproto.Reply{}, WhyQuit))
	case h.greeting && code != 220:
		acts = append(acts, m.close(ftpproto.Reply{}, WhyNotGreeted))
	case m.eof && m.onlyGoodbye():
		acts = append(acts, m.close(ftpproto.Reply{}, WhyClientGone))
	}
	return acts
}

// ClientEOF records that the client's input ended. Replies to commands
// already forwarded still come (they settle attempts); with none awaited,
// or only the reply to a QUIT (a goodbye with nobody left to read it, and
// no guess, transfer or reply of the proxy's own behind it), the session
// ends now.
func (m *Machine[T]) ClientEOF() []Action[T] {
	m.eof = true
	if m.ended || m.busy || !m.onlyGoodbye() {
		return nil
	}
	return []Action[T]{m.close(ftpproto.Reply{}, WhyClientGone)}
}

// onlyGoodbye reports whether nothing awaits a reply but, maybe, a QUIT.
func (m *Machine[T]) onlyGoodbye() bool {
	for _, e := range m.q {
		if !e.info.Ends || e.local || e.greeting {
			return false
		}
	}
	return true
}

// End empties the Machine as the session ends: each login entry still
// awaiting its reply is settled without one (docs/design.md rule 1).
func (m *Machine[T]) End() []Action[T] {
	var acts []Action[T]
	for _, e := range m.q {
		if e.info.Login && !e.settled {
			acts = append(acts, Action[T]{Op: Settle, Verb: e.verb, Info: e.info, Data: e.data})
		}
	}
	m.q, m.busy, m.ended = nil, false, true
	return acts
}

func (m *Machine[T]) close(r ftpproto.Reply, why string) Action[T] {
	m.ended = true
	return Action[T]{Op: Close, Reply: r, Why: why}
}
