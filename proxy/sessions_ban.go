package proxy

// A ban ends the sessions it covers ([limits] end_sessions_on_ban): the
// proxy keeps a registry of its live sessions by peer, of its own (so it
// does not depend on the session table's layout), and ends the ones a new
// ban covers: before login at once (after the reply to a login command in
// flight), and on request the logged-in ones too, after their current
// reply or at once.

import (
	"net/netip"
	"strings"
	"sync"
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

// covered returns the sessions whose peer the ban of prefix covers.
func (r *banRegistry) covered(prefix netip.Prefix) []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*session
	for ss, a := range r.m {
		if limiter.Covers(prefix, a) {
			out = append(out, ss)
		}
	}
	return out
}

// EndSessions ends the open sessions whose peer the ban of prefix covers,
// with "421 … banned (reason) …", and returns how many it ends: those not
// logged in — at once, or after the reply to a login command in flight —
// and, with all, the logged-in ones too: after their current reply (a
// transfer's included), or with now at once (a transfer in progress is
// cut). A session whose own guess made the ban ends by itself; an
// allowlisted peer's sessions are never ended. In observe
// mode no session is ended (the log says which would be). It does not
// block: the sessions are ended by goroutines of their own. Safe for
// concurrent use, e.g. from the limiter's ban hook.
func (s *Server) EndSessions(prefix netip.Prefix, reason string, all, now bool) int {
	if !prefix.IsValid() {
		return 0
	}
	text := "Service not available: your address is banned (" + shortReason(reason) + "); closing control connection."
	n := 0
	for _, ss := range s.live.covered(prefix) {
		if ss.banning.Load() || ss.closing.Load() || ss.loggedIn.Load() && !all {
			continue
		}
		if s.lim.Check(time.Now(), ss.peer.Addr()).Allowlisted {
			continue // a ban of a network holding an allowlisted address never ends its sessions
		}
		if s.config().Observe {
			ss.log.Warn("observe: would reject", "reason", "banned", "ban", prefix.String())
			s.obs.Reject("observe")
			continue
		}
		n++
		go ss.endForBan(prefix, text, now)
	}
	return n
}

// shortReason is a ban's reason for a client's eyes: the part before any
// ":" (a widened ban's reason lists keys), bounded.
func shortReason(r string) string {
	r, _, _ = strings.Cut(r, ":")
	if r == "" {
		r = "admin"
	}
	return logSafe(r)
}

// endForBan ends the session with a 421 carrying text: at once if now or
// nothing awaits a reply, else after the reply the session awaits (reply
// checks banEnd once it has delivered one).
func (s *session) endForBan(prefix netip.Prefix, text string, now bool) {
	s.mu.Lock()
	s.banEnd.Store(&text)
	s.banBy = prefix
	at := now || s.pair.Len() == 0
	s.mu.Unlock()
	if at {
		s.srv.reject(s.log, "banned", "ban", prefix.String(), "logged_in", s.loggedIn.Load())
		s.replyFinal(421, text)
		s.abort()
	}
}

// endAfterReplyLocked, called by reply under s.mu once a reply is
// delivered, ends a session a ban marked (endForBan) when no reply is
// awaited any more. It reports whether the session goes on. (A session
// whose own guess made the ban has ended before, and is not counted here.)
func (s *session) endAfterReplyLocked() bool {
	t := s.banEnd.Load()
	if t == nil || s.pair.Len() > 0 {
		return true
	}
	s.srv.reject(s.log, "banned", "ban", s.banBy.String(), "logged_in", s.loggedIn.Load())
	s.writeLocked(ftpproto.NewReply(421, *t))
	return false
}
