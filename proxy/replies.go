package proxy

import (
	"errors"
	"io"
	"os"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/proxy/internal/pairing"
)

// The backend → client half of a session: relayReplies reads the daemon's
// replies and carries out what the pairing machine makes of each.

func (s *session) relayReplies() {
	cfg := s.srv.config()
	rr := ftpproto.NewReplyReader(s.backend, maxReplyLine, cfg.MaxReply)
	// A daemon that accepts and never greets is given dial_timeout.
	greeted := s.pregreeted != nil
	if !greeted {
		s.backend.SetReadDeadline(time.Now().Add(cfg.DialTimeout))
	}
	for {
		r, err := rr.ReadReply()
		if err != nil {
			if !greeted && errors.Is(err, os.ErrDeadlineExceeded) && !s.clientEOF.Load() && !s.closing.Load() {
				s.log.Error("backend did not greet", "after", cfg.DialTimeout)
				s.replyFinal(421, "Service not available, the FTP server did not answer.")
				s.abort()
				return
			}
			s.backendError(err)
			return
		}
		if !greeted && r.Code >= 200 {
			greeted = true
			if !s.clientEOF.Load() {
				s.backend.SetReadDeadline(time.Time{})
			}
		}
		if !s.reply(r) {
			s.abort()
			return
		}
	}
}

func (s *session) backendError(err error) {
	if s.closing.Load() {
		return // whoever began closing ends the session (see linger)
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		s.mu.Lock()
		last := s.lastCode
		s.mu.Unlock()
		s.log.Info("backend closed the connection", "last_reply", last)
		if last != 421 && last != 221 {
			s.replyFinal(421, "Service not available, the FTP server closed the connection.")
		}
	case errors.Is(err, os.ErrDeadlineExceeded) && s.clientEOF.Load():
		// The client had gone; the backend did not answer in time.
	default:
		var pe ftpproto.ProtocolError
		if errors.Is(err, ftpproto.ErrReplyTooLong) || errors.Is(err, ftpproto.ErrLineTooLong) || errors.As(err, &pe) {
			s.log.Error("invalid reply from backend", "err", err)
			s.replyFinal(421, "Service not available, invalid reply from the FTP server.")
		} else {
			s.log.Info("backend read error", "err", err)
		}
	}
	s.abort()
}

// reply steps the pairing machine with one backend reply and carries out
// its actions. It reports whether the session goes on.
func (s *session) reply(r ftpproto.Reply) bool {
	if r.Code < 200 {
		s.transferBegins() // kernel.go
	}
	s.mu.Lock()
	acts := s.pair.Reply(r)
	if len(acts) == 0 || acts[len(acts)-1].Op != pairing.Deliver {
		if len(acts) > 0 && acts[len(acts)-1].Why == pairing.WhyOutOfStep {
			// The daemon answered a command twice or not at all: from
			// here on replies would settle the wrong commands. The
			// attempts still waiting are settled as failures at the end.
			s.srv.reject(s.log, "reply out of step", "cmd", acts[0].Verb, "code", r.Code, "reply", logSafe(r.Text()))
		}
		ok := s.doLocked(acts)
		s.mu.Unlock()
		return ok
	}
	s.mu.Unlock()

	// The head's final reply. Unlocked: the login policy may call the
	// limiter (and its store), and the holds below may last seconds;
	// the machine keeps the head in place, so nothing overtakes it.
	var (
		out    = r
		hold   time.Duration
		banned bool
	)
	for _, a := range acts {
		switch a.Op {
		case pairing.Settle:
			hold, banned = s.settleLogin(a.Verb, a.Data, r) // login.go
		case pairing.Gate:
			// The data first, then the reply that says it is complete (quirks.go).
			s.xfer.wait(s.srv.config().DataTimeout, s.done)
		case pairing.Deliver:
			s.transferEnds() // kernel.go
			out = s.rewrite(a, r)
		}
	}
	if hold > 0 && !banned {
		s.sleep(hold) // tarpit: the failure reply is held
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.writeLocked(out) {
		return false
	}
	acts = s.pair.Delivered(r.Code)
	s.wakeLocked()
	if !s.doLocked(acts) {
		return false
	}
	if banned {
		s.writeLocked(ftpproto.NewReply(421, "Too many failed logins from your address; closing control connection."))
		s.closing.Store(true) // under mu: a refusal racing it writes no second 421
		return false
	}
	return s.endAfterReplyLocked() // sessions_ban.go
}

// rewrite returns the reply the client gets for r, the final reply to a's
// command: the proxy's own data port in a 227 or 229, the proxy's
// features in FEAT's reply, else r as it is.
func (s *session) rewrite(a action, r ftpproto.Reply) ftpproto.Reply {
	if !a.Info.Rewrite {
		return r
	}
	switch a.Verb {
	case "PASV", "EPSV":
		if r.Code == 227 || r.Code == 229 {
			return s.openPassive(a.Verb, r)
		}
	case "FEAT":
		return s.rewriteFEAT(r)
	}
	return r
}
