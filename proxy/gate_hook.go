package proxy

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/ftpguard/ftpguard/limiter"
)

// Policy hooks of another package (geo: country and ASN rules), kept out
// of the gate's own code: one call where the gate checks bans, one where a
// guess picks its budget.
type policyHooks struct {
	gate   func(addr netip.Addr) (refuse bool, reason string)
	peek   func(addr netip.Addr) (refuse bool, reason string) // gate, not counting; nil: gate
	limFor func(addr netip.Addr) *limiter.Limiter
}

// SetGate makes fn decide, after the ban check, whether a connection of a
// peer that is not allowlisted is refused ("421 … from your network",
// reject reason "geo"; reason is logged). fn is asked again before each
// USER, PASS and ACCT of an open session, and by Refusals and Recheck for
// every open session: a refusal then ends the session. Call before Serve;
// nil: none.
func (s *Server) SetGate(fn func(addr netip.Addr) (refuse bool, reason string)) { s.hooks.gate = fn }

// SetGatePeek gives the gate hook's answer without its side effects (e.g.
// counting a refusal), for Refusals, which refuses nobody: it asks which
// open sessions the settings in force refuse, before a reload. Call before
// Serve; nil: Refusals asks the gate hook itself.
func (s *Server) SetGatePeek(fn func(addr netip.Addr) (refuse bool, reason string)) {
	s.hooks.peek = fn
}

// SetLimiterFor makes fn choose the limiter whose budget a guess of addr
// takes (a budget rule's); nil from fn, or no fn, means the Server's own.
// Call before Serve.
func (s *Server) SetLimiterFor(fn func(addr netip.Addr) *limiter.Limiter) { s.hooks.limFor = fn }

// limiterFor returns the limiter deciding the guesses of addr.
func (s *Server) limiterFor(addr netip.Addr) *limiter.Limiter {
	if s.hooks.limFor != nil {
		if l := s.hooks.limFor(addr); l != nil {
			return l
		}
	}
	return s.lim
}

// gated asks the gate hook about addr (not when allowlisted: the
// allowlist always wins) and, if it refuses, answers c with 421 and
// closes it. It reports whether c was refused.
func (s *Server) gated(c net.Conn, log *slog.Logger, addr netip.Addr, allowlisted bool) bool {
	if s.hooks.gate == nil || allowlisted {
		return false
	}
	no, reason := s.hooks.gate(addr)
	if !no || !s.enforce(log, "geo", "rule", reason) {
		return false
	}
	refuse(c, "421 Service not available from your network.")
	return true
}
