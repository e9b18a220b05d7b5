package limiter

// The decisions on a guess: Attempt takes a place in the key's budget,
// Success, Release and Failure settle it, Penalize counts a failure that
// held none. The budgetKeeper decides once the allowlist and the ban table
// have been consulted.

import (
	"net/netip"
	"time"
)

// Attempt is called before a guess (a PASS, or a counted USER or ACCT) is
// forwarded. It takes a place in the key's budget: it allows the guess iff
// the whole tokens at now, less the attempts in flight, are at least 1, and
// then counts one more attempt in flight, which the caller must settle with
// Success, Failure or Release. When attempts in flight hold every token
// left it refuses with Busy and no ban (concurrent logins behind one NAT
// address must not ban it; the cap holds all the same). When the budget is
// spent it bans the key (NewBan) and refuses. A banned key is refused, by
// a ban of the limiter's or of its external source (SetExternal), and takes
// no place. An allowlisted address is always allowed and not counted.
//
// With a shared store the budget is the one shared by every limiter on it;
// when the store is down the local one decides, or with Config.FailClosed
// the attempt is refused (StoreDown).
func (l *Limiter) Attempt(now time.Time, addr netip.Addr) Decision {
	return l.attempt(now, addr, netip.Prefix{}, nil)
}

// enter begins a write call on addr (normalised) and key (the invalid
// Prefix: addr's key under the settings in force): it takes l.mu and
// returns the settings in force and the Decision so far. done: the call is
// decided already — an invalid address (the zero Decision) or an
// allowlisted one (allowed, not counted) — and l.mu is released.
func (l *Limiter) enter(now time.Time, addr netip.Addr, key netip.Prefix) (netip.Addr, *settings, Decision, bool) {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return addr, nil, Decision{}, true
	}
	l.mu.Lock()
	s := l.tickLocked(now)
	d := Decision{Key: key}
	if !key.IsValid() {
		d.Key = s.key(addr)
	}
	if s.allowed(addr) {
		l.mu.Unlock()
		d.Allowed, d.Allowlisted, d.Remaining = true, true, s.Failures
		return addr, s, d, true
	}
	return addr, s, d, false
}

// attempt is Attempt on key, the key of addr that the attempt is taken on
// (the invalid Prefix: addr's key under the settings in force). wr (nil:
// never queue) is the guess's place in the queue of its key: a guess with
// others of its key queued ahead is Busy without asking the budget, and a
// Busy guess is queued.
func (l *Limiter) attempt(now time.Time, addr netip.Addr, key netip.Prefix, wr *waitReq) Decision {
	addr, s, d, done := l.enter(now, addr, key)
	if done {
		return d
	}
	if l.checkExternal(now, addr, &d) { // external.go: e.g. a CrowdSec decision since USER
		l.mu.Unlock()
		return d
	}
	if r, _ := l.bans.find(now, addr); r != nil {
		l.mu.Unlock()
		d.Ban = r.ban
		return d
	}
	if l.aheadLocked(s, d.Key, wr) {
		l.mu.Unlock()
		d.Busy = true
		return d
	}
	d, _ = l.keeper.attempt(now, s, addr, d, wr) // releases l.mu; it never fails
	return d
}

// publish saves and announces the ban that d made, if it made one; called
// after the lock is released, as store I/O and hooks must not run under it.
func (l *Limiter) publish(d Decision, seq uint64) Decision {
	if d.NewBan {
		l.saveBan(d.Ban, seq)
		l.notify(BanChange{Ban: d.Ban})
	}
	return d
}

// attemptLocked decides an attempt of d.Key, neither allowlisted nor
// banned, on the local budget; for a new ban it returns its version, for
// saveBan once l.mu is released. A Busy guess is queued (wr).
func (l *Limiter) attemptLocked(now time.Time, s *settings, d Decision, wr *waitReq) (Decision, uint64) {
	b := l.bucketLocked(now, s, keyOf(d.Key))
	tokens := whole(b.lim.TokensAt(now))
	if free := tokens - int(b.pending); free >= 1 {
		b.pending++
		d.Allowed, d.Remaining = true, free-1
		return d, 0
	}
	if tokens >= 1 {
		d.Busy = true
		l.busyLocked(s, d.Key, wr)
		return d, 0
	}
	ban, seq := l.banLocked(now, s, d.Key, 0, ReasonBudget)
	d.Ban, d.NewBan = ban, true
	return d, seq
}

// Success settles an attempt of addr that logged in (a 2xx reply): it
// frees its place and consumes nothing; with Config.SuccessResets it also
// refills the key's budget. Settling an attempt that the key no longer
// holds (its budget was cleared by a ban or evicted) is harmless.
func (l *Limiter) Success(now time.Time, addr netip.Addr) {
	l.settle(now, addr, netip.Prefix{}, OutcomeSuccess)
}

// Release settles an attempt of addr that was neither success nor failure
// (e.g. 331 to USER): it frees its place and consumes nothing.
func (l *Limiter) Release(now time.Time, addr netip.Addr) {
	l.settle(now, addr, netip.Prefix{}, OutcomeRelease)
}

// settle is Success (o is OutcomeSuccess) or Release on key, the key the
// attempt was taken on (the invalid Prefix: addr's key under the settings
// in force).
func (l *Limiter) settle(now time.Time, addr netip.Addr, key netip.Prefix, o Outcome) {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return
	}
	l.mu.Lock()
	s := l.tickLocked(now)
	if s.allowed(addr) {
		l.mu.Unlock()
		return
	}
	if !key.IsValid() {
		key = s.key(addr)
	}
	if b := l.budgets.get(keyOf(key)); b != nil {
		if b.pending > 0 {
			b.pending--
		}
		if o == OutcomeSuccess && s.SuccessResets {
			b.reset(s)
		}
	}
	l.mu.Unlock()
	l.keeper.settled(now, s, key, o) // counts its own errors
	l.signalHead(key)                // its place is free: the first guess waiting takes it
}

// Failure settles an attempt of addr that failed: it frees its place and
// consumes one token. If fewer than one whole token is left, it bans the key
// (NewBan) and refuses. A banned key is refused, and no token is taken (its
// ban cleared its budget), unless the ban is of another prefix (BanKey): then
// the guess still counts against the key's own budget. Otherwise the key
// stays allowed.
// An allowlisted address is always allowed and not counted.
//
// Every Attempt that was allowed must be settled exactly once, by Success,
// Failure or Release; a place never settled stays taken until the key's
// budget is cleared by a ban or evicted.
func (l *Limiter) Failure(now time.Time, addr netip.Addr) Decision {
	return l.fail(now, addr, netip.Prefix{}, OutcomeFailure)
}

// Penalize counts a failure of addr that was not preceded by Attempt (e.g.
// a 530 reply to USER for a name the daemon refuses): it consumes one token
// and bans the key like Failure when fewer than one is left, but frees no
// place of an attempt in flight.
func (l *Limiter) Penalize(now time.Time, addr netip.Addr) Decision {
	return l.fail(now, addr, netip.Prefix{}, OutcomePenalty)
}

// fail is Failure (o is OutcomeFailure) or Penalize (OutcomePenalty) on
// key, the key the attempt was taken on (the invalid Prefix: addr's key
// under the settings in force).
func (l *Limiter) fail(now time.Time, addr netip.Addr, key netip.Prefix, o Outcome) Decision {
	addr, s, d, done := l.enter(now, addr, key)
	if done {
		return d
	}
	k := keyOf(d.Key)
	cover, _ := l.bans.find(now, addr)
	b := l.budgets.get(k)
	if cover != nil && b == nil {
		// The key is banned, and its budget was cleared then.
		l.mu.Unlock()
		d.Ban = cover.ban
		return d
	}
	if b == nil {
		b = l.newBucketLocked(s, k)
	} else {
		b.adapt(s, now)
	}
	if o == OutcomeFailure && b.pending > 0 {
		b.pending--
	}
	if !b.lim.AllowN(now, 1) {
		// Less than one token, by a hair (within tokenSlack) or because
		// attempts outlived a Reload that shrank the budget: take it on
		// credit, so that every failure is counted. Rare; allocates.
		b.lim.ReserveN(now, 1)
	}
	d, _ = l.keeper.fail(now, s, addr, d, b, cover, o) // releases l.mu; it never fails
	if o == OutcomeFailure && !d.NewBan {
		l.signalHead(d.Key) // a place given up (a ban wakes every waiter itself)
	}
	return d
}

// failLocked decides a failure already taken from the local budget b of
// d.Key (cover: the ban of another prefix covering the address, or nil);
// for a new ban it returns its version, for saveBan once l.mu is released.
func (l *Limiter) failLocked(now time.Time, s *settings, d Decision, b *bucket, cover *banRec) (Decision, uint64) {
	if left := whole(b.lim.TokensAt(now)); left >= 1 {
		// Under a ban of a wider or narrower prefix (BanKey), the guess
		// still counts against the key's own budget.
		if cover != nil {
			d.Ban = cover.ban
		} else {
			d.Allowed, d.Remaining = true, max(0, left-int(b.pending))
		}
		return d, 0
	}
	ban, seq := l.banLocked(now, s, d.Key, 0, ReasonBudget)
	d.Ban, d.NewBan = ban, true
	return d, seq
}

// bucketLocked returns the budget of k, made most recently used and set to
// the limits of s, creating a full one if k has none.
func (l *Limiter) bucketLocked(now time.Time, s *settings, k bkey) *bucket {
	if b := l.budgets.get(k); b != nil {
		b.adapt(s, now)
		return b
	}
	return l.newBucketLocked(s, k)
}

// newBucketLocked adds a full budget for k, which has none, evicting the
// least recently used if the table is full.
func (l *Limiter) newBucketLocked(s *settings, k bkey) *bucket {
	for l.budgets.len() >= s.MaxTracked {
		l.evictBudgetLocked()
	}
	b := l.budgets.add(k)
	b.reset(s)
	return b
}

// evictBudgetLocked forgets the least recently used budget, passing over a
// few with attempts in flight (forgetting those would free their places).
func (l *Limiter) evictBudgetLocked() {
	b := l.budgets.oldest()
	for i := 0; i < evictTries && b.pending > 0 && l.budgets.len() > 1; i++ {
		l.budgets.get(b.key) // make it most recently used
		b = l.budgets.oldest()
	}
	l.wakeKeyLocked(b.key) // a forgotten key starts again with a full budget
	l.budgets.remove(b.key)
	l.evicted++
}
