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
}

// Begin starts a login guess from addr for user ("" for none, e.g. ACCT):
// the username's budget is asked first (u may be nil: per-username budgets
// off), then the address's (Attempt). The returned Attempt is never nil and
// must be settled once, whatever the verdict.
func (l *Limiter) Begin(now time.Time, addr netip.Addr, user string, u *Users) (*Attempt, Verdict) {
	a := &Attempt{l: l, addr: addr, key: l.Key(addr), user: user}
	var v Verdict
	if u != nil && user != "" {
		a.u = u
		v.User = u.Attempt(now, user, a.key)
		a.userHeld = v.User.Held
		if v.User.Throttled || v.User.TooManyNames {
			a.releaseUser()
			v.UserRefused = true
			v.Key = a.key
			return a, v
		}
	}
	v.Decision = l.attempt(now, addr, a.key)
	a.held = v.Allowed && !v.Allowlisted
	if !v.Allowed {
		a.releaseUser()
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
