package limiter

import (
	"context"
	"net/netip"
	"time"
)

// budgetKeeper decides a key's budget once the Limiter has done what every
// decision shares (normalised the address, checked the allowlist and the
// ban table, and for a failure counted it in the local budget). There are
// three: localKeeper, the limiter's own table; sharedKeeper, a
// SharedBudgets store's budgets; and circuit, which wraps a sharedKeeper
// and falls back to the localKeeper while the store is down. The Limiter
// holds one and never asks which.
type budgetKeeper interface {
	// attempt decides an attempt of d.Key (neither allowlisted nor banned
	// at the check). It is called with l.mu held and releases it. A Busy
	// verdict queues the guess (l.busyLocked with wr, l.mu held).
	attempt(now time.Time, s *settings, addr netip.Addr, d Decision, wr *waitReq) (Decision, error)
	// fail decides a failure of d.Key (OutcomeFailure, which settles an
	// attempt, or OutcomePenalty) that the local budget b has already
	// counted; cover is the ban covering addr (of another prefix, as d.Key
	// has a budget), or nil. It is called with l.mu held and releases it.
	fail(now time.Time, s *settings, addr netip.Addr, d Decision, b *bucket, cover *banRec, o Outcome) (Decision, error)
	// settled reports that an attempt of key ended with o (OutcomeSuccess
	// or OutcomeRelease) and that its local place is freed. Called without
	// l.mu.
	settled(now time.Time, s *settings, key netip.Prefix, o Outcome) error
	// write runs fn, which writes the ban change of p to the store, or
	// queues the change without running fn (queued) while the store is
	// known to be down. Called with l.storeMu held.
	write(p netip.Prefix, fn func() error) (queued bool, err error)
	// down reports whether decisions are local because the shared store is
	// unreachable (Config.FailClosed then refuses).
	down() bool
	// unsynced is the number of ban changes queued for the store.
	unsynced() int
	// close stops the keeper's goroutines, if any, and waits for them.
	close()
}

// Only the local keeper and the circuit decide for a Limiter: neither fails.
var (
	_ budgetKeeper = localKeeper{}
	_ budgetKeeper = (*circuit)(nil)
)

// localKeeper decides with the limiter's own table of budgets.
type localKeeper struct{ l *Limiter }

func (k localKeeper) attempt(now time.Time, s *settings, _ netip.Addr, d Decision, wr *waitReq) (Decision, error) {
	d, seq := k.l.attemptLocked(now, s, d, wr)
	k.l.mu.Unlock()
	return k.l.publish(d, seq), nil
}

func (k localKeeper) fail(now time.Time, s *settings, _ netip.Addr, d Decision, b *bucket, cover *banRec, _ Outcome) (Decision, error) {
	d, seq := k.l.failLocked(now, s, d, b, cover)
	k.l.mu.Unlock()
	return k.l.publish(d, seq), nil
}

func (localKeeper) settled(time.Time, *settings, netip.Prefix, Outcome) error { return nil }

func (localKeeper) write(_ netip.Prefix, fn func() error) (bool, error) { return false, fn() }

func (localKeeper) down() bool    { return false }
func (localKeeper) unsynced() int { return 0 }
func (localKeeper) close()        {}

// sharedKeeper decides with the budgets of a SharedBudgets store; the
// local table still keeps this limiter's own places and failures, for the
// decisions made locally if the store goes down. An error of the store is
// returned as it is (l.mu released), for the circuit to fall back.
type sharedKeeper struct {
	l  *Limiter
	sb SharedBudgets
}

func (k sharedKeeper) attempt(now time.Time, s *settings, _ netip.Addr, d Decision, wr *waitReq) (Decision, error) {
	l := k.l
	l.mu.Unlock()
	res, err := k.sb.SharedAttempt(context.Background(), d.Key, now, s.params())
	if err != nil {
		return d, err
	}
	l.mu.Lock()
	var change *BanChange
	switch res.Verdict {
	case SharedAllowed:
		// The local budget keeps this limiter's places, for the local
		// decisions made if the store goes down.
		b := l.bucketLocked(now, s, keyOf(d.Key))
		b.pending++
		d.Allowed, d.Remaining = true, res.Remaining
	case SharedBusy:
		// Places freed by other limiters signal nothing here: the
		// caller's wait polls (docs/operating.md).
		d.Busy = true
		l.busyLocked(s, d.Key, wr)
	default:
		d, change = l.sharedBanLocked(s, res, d)
	}
	l.mu.Unlock()
	if change != nil {
		l.notify(*change)
	}
	return d, nil
}

func (k sharedKeeper) fail(now time.Time, s *settings, addr netip.Addr, d Decision, _ *bucket, _ *banRec, o Outcome) (Decision, error) {
	l := k.l
	// The local budget has counted the failure (for the local decisions
	// made if the store goes down); the shared one decides.
	l.mu.Unlock()
	res, err := k.sb.SharedSettle(context.Background(), d.Key, now, o, s.params())
	if err != nil {
		return d, err
	}
	l.mu.Lock()
	cover, _ := l.bans.find(now, addr)
	var change *BanChange
	switch res.Verdict {
	case SharedAllowed, SharedBusy:
		// Under a ban of another prefix (BanKey), the guess counted against
		// the key's own budget all the same.
		if cover != nil {
			d.Ban = cover.ban
		} else {
			d.Allowed, d.Remaining = true, res.Remaining
		}
	default:
		d, change = l.sharedBanLocked(s, res, d)
	}
	l.mu.Unlock()
	if change != nil {
		l.notify(*change)
	}
	return d, nil
}

func (k sharedKeeper) settled(now time.Time, s *settings, key netip.Prefix, o Outcome) error {
	_, err := k.sb.SharedSettle(context.Background(), key, now, o, s.params())
	return err
}

func (sharedKeeper) write(_ netip.Prefix, fn func() error) (bool, error) { return false, fn() }

func (sharedKeeper) down() bool    { return false }
func (sharedKeeper) unsynced() int { return 0 }
func (sharedKeeper) close()        {}

// sharedBanLocked applies a SharedBanned or SharedNewBan verdict: the ban
// goes into the local table, and the change to announce (if any) is
// returned.
func (l *Limiter) sharedBanLocked(s *settings, res SharedResult, d Decision) (Decision, *BanChange) {
	switch res.Verdict {
	case SharedBanned:
		d.Ban = res.Ban
		if l.installLocked(s, res.Ban) && res.Ban.Active(l.clock) {
			return d, &BanChange{Ban: res.Ban, Remote: true}
		}
	case SharedNewBan:
		l.installLocked(s, res.Ban)
		l.bansCreated++
		d.Ban, d.NewBan = res.Ban, true
		return d, &BanChange{Ban: res.Ban}
	}
	return d, nil
}
