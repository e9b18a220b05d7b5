package proxy

// A ban ends the sessions it covers ([limits] end_sessions_on_ban): the
// proxy keeps a registry of its live sessions by peer, of its own (so it
// does not depend on the session table's layout), and ends the ones a new
// ban covers (EndSessions), or the ones new settings refuse (Recheck,
// after a reload): before login at once (after the reply to a
// login command in flight), and on request the logged-in ones too, after
// their current reply or at once.

import (
	"fmt"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// banRegistry is the live sessions of a Server by peer address. The zero
// value is ready to use; safe for concurrent use.
type banRegistry struct {
	mu sync.Mutex
	m  map[*session]netip.Addr
}

// track registers ss and returns the function that unregisters it.
func (r *banRegistry) track(ss *session) func() {
	r.mu.Lock()
	if r.m == nil {
		r.m = make(map[*session]netip.Addr)
	}
	r.m[ss] = ss.peer.Addr()
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.m, ss)
		r.mu.Unlock()
	}
}

// covered returns the sessions whose peer a ban of set covers, each with
// the value of the longest such ban: one pass over the sessions, however
// many bans set holds (limiter.CoverSet).
func (r *banRegistry) covered(set *limiter.CoverSet[int]) map[*session]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[*session]int)
	for ss, a := range r.m {
		if i, ok := set.Lookup(a); ok {
			out[ss] = i
		}
	}
	return out
}

// all returns every live session.
func (r *banRegistry) all() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session, 0, len(r.m))
	for ss := range r.m {
		out = append(out, ss)
	}
	return out
}

// ending is why a session is ended mid-way: what the log says (the reject
// reason and its attributes) and the text of the 421 the client gets.
type ending struct {
	reason string // the reject reason: "banned" or "geo"
	attrs  []any  // "ban", the prefix; or "rule", the [geo] rule
	text   string
}

// with returns e's attributes, then more (a new slice: e is shared by
// the sessions one ban ends).
func (e *ending) with(more ...any) []any { return append(slices.Clip(e.attrs), more...) }

// banEnding is the ending of a session a ban of prefix covers (reason: the
// ban's, shown to the client by shortReason).
func banEnding(prefix netip.Prefix, reason string) *ending {
	return &ending{reason: "banned", attrs: []any{"ban", prefix.String()},
		text: "Service not available: your address is banned (" + shortReason(reason) + "); closing control connection."}
}

// geoEnding is the ending of a session the gate hook refuses now (rule:
// what the hook said, e.g. a [geo] rule's name).
func geoEnding(rule string) *ending {
	return &ending{reason: "geo", attrs: []any{"rule", rule},
		text: "Service not available from your network; closing control connection."}
}

// refusal is what the gate would say of addr now, for a session already
// open (its next guess, a recheck after a reload): a ban of the limiter's
// (its own, or an external source's such as a CrowdSec decision), or a
// refusal of the gate hook (a [geo] deny rule, a budget rule's ban). nil:
// served — always for an allowlisted peer. The shared store being down
// with fail_closed is no ban: Begin refuses the guesses then.
func (s *Server) refusal(now time.Time, addr netip.Addr) *ending {
	return s.refusalBy(now, addr, s.hooks.gate)
}

// refusalBy is refusal, asking gate as the gate hook.
func (s *Server) refusalBy(now time.Time, addr netip.Addr, gate func(netip.Addr) (bool, string)) *ending {
	d := s.lim.Check(now, addr)
	switch {
	case d.Allowlisted:
		return nil
	case !d.Allowed && !d.StoreDown:
		return banEnding(d.Ban.Key, d.Ban.Reason)
	}
	if gate != nil {
		if no, rule := gate(addr); no {
			return geoEnding(rule)
		}
	}
	return nil
}

// EndSessions ends the open sessions whose peer the ban of prefix covers,
// with "421 … banned (reason) …", and returns how many it ends: those not
// logged in — at once, or after the reply to a login command in flight —
// and, with all, the logged-in ones too: after their current reply (a
// transfer's included), or with now at once (a transfer in progress is
// cut). A session settling a login's reply (whose own guess may have
// made the ban) ends after that reply, with its own 421 if its guess made
// the ban; an allowlisted peer's sessions are never ended. In observe
// mode no session is ended (the log says which would be). It does not
// block: the sessions are ended by goroutines of their own. Safe for
// concurrent use, e.g. from the limiter's ban hook.
func (s *Server) EndSessions(prefix netip.Prefix, reason string, all, now bool) int {
	return s.EndBans([]Ban{{prefix, reason}}, all, now)
}

// EndBansSoon is EndSessions for bans that come one at a time in floods —
// the bans a limiter learns from the shared store, which a resync after a
// subscription gap reports one by one, tens of thousands of them: it
// queues the ban and returns, and one goroutine ends the sessions of all
// the bans queued meanwhile in one EndBans pass a mode, then of those
// queued during that pass, until none is left. One pass a ban would walk
// every open session under the registry's lock a ban: 10,000 bans over
// 5,000 sessions cost seconds of CPU, and held up sessions starting and
// ending meanwhile (BenchmarkEndBansSoon). Safe for concurrent use.
func (s *Server) EndBansSoon(b Ban, all, now bool) {
	q := &s.endq
	q.mu.Lock()
	q.pending = append(q.pending, queuedBan{b, all, now})
	start := !q.busy
	q.busy = true
	q.mu.Unlock()
	if start {
		go s.endQueued()
	}
}

// endQueue holds the bans EndBansSoon queued. The zero value is empty.
type endQueue struct {
	mu      sync.Mutex
	pending []queuedBan
	busy    bool         // a goroutine runs endQueued
	passes  atomic.Int64 // EndBans calls made, for tests
}

type queuedBan struct {
	Ban
	all, now bool
}

// endQueued ends the sessions of the queued bans, a batch at a time, and
// returns once the queue is empty. A panic is recovered (logged, counted)
// with what was queued dropped: those sessions are still refused at their
// next login command, and the next ban starts afresh.
func (s *Server) endQueued() {
	q := &s.endq
	defer func() {
		if v := recover(); v != nil {
			st := debug.Stack()
			s.log.Error("panic recovered; queued bans' sessions not ended", "panic", logSafe(fmt.Sprint(v)),
				"stack", string(st[:min(len(st), maxPanicStack)]))
			s.obs.Panic()
			q.mu.Lock()
			q.pending, q.busy = nil, false
			q.mu.Unlock()
		}
	}()
	for {
		q.mu.Lock()
		batch := q.pending
		q.pending = nil
		if len(batch) == 0 {
			q.busy = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		callTestHook("endQueued", "")
		var modes [2][2][]Ban // by all, now
		for _, b := range batch {
			m := &modes[b2i(b.all)][b2i(b.now)]
			*m = append(*m, b.Ban)
		}
		for all := range 2 {
			for now := range 2 {
				if bans := modes[all][now]; len(bans) > 0 {
					q.passes.Add(1)
					s.EndBans(bans, all == 1, now == 1)
				}
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Ban is a banned network and the ban's reason, for EndBans.
type Ban struct {
	Prefix netip.Prefix
	Reason string
}

// EndBans is EndSessions for many bans at once (invalid prefixes are
// skipped), in one pass over the open sessions: its cost grows with the
// sessions times the distinct prefix lengths of bans, not times the bans,
// so that the decisions one CrowdSec poll brings — tens of thousands when
// a blocklist is pulled — cannot stall the poll for seconds. A session
// several bans cover ends with the most specific one's reason. Safe for
// concurrent use.
func (s *Server) EndBans(bans []Ban, all, now bool) int {
	var set limiter.CoverSet[int]
	for i, b := range bans {
		set.Add(b.Prefix, i)
	}
	if set.Len() == 0 {
		return 0
	}
	covered := s.live.covered(&set)
	list := make([]*session, 0, len(covered))
	for ss := range covered {
		list = append(list, ss)
	}
	endings := make(map[int]*ending) // one per ban, shared by the sessions it ends
	return s.endSessions(list, all, now, func(ss *session) *ending {
		if s.lim.Check(time.Now(), ss.peer.Addr()).Allowlisted {
			return nil // a ban of a network holding an allowlisted address never ends its sessions
		}
		i := covered[ss]
		if endings[i] == nil {
			endings[i] = banEnding(bans[i].Prefix, bans[i].Reason)
		}
		return endings[i]
	})
}

// Refusals notes which open sessions the gate refused at one moment
// (Server.Refusals), for Recheck. The zero value notes none.
type Refusals struct {
	m map[*session]bool
}

// Refusals notes the open sessions the gate refuses under the settings in
// force (see Recheck): none in observe mode, which refuses nobody, nor an
// allowlisted peer's. Take it before a reload. Safe for concurrent use.
func (s *Server) Refusals() Refusals {
	if s.config().Observe {
		return Refusals{}
	}
	r := Refusals{m: map[*session]bool{}}
	t := time.Now()
	gate := s.hooks.peek
	if gate == nil {
		gate = s.hooks.gate
	}
	for _, ss := range s.live.all() {
		if s.refusalBy(t, ss.peer.Addr(), gate) != nil {
			r.m[ss] = true
		}
	}
	return r
}

// Recheck ends the open sessions whose peer the gate would refuse now and
// that before (Refusals, taken under the settings in force before a
// reload) does not note — the ones a ban that came with new settings
// covers — as EndSessions ends those a new ban covers (all, now: the
// same), and returns how many it ends: a ban of the limiter's (its own, or
// an external source's such as a CrowdSec decision), "421 … banned
// (reason) …", or a refusal of the gate hook (SetGate: a [geo] deny rule),
// "421 Service not available from your network …". So a reload that adds a
// deny rule, takes an address off the allowlist inside a banned network or
// leaves observe mode ends the sessions it newly refuses; one that only
// switches to all does not end logged-in sessions spared by a ban made
// before. Allowlisted peers are never ended; in observe mode none is. It
// does not block. Safe for concurrent use.
func (s *Server) Recheck(before Refusals, all, now bool) int {
	t := time.Now()
	return s.endSessions(s.live.all(), all, now, func(ss *session) *ending {
		if before.m[ss] {
			return nil
		}
		return s.refusal(t, ss.peer.Addr())
	})
}

// endSessions ends those of list that why (asked only of the sessions the
// mode would end, and not ending already) gives an ending, and returns how
// many.
func (s *Server) endSessions(list []*session, all, now bool, why func(*session) *ending) int {
	n := 0
	for _, ss := range list {
		if ss.closing.Load() || ss.ended.Load() != nil || ss.loggedIn.Load() && !all {
			continue
		}
		e := why(ss)
		if e == nil {
			continue
		}
		if s.config().Observe {
			ss.log.Warn("observe: would reject", append([]any{"reason", e.reason}, e.attrs...)...)
			s.obs.Reject("observe")
			continue
		}
		n++
		if ss.banning.Load() {
			// It is settling a login's reply or a trap (its own guess may
			// have made this ban): marked only, it ends once that is done
			// (reply's own ban 421, or endAfterReplyLocked; trapGuess),
			// and its reply comes first. Had it finished meanwhile, it
			// may have passed that check: ended below as any other.
			ss.ended.CompareAndSwap(nil, e)
			if ss.banning.Load() {
				continue
			}
		}
		go ss.endFor(e, now)
	}
	return n
}

// shortReason is a ban's reason for a client's eyes: the part before any
// ":" (a widened ban's reason lists keys, a CrowdSec decision's names its
// scenario), bounded.
func shortReason(r string) string {
	r, _, _ = strings.Cut(r, ":")
	if r == "" {
		r = "admin"
	}
	return logSafe(r)
}

// endFor ends the session with a 421 for e: at once if now or nothing
// awaits a reply, else after the reply the session awaits (reply checks
// ended once it has delivered one).
func (s *session) endFor(e *ending, now bool) {
	if c := s.hsCancel.Load(); c != nil {
		// An AUTH TLS handshake holds s.mu (tls.go): marked, then ended
		// by cancelling it; startTLS logs the reject.
		s.ended.CompareAndSwap(nil, e)
		(*c)()
	}
	s.mu.Lock()
	if s.closing.Load() {
		// Ended already — by another ban's endFor racing this one (two
		// sources at once), or its own: one reject logged and counted.
		s.mu.Unlock()
		return
	}
	s.ended.Store(e)
	at := now || s.pair.Len() == 0
	s.mu.Unlock()
	if at {
		s.srv.reject(s.log, e.reason, e.with("logged_in", s.loggedIn.Load())...)
		s.replyFinal(421, e.text)
		s.abort()
		if now {
			s.cutKernelTransfer() // kernel.go
		}
	}
}

// endAfterReplyLocked, called by reply under s.mu once a reply is
// delivered, ends a session endFor marked when no reply is awaited any
// more, and closes it (so that a login command's refusal racing it writes
// no second 421). It reports whether the session goes on. (A session
// whose own guess made the ban has ended before, and is not counted here.)
func (s *session) endAfterReplyLocked() bool {
	e := s.ended.Load()
	if e == nil || s.pair.Len() > 0 {
		return true
	}
	s.srv.reject(s.log, e.reason, e.with("logged_in", s.loggedIn.Load())...)
	s.writeLocked(ftpproto.NewReply(421, e.text))
	s.closing.Store(true) // under mu: a refusal racing it writes no second 421
	return false
}
