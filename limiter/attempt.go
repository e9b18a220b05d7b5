package limiter

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// Verdict is the answer of Begin: the address's Decision and, for a guess
// that names a username, the username's.
type Verdict struct {
	Decision              // the address key's: Allowed, Busy, NewBan, StoreDown, …
	User     UserDecision // the username's (zero without Users or username)
	// UserRefused: the username's budget refused the guess (User.Throttled
	// or User.TooManyNames); the address's budget was not asked.
	UserRefused bool
	// Wait, for a Busy verdict of Begin or Retry: the guess holds a place
	// in the FIFO queue of its key, and Wait fires when it should try again
	// (Attempt.Retry): an attempt of the key settled, the key was banned,
	// its budget forgotten, the limiter reloaded. It may also fire for
	// nothing. nil: not queued (the queue holds Config.MaxLoginWaiters
	// guesses already, or the verdict is not Busy).
	Wait <-chan struct{}
}

// OK reports whether the guess may be forwarded.
func (v Verdict) OK() bool { return v.Allowed && !v.UserRefused }

// Attempt is one login guess (a PASS or an ACCT) from the moment it is
// allowed to reach the daemon until its outcome is known, in the spirit of
// rate.Reservation: Begin takes its places in the address's budget and in
// the username's together, and Settle — the only way to finish it — gives
// them back and records the outcome. Settle is idempotent: only its first
// call counts. An Attempt remembers the key it was taken on, so a reload
// that changes the prefixes between Begin and Settle cannot leak a place.
//
// A refused Attempt (its Verdict is not OK) holds nothing; settling it as a
// failure still counts the guess (observe mode forwards refused guesses, and
// a key that tries too many usernames pays for it): it takes a token without
// freeing a place (Penalize). A guess refused because its username's budget
// is spent (User.Throttled) never reached the daemon and is the owner's as
// often as an attacker's: the proxy settles it as a release, which costs
// nothing. Safe for concurrent use.
type Attempt struct {
	l        *Limiter
	u        *Users
	addr     netip.Addr
	key      netip.Prefix
	user     string
	held     bool // a place in the address's budget is held
	userHeld bool // a place in the username's budget is held
	settled  atomic.Bool
	w        *waiter // its place in the queue of key (a Busy verdict), or nil
	wr       waitReq // what the address's budget did with the queue
}

// Begin starts a login guess from addr for user ("" for none, e.g. ACCT):
// the username's budget is asked first (u may be nil: per-username budgets
// off), then the address's (Attempt). The returned Attempt is never nil and
// must be settled once, whatever the verdict.
//
// A guess that finds every token of its key held by attempts in flight
// (Busy), or other guesses of its key already waiting, is queued: see
// Verdict.Wait and Attempt.Retry.
func (l *Limiter) Begin(now time.Time, addr netip.Addr, user string, u *Users) (*Attempt, Verdict) {
	return l.begin(now, addr, user, u, nil)
}

// begin is Begin for the guess whose place in a queue is w (nil: none).
//
// The address's budget is asked first and the username's only for a guess
// that got a place: a guess waiting for a place of its key (Busy) holds no
// place in its username's budget meanwhile. Were it the other way round,
// the guesses of one address waiting in its queue would hold the
// username's places and make the name look spent to everyone else (a burst
// of parallel logins from one NAT would see "paused" replies meant for
// distributed guessing). A guess the username's budget refuses gives its
// address place back at once: the refusal costs the address nothing here
// (the caller decides what it costs, with Settle).
func (l *Limiter) begin(now time.Time, addr netip.Addr, user string, u *Users, w *waiter) (*Attempt, Verdict) {
	a := &Attempt{l: l, addr: addr, key: l.Key(addr), user: user, w: w}
	if u != nil && user != "" {
		a.u = u
	}
	var v Verdict
	a.wr.w = w
	v.Decision = l.attempt(now, addr, a.key, &a.wr)
	a.held = v.Allowed && !v.Allowlisted
	if v.Busy && a.wr.got != nil {
		a.w = a.wr.got
		v.Wait = a.w.ch
	} else {
		a.leaveWait()
	}
	a.wr = waitReq{}
	if !v.Allowed || a.u == nil {
		return a, v
	}
	v.User = u.Attempt(now, user, a.key)
	a.userHeld = v.User.Held
	if v.User.Throttled || v.User.TooManyNames {
		a.releaseUser()
		if a.held {
			l.settle(now, addr, a.key, OutcomeRelease)
			a.held = false
		}
		v.UserRefused = true
		v.Decision = Decision{Key: a.key} // the address's budget is not what decided
	}
	return a, v
}

// Key is the address key the attempt was taken on.
func (a *Attempt) Key() netip.Prefix { return a.key }

// User is the username the attempt was for.
func (a *Attempt) User() string { return a.user }

// Settle ends the attempt with o (OutcomeSuccess, OutcomeFailure or
// OutcomeRelease) and returns the address's Decision after it (for a
// failure: whether the key is now banned, NewBan, Remaining). Only the
// first call does anything; later calls return the zero Decision.
func (a *Attempt) Settle(now time.Time, o Outcome) Decision {
	if a == nil || a.settled.Swap(true) {
		return Decision{}
	}
	defer a.releaseUser()
	a.leaveWait()
	var d Decision
	switch o {
	case OutcomeSuccess:
		if a.held {
			a.l.settle(now, a.addr, a.key, OutcomeSuccess)
		}
		if a.u != nil {
			a.u.Success(now, a.user, a.key)
		}
		d = Decision{Key: a.key, Allowed: true}
	case OutcomeFailure, OutcomePenalty:
		if a.u != nil {
			a.u.Failure(now, a.user, a.key)
		}
		if a.held {
			d = a.l.fail(now, a.addr, a.key, OutcomeFailure)
		} else {
			d = a.l.fail(now, a.addr, a.key, OutcomePenalty)
		}
	default:
		if a.held {
			a.l.settle(now, a.addr, a.key, OutcomeRelease)
		}
		d = Decision{Key: a.key, Allowed: true}
	}
	return d
}

func (a *Attempt) releaseUser() {
	if a.userHeld {
		a.userHeld = false
		a.u.Release(a.user)
	}
}
