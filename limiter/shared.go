package limiter

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// ErrSharedDown is wrapped (with ErrStore) in the error of BanKey and Unban
// when the shared store is known to be unreachable: the change is in force
// locally and queued, and it is written when the store comes back.
var ErrSharedDown = errors.New("limiter: shared store unreachable")

// resyncBatch bounds the bans a resync installs under one hold of the lock.
const resyncBatch = 1024

// probeInterval is how often a limiter whose shared store is down tries to
// write its queued ban changes and close the circuit again.
const probeInterval = 250 * time.Millisecond

// SharedBudgets is implemented by stores that keep budgets shared between
// limiters (redisstore.Store), so that N limiters together allow a key the
// failures that one would. New detects it on its Store with a type
// assertion; the limiter then asks the store to decide Attempt, Failure,
// Penalize, Success and Release, and keeps its ban table current with
// Subscribe.
//
// Each method decides exactly like a lone Limiter would (see Attempt and
// Failure), atomically on the server, so that no two limiters both take the
// last token or both make ban n of a key. Ban n lasts BanTime ×
// BanFactor^(n−1) (capped at MaxBanTime), n counted from the ban the store
// holds for key, and the store keeps that ban until its Forget time.
// Implementations bound every call in time, whatever ctx says, and must be
// safe for concurrent use. One store value serves one Limiter: it tells its
// own attempts in flight from those of other limiters.
type SharedBudgets interface {
	Store
	// SharedAttempt takes a place in the shared budget of key for an
	// attempt: SharedAllowed (with Remaining), SharedBusy when attempts in
	// flight hold every whole token left, SharedBanned when the store holds
	// an active ban of key itself, or SharedNewBan when the budget is spent.
	// An attempt in flight that is never settled stops counting after a
	// time the store chooses (redisstore.Options.AttemptTTL).
	SharedAttempt(ctx context.Context, key netip.Prefix, now time.Time, p BudgetParams) (SharedResult, error)
	// SharedSettle settles an attempt of this store's limiter (OutcomePenalty:
	// a failure without one). OutcomeFailure and OutcomePenalty take a token
	// and give SharedAllowed, SharedBanned (no token taken) or SharedNewBan;
	// OutcomeSuccess and OutcomeRelease give SharedAllowed and a zero
	// Remaining.
	SharedSettle(ctx context.Context, key netip.Prefix, now time.Time, o Outcome, p BudgetParams) (SharedResult, error)
	// Subscribe delivers to fn, one at a time, the bans and unbans made by
	// other limiters (EventBan, EventUnban), EventResync each time the
	// subscription is (re)established (events may have been missed before),
	// and EventLost when it breaks; it reconnects by itself. It returns when
	// ctx ends.
	Subscribe(ctx context.Context, fn func(BanEvent))
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// BudgetParams are the limits a shared budget is kept with: those of the
// calling limiter's Config (defaults applied).
type BudgetParams struct {
	Failures      int
	Window        time.Duration
	BanTime       time.Duration
	BanFactor     float64
	MaxBanTime    time.Duration
	SuccessResets bool
}

// Outcome is how an attempt ended, for SharedSettle.
type Outcome int

// Outcomes of an attempt.
const (
	OutcomeRelease Outcome = iota // neither success nor failure: frees the place
	OutcomeSuccess                // a login: frees the place (refills with SuccessResets)
	OutcomeFailure                // frees the place and takes a token
	OutcomePenalty                // takes a token; no place was held
)

// SharedVerdict is the answer of SharedAttempt and SharedSettle.
type SharedVerdict int

// Verdicts of a shared budget.
const (
	SharedAllowed SharedVerdict = iota // go on; Remaining is set
	SharedBusy                         // attempts in flight hold every token left; no ban
	SharedBanned                       // key is under an active ban (Ban), made earlier
	SharedNewBan                       // this very call banned key (Ban)
)

// SharedResult is a shared budget's answer.
type SharedResult struct {
	Verdict   SharedVerdict
	Remaining int // whole tokens left that no attempt in flight holds (SharedAllowed)
	Ban       Ban // for SharedBanned and SharedNewBan
}

// BanEventKind tells what a BanEvent reports.
type BanEventKind int

// Kinds of BanEvent.
const (
	EventBan    BanEventKind = iota // another limiter banned Ban.Key (Ban is the whole ban)
	EventUnban                      // another limiter lifted the ban of Ban.Key
	EventResync                     // the subscription is (re)established; events may have been missed
	EventLost                       // the subscription broke (Err); Subscribe is reconnecting
)

// BanEvent is one message of Subscribe.
type BanEvent struct {
	Kind BanEventKind
	Ban  Ban
	Err  error // for EventLost
	// Fresh (EventResync): the store's state is new since the previous
	// subscription (first use, or it restarted empty): bans the store lacks
	// were lost, not lifted, and the limiter writes its own back.
	Fresh bool
}

// params returns the budget limits of s for a shared store.
func (s *settings) params() BudgetParams {
	return BudgetParams{Failures: s.Failures, Window: s.Window, BanTime: s.BanTime,
		BanFactor: s.BanFactor, MaxBanTime: s.MaxBanTime, SuccessResets: s.SuccessResets}
}

// startShared runs the two goroutines of a limiter on a shared store: the
// subscription that applies other limiters' bans to the local table, and
// the loop that writes queued ban changes and closes the circuit again.
func (l *Limiter) startShared(sb SharedBudgets) {
	l.shared = sb
	l.queue = make(map[bkey]netip.Prefix)
	l.resync = make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	l.stop = cancel
	l.wg.Go(func() { sb.Subscribe(ctx, l.onEvent) })
	l.wg.Go(func() { l.maintain(ctx) })
}

// Close stops the limiter's background work: with a SharedBudgets store,
// the subscription to other limiters' bans and the writing of queued ban
// changes. It waits for them to end. It does not close the store, which
// belongs to the caller (close the store after the limiter). Decisions go
// on after Close; bans of other limiters no longer arrive. Close is
// idempotent and always returns nil; without a SharedBudgets store it does
// nothing.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		if l.stop != nil {
			l.stop()
			l.wg.Wait()
		}
	})
	return nil
}

// onEvent applies one message of the subscription.
func (l *Limiter) onEvent(ev BanEvent) {
	switch ev.Kind {
	case EventBan:
		p, err := normPrefix(ev.Ban.Key)
		if err != nil || ev.Ban.Until.IsZero() {
			return
		}
		ev.Ban.Key = p
		l.mu.Lock()
		learned := l.installLocked(l.cfg.Load(), ev.Ban) && ev.Ban.Active(l.clock)
		l.mu.Unlock()
		if learned {
			l.notify(BanChange{Ban: ev.Ban, Remote: true})
		}
	case EventUnban:
		p, err := normPrefix(ev.Ban.Key)
		if err != nil {
			return
		}
		l.mu.Lock()
		r := l.bans.recs[keyOf(p)]
		var lifted []BanChange
		if r != nil && r.synced {
			if r.active && r.ban.Active(l.clock) {
				lifted = append(lifted, BanChange{Ban: r.ban, Lifted: true, Remote: true})
			}
			l.bans.remove(r)
			l.syncLocked()
			l.seq++
		}
		if l.unbanned != nil {
			l.unbanned[keyOf(p)] = true
		}
		l.mu.Unlock()
		l.notify(lifted...)
		if r != nil && !r.synced {
			// Our write of this ban is under way or queued: whether it
			// landed before the unban or after, only the store can tell. A
			// resync waits for the write, then asks.
			l.requestResync()
		}
	case EventResync:
		if ev.Fresh {
			l.requeueAll()
		}
		l.subUp.Store(true)
		l.requestResync()
	case EventLost:
		l.queueMu.Lock()
		l.subUp.Store(false)
		l.sharedDown.Store(true)
		l.queueMu.Unlock()
		l.storeFailed(fmt.Errorf("%w: subscription: %w", ErrStore, ev.Err))
	}
}

// requestResync makes the maintain goroutine reconcile with a full load.
func (l *Limiter) requestResync() {
	select {
	case l.resync <- struct{}{}:
	default:
	}
}

// requeueAll queues every ban record for writing, as not in the store.
func (l *Limiter) requeueAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queueMu.Lock()
	defer l.queueMu.Unlock()
	for _, r := range l.bans.recs {
		r.synced = false
		l.enqueueLocked(r.ban.Key)
	}
}

// maintain reconciles with the shared store after each (re)subscription,
// and while the circuit is open, every probeInterval.
func (l *Limiter) maintain(ctx context.Context) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.resync:
			l.reconcile(ctx, true)
		case <-t.C:
			if l.sharedDown.Load() && l.subUp.Load() {
				l.reconcile(ctx, false)
			}
		}
	}
}

// reconcile writes the queued ban changes, then (full) reloads the store's
// bans into the table, or else checks that the store answers; if all went
// well and the subscription is up, it closes the circuit.
func (l *Limiter) reconcile(ctx context.Context, full bool) {
	n, err := l.flushQueue()
	switch {
	case err != nil:
	case full:
		err = l.resyncBans()
	case n == 0:
		err = l.shared.Ping(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			l.sharedFailed(err)
		}
		return
	}
	l.queueMu.Lock()
	if len(l.queue) == 0 && l.subUp.Load() {
		l.sharedDown.Store(false)
	}
	l.queueMu.Unlock()
}

// flushQueue writes the current state of each queued key to the store: its
// ban, or its deletion. It returns how many keys it wrote. Changes queued
// meanwhile are left for the next call.
func (l *Limiter) flushQueue() (int, error) {
	l.queueMu.Lock()
	todo := make(map[bkey]netip.Prefix, len(l.queue))
	for k, p := range l.queue {
		todo[k] = p
	}
	l.queueMu.Unlock()
	n := 0
	for k, p := range todo {
		if err := l.flushOne(k, p); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// flushOne writes the queued change of k (prefix p) and unqueues it.
func (l *Limiter) flushOne(k bkey, p netip.Prefix) error {
	l.storeMu.Lock() // in order with saveBan and deleteBan
	defer l.storeMu.Unlock()
	l.mu.RLock()
	r := l.bans.recs[k]
	var (
		ban Ban
		seq uint64
	)
	if r != nil {
		ban, seq = r.ban, r.seq
	}
	l.mu.RUnlock()
	var err error
	if r != nil {
		err = l.store.SaveBan(ban)
	} else {
		err = l.store.DeleteBan(p)
	}
	if err != nil {
		return fmt.Errorf("%w: write queued ban change of %v: %w", ErrStore, p, err)
	}
	if r != nil {
		l.markSynced(k, seq)
	}
	l.queueMu.Lock()
	delete(l.queue, k)
	l.queueMu.Unlock()
	return nil
}

// resyncBans loads the store's bans into the table after a subscription
// gap: bans made or escalated elsewhere meanwhile are applied, and records
// that were in the store and no longer are (unbanned elsewhere) are
// dropped, unless they changed since the load began. Records not yet
// written (queued, or a save under way) stay, and keys unbanned during the
// load are not banned again from it.
func (l *Limiter) resyncBans() error {
	l.storeMu.Lock() // no save lands (and marks its record synced) during the load
	defer l.storeMu.Unlock()
	l.mu.Lock()
	seq0, now := l.seq, l.clock
	l.unbanned = make(map[bkey]bool)
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.unbanned = nil
		l.mu.Unlock()
	}()
	bans, err := l.store.LoadBans(now)
	if err != nil {
		return fmt.Errorf("%w: load bans: %w", ErrStore, err)
	}
	seen := make(map[bkey]bool, len(bans))
	// changes are reported to the hook once the lock is released.
	var changes []BanChange
	for chunk := range slices.Chunk(bans, resyncBatch) { // Check waits one chunk at most
		l.mu.Lock()
		s := l.cfg.Load()
		for _, b := range chunk {
			p, err := normPrefix(b.Key)
			if err != nil || b.Until.IsZero() {
				continue
			}
			b.Key = p
			if k := keyOf(p); !l.unbanned[k] {
				seen[k] = true
				if l.installLocked(s, b) && b.Active(l.clock) {
					changes = append(changes, BanChange{Ban: b, Remote: true})
				}
			}
		}
		l.mu.Unlock()
		l.notify(changes...)
		changes = changes[:0]
	}
	l.mu.Lock()
	for k, r := range l.bans.recs {
		if r.synced && r.seq <= seq0 && !seen[k] {
			if r.active && r.ban.Active(l.clock) {
				changes = append(changes, BanChange{Ban: r.ban, Lifted: true, Remote: true})
			}
			l.bans.remove(r)
		}
	}
	l.syncLocked()
	l.mu.Unlock()
	l.notify(changes...)
	return nil
}

// installLocked puts b (normalised), made by the shared store or another
// limiter, in the table, unless the table holds a later ban of its key. A
// ban new to the table that is still in force clears the key's budget, as
// banLocked does. It reports whether b was new.
func (l *Limiter) installLocked(s *settings, b Ban) bool {
	if b.Forget.IsZero() {
		b.Forget = b.Until.Add(s.MaxBanTime)
	}
	b.Count = max(b.Count, 1)
	k := keyOf(b.Key)
	r := l.bans.recs[k]
	// The shared store keeps milliseconds: compare at that grain.
	if r != nil {
		have, got := r.ban.Since.UnixMilli(), b.Since.UnixMilli()
		if have == got && r.ban.Count == b.Count {
			r.synced = true // our own ban, come back from the store
			return false
		}
		if have > got || have == got && r.ban.Count > b.Count {
			return false
		}
	}
	l.seq++
	if r != nil {
		r.ban = b
		l.bans.activate(r)
	} else {
		if !l.makeRoomLocked(s) {
			return false
		}
		r = &banRec{ban: b, key: k, active: true, due: b.Until}
		l.bans.insert(r)
	}
	r.seq, r.synced = l.seq, true
	if l.clock.Before(b.Until) {
		l.budgets.remove(k)
	}
	l.syncLocked()
	return true
}

// sharedFailed counts err (from the shared store) and opens the circuit:
// decisions are local until reconcile closes it.
func (l *Limiter) sharedFailed(err error) {
	if !errors.Is(err, ErrStore) {
		err = fmt.Errorf("%w: %w", ErrStore, err)
	}
	l.storeFailed(err)
	l.sharedDown.Store(true)
}

// sharedUp reports whether decisions go to the shared store.
func (l *Limiter) sharedUp() bool {
	return l.shared != nil && !l.sharedDown.Load()
}

// queueIfDown queues the ban change of p when the shared store is down,
// and reports whether it did. Called with storeMu held.
func (l *Limiter) queueIfDown(p netip.Prefix) bool {
	l.queueMu.Lock()
	defer l.queueMu.Unlock()
	if !l.sharedDown.Load() {
		return false
	}
	l.enqueueLocked(p)
	return true
}

// enqueue queues the ban change of p after a failed write and opens the
// circuit. Called with storeMu held.
func (l *Limiter) enqueue(p netip.Prefix) {
	l.queueMu.Lock()
	l.enqueueLocked(p)
	l.sharedDown.Store(true)
	l.queueMu.Unlock()
}

// enqueueLocked queues p, within MaxTracked keys (beyond, the change is
// only local).
func (l *Limiter) enqueueLocked(p netip.Prefix) {
	k := keyOf(p)
	if _, ok := l.queue[k]; ok || len(l.queue) < l.cfg.Load().MaxTracked {
		l.queue[k] = p
	}
}

// attemptShared decides an allowed-so-far attempt with the shared store,
// or locally if the store fails.
func (l *Limiter) attemptShared(now time.Time, s *settings, addr netip.Addr, d Decision) Decision {
	res, err := l.shared.SharedAttempt(context.Background(), d.Key, now, s.params())
	l.mu.Lock()
	if err != nil {
		l.sharedFailed(err)
		if r, _ := l.bans.find(now, addr); r != nil { // applied meanwhile
			l.mu.Unlock()
			d.Ban = r.ban
			return d
		}
		if s.FailClosed {
			l.mu.Unlock()
			d.StoreDown = true
			return d
		}
		d, seq := l.attemptLocked(now, s, d)
		l.mu.Unlock()
		return l.publish(d, seq)
	}
	var change *BanChange
	switch res.Verdict {
	case SharedAllowed:
		// The local budget keeps this limiter's places, for the local
		// decisions made if the store goes down.
		b := l.bucketLocked(now, s, keyOf(d.Key))
		b.pending++
		d.Allowed, d.Remaining = true, res.Remaining
	case SharedBusy:
		d.Busy = true
	default:
		d, change = l.sharedBanLocked(s, res, d)
	}
	l.mu.Unlock()
	if change != nil {
		l.notify(*change)
	}
	return d
}

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

// failShared settles a failure with the shared store (the local budget has
// already counted it), or decides locally if the store fails.
func (l *Limiter) failShared(now time.Time, s *settings, addr netip.Addr, d Decision, settle bool) Decision {
	o := OutcomeFailure
	if !settle {
		o = OutcomePenalty
	}
	res, err := l.shared.SharedSettle(context.Background(), d.Key, now, o, s.params())
	l.mu.Lock()
	cover, _ := l.bans.find(now, addr)
	if err != nil {
		l.sharedFailed(err)
		k := keyOf(d.Key)
		b := l.budgets.get(k)
		if b == nil { // cleared by a ban, or evicted, meanwhile
			if cover != nil {
				l.mu.Unlock()
				d.Ban = cover.ban
				return d
			}
			b = l.newBucketLocked(s, k)
			b.lim.AllowN(now, 1)
		}
		d, seq := l.failLocked(now, s, d, b, cover)
		l.mu.Unlock()
		return l.publish(d, seq)
	}
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
	return d
}

// SharedUsers returns the username budgets of l's shared store (for
// Users.SetShared) behind l's circuit: while l decides locally because the
// store is down, they fail at once rather than wait for a timeout each, and
// a call that fails opens the circuit (and is counted) as a failed budget
// call does. nil: l's store keeps no username budgets.
func (l *Limiter) SharedUsers() SharedUserBudgets {
	s, ok := l.shared.(SharedUserBudgets)
	if !ok {
		return nil
	}
	return circuitUsers{l, s}
}

// circuitUsers is a SharedUserBudgets behind a limiter's circuit.
type circuitUsers struct {
	l *Limiter
	s SharedUserBudgets
}

func (c circuitUsers) UserRemaining(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error) {
	return c.call(func() (int, error) { return c.s.UserRemaining(ctx, user, now, failures, window) })
}

func (c circuitUsers) UserFailure(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error) {
	return c.call(func() (int, error) { return c.s.UserFailure(ctx, user, now, failures, window) })
}

func (c circuitUsers) call(fn func() (int, error)) (int, error) {
	if !c.l.sharedUp() {
		return 0, ErrSharedDown
	}
	n, err := fn()
	if err != nil {
		c.l.sharedFailed(err)
	}
	return n, err
}
