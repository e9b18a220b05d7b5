package limiter

// The circuit breaker around a shared store: decisions go to the store
// while it answers and to the local table while it does not, and ban
// changes made meanwhile are queued and written once it is back.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// resyncBatch bounds the bans a resync installs under one hold of the lock.
const resyncBatch = 1024

// probeInterval is how often a limiter whose shared store is down tries to
// write its queued ban changes and close the circuit again.
const probeInterval = 250 * time.Millisecond

// circuit is the budgetKeeper of a limiter on a SharedBudgets store: a
// sharedKeeper behind a circuit breaker. While the circuit is closed,
// decisions go to the store; a failed call opens it (the error is counted)
// and decisions fall back to the localKeeper, which has counted this
// limiter's own attempts and failures all along. Ban changes made while it
// is open are queued. Two goroutines run until close: the subscription,
// which applies other limiters' bans to the local table, and maintain,
// which writes the queue, resyncs the ban table and closes the circuit
// again once the store answers and the subscription is up.
type circuit struct {
	l      *Limiter
	sb     SharedBudgets
	shared budgetKeeper // sharedKeeper{l, sb}
	local  budgetKeeper // localKeeper{l}

	open    atomic.Bool // decisions are local
	subUp   atomic.Bool // the subscription to other limiters' bans is up
	resync  chan struct{}
	queueMu sync.Mutex             // guards queue, and closing the circuit
	queue   map[bkey]netip.Prefix  // ban changes to write once the store is back
	owed    map[bkey]*owedFailures // failures settled locally, to charge once the store is back; under queueMu
	// repaired counts the bans a resync found missing from the store
	// (without an unban) and wrote back.
	repaired atomic.Uint64
	stop     context.CancelFunc
	wg       sync.WaitGroup
}

// newCircuit returns the circuit of l on sb, open if down (until the first
// reconcile), and starts its goroutines.
func newCircuit(l *Limiter, sb SharedBudgets, down bool) *circuit {
	c := &circuit{l: l, sb: sb, shared: sharedKeeper{l, sb}, local: localKeeper{l},
		resync: make(chan struct{}, 1), queue: make(map[bkey]netip.Prefix),
		owed: make(map[bkey]*owedFailures)}
	c.open.Store(down)
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	c.wg.Go(func() { sb.Subscribe(ctx, c.onEvent) })
	c.wg.Go(func() { c.maintain(ctx) })
	return c
}

func (c *circuit) close() {
	c.stop()
	c.wg.Wait()
}

func (c *circuit) down() bool { return c.open.Load() }

func (c *circuit) unsynced() int {
	c.queueMu.Lock()
	defer c.queueMu.Unlock()
	return len(c.queue)
}

func (c *circuit) attempt(now time.Time, s *settings, addr netip.Addr, d Decision, wr *waitReq) (Decision, error) {
	l := c.l
	if !c.open.Load() {
		got, err := c.shared.attempt(now, s, addr, d, wr)
		if err == nil {
			return got, nil
		}
		c.failed(err)
		l.mu.Lock()
		if r, _ := l.bans.find(now, addr); r != nil { // applied meanwhile
			l.mu.Unlock()
			d.Ban = r.ban
			return d, nil
		}
	}
	if s.FailClosed {
		l.mu.Unlock()
		d.StoreDown = true
		return d, nil
	}
	return c.local.attempt(now, s, addr, d, wr)
}

func (c *circuit) fail(now time.Time, s *settings, addr netip.Addr, d Decision, b *bucket, cover *banRec, o Outcome) (Decision, error) {
	l := c.l
	if c.open.Load() {
		c.owe(s, d.Key, now)
		return c.local.fail(now, s, addr, d, b, cover, o)
	}
	got, err := c.shared.fail(now, s, addr, d, b, cover, o)
	if err == nil {
		return got, nil
	}
	c.failed(err)
	l.mu.Lock()
	c.owe(s, d.Key, now)
	cover, _ = l.bans.find(now, addr)
	k := keyOf(d.Key)
	b = l.budgets.get(k)
	if b == nil { // cleared by a ban, or evicted, meanwhile
		if cover != nil {
			l.mu.Unlock()
			d.Ban = cover.ban
			return d, nil
		}
		b = l.newBucketLocked(s, k)
		b.lim.AllowN(now, 1)
	}
	return c.local.fail(now, s, addr, d, b, cover, o)
}

func (c *circuit) settled(now time.Time, s *settings, key netip.Prefix, o Outcome) error {
	if c.open.Load() {
		return nil
	}
	if err := c.shared.settled(now, s, key, o); err != nil {
		c.failed(err)
	}
	return nil
}

func (c *circuit) write(p netip.Prefix, fn func() error) (bool, error) {
	if c.queueIfDown(p) {
		return true, nil
	}
	err := fn()
	if err != nil {
		c.enqueue(p)
	}
	return false, err
}

// onEvent applies one message of the subscription.
func (c *circuit) onEvent(ev BanEvent) {
	l := c.l
	switch ev.Kind {
	case EventBan:
		p, err := NormPrefix(ev.Ban.Key)
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
		p, err := NormPrefix(ev.Ban.Key)
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
			c.requestResync()
		}
	case EventResync:
		if ev.Fresh {
			c.requeueAll()
		}
		c.subUp.Store(true)
		c.requestResync()
	case EventLost:
		c.queueMu.Lock()
		c.subUp.Store(false)
		c.open.Store(true)
		c.queueMu.Unlock()
		l.storeFailed(fmt.Errorf("%w: subscription: %w", ErrStore, ev.Err))
	}
}

// requestResync makes the maintain goroutine reconcile with a full load.
func (c *circuit) requestResync() {
	select {
	case c.resync <- struct{}{}:
	default:
	}
}

// requeueAll queues every ban record for writing, as not in the store.
func (c *circuit) requeueAll() {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	c.queueMu.Lock()
	defer c.queueMu.Unlock()
	for _, r := range l.bans.recs {
		r.synced = false
		c.enqueueLocked(r.ban.Key)
	}
}

// maintain reconciles with the shared store after each (re)subscription,
// and while the circuit is open, every probeInterval.
func (c *circuit) maintain(ctx context.Context) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.resync:
			c.reconcile(ctx, true)
		case <-t.C:
			if c.open.Load() && c.subUp.Load() {
				c.reconcile(ctx, false)
			}
		}
	}
}

// reconcile writes the queued ban changes, then (full) reloads the store's
// bans into the table, or else checks that the store answers; if all went
// well and the subscription is up, it closes the circuit.
func (c *circuit) reconcile(ctx context.Context, full bool) {
	n, err := c.flushQueue()
	switch {
	case err != nil:
	case full:
		if err = c.resyncBans(); err == nil {
			_, err = c.flushQueue() // the bans the store had lost, written back
		}
	case n == 0:
		err = c.sb.Ping(ctx)
	}
	if err == nil {
		err = c.chargeOwed(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			c.failed(err)
		}
		return
	}
	c.queueMu.Lock()
	if len(c.queue) == 0 && len(c.owed) == 0 && c.subUp.Load() {
		c.open.Store(false)
	}
	c.queueMu.Unlock()
}

// flushQueue writes the current state of each queued key to the store: its
// ban, or its deletion. It returns how many keys it wrote. Changes queued
// meanwhile are left for the next call.
func (c *circuit) flushQueue() (int, error) {
	c.queueMu.Lock()
	todo := make(map[bkey]netip.Prefix, len(c.queue))
	for k, p := range c.queue {
		todo[k] = p
	}
	c.queueMu.Unlock()
	n := 0
	for k, p := range todo {
		saved, err := c.flushOne(k, p)
		if err != nil {
			return n, err
		}
		if saved != nil {
			c.l.notify(BanChange{Ban: *saved, Saved: true})
		}
		n++
	}
	return n, nil
}

// flushOne writes the queued change of k (prefix p) and unqueues it. It
// returns the ban it wrote if that ban was announced as Unsaved.
func (c *circuit) flushOne(k bkey, p netip.Prefix) (*Ban, error) {
	l := c.l
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
	useq, unban := l.unbans[k]
	l.mu.RUnlock()
	var err error
	switch {
	case r != nil:
		err = l.store.SaveBan(ban)
	case unban:
		err = l.writeUnban(k, p, useq)
	}
	// Else the record was evicted or forgotten: the store keeps what it
	// has (pendingUnbanLocked).
	if err != nil {
		return nil, fmt.Errorf("%w: write queued ban change of %v: %w", ErrStore, p, err)
	}
	c.queueMu.Lock()
	delete(c.queue, k)
	c.queueMu.Unlock()
	if r != nil && l.markSynced(k, seq) {
		return &ban, nil
	}
	return nil, nil
}

// queueIfDown queues the ban change of p when the shared store is down,
// and reports whether it did. Called with storeMu held.
func (c *circuit) queueIfDown(p netip.Prefix) bool {
	c.queueMu.Lock()
	defer c.queueMu.Unlock()
	if !c.open.Load() {
		return false
	}
	c.enqueueLocked(p)
	return true
}

// enqueue queues the ban change of p after a failed write and opens the
// circuit. Called with storeMu held.
func (c *circuit) enqueue(p netip.Prefix) {
	c.queueMu.Lock()
	c.enqueueLocked(p)
	c.open.Store(true)
	c.queueMu.Unlock()
}

// enqueueLocked queues p, within MaxTracked keys (beyond, the change is
// only local).
func (c *circuit) enqueueLocked(p netip.Prefix) {
	l := c.l
	k := keyOf(p)
	if _, ok := c.queue[k]; ok || len(c.queue) < l.cfg.Load().MaxTracked {
		c.queue[k] = p
	}
}

// failed counts err (from the shared store) and opens the circuit:
// decisions are local until reconcile closes it.
func (c *circuit) failed(err error) {
	l := c.l
	if !errors.Is(err, ErrStore) {
		err = fmt.Errorf("%w: %w", ErrStore, err)
	}
	l.storeFailed(err)
	c.open.Store(true)
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
		if !l.makeRoomLocked(s, &b) {
			return false
		}
		r = &banRec{ban: b, key: k, active: true, due: b.Until}
		l.bans.insert(r)
	}
	r.seq, r.synced = l.seq, true
	delete(l.unbans, k) // the key's state is this ban, in the store already
	if l.clock.Before(b.Until) {
		l.budgets.remove(k)
		l.wakeOverlapping(b.Key) // the guesses waiting find the ban
	}
	l.syncLocked()
	return true
}

// SharedUsers returns the username budgets of l's shared store (for
// Users.SetShared) behind l's circuit: while l decides locally because the
// store is down, they fail at once rather than wait for a timeout each, and
// a call that fails opens the circuit (and is counted) as a failed budget
// call does. nil: l's store keeps no username budgets.
func (l *Limiter) SharedUsers() SharedUserBudgets {
	c, ok := l.keeper.(*circuit)
	if !ok {
		return nil
	}
	s, ok := c.sb.(SharedUserBudgets)
	if !ok {
		return nil
	}
	return circuitUsers{c, s}
}

// circuitUsers is a SharedUserBudgets behind a limiter's circuit.
type circuitUsers struct {
	c *circuit
	s SharedUserBudgets
}

func (u circuitUsers) UserRemaining(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error) {
	return u.call(func() (int, error) { return u.s.UserRemaining(ctx, user, now, failures, window) })
}

func (u circuitUsers) UserFailure(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error) {
	return u.call(func() (int, error) { return u.s.UserFailure(ctx, user, now, failures, window) })
}

// UserReset forwards to the store's UserReset (SharedUserReset), if it has
// one. An admin's reset is tried even while the circuit is open.
func (u circuitUsers) UserReset(ctx context.Context, user string) (bool, error) {
	r, ok := u.s.(SharedUserReset)
	if !ok {
		return false, nil
	}
	found, err := r.UserReset(ctx, user)
	if err != nil {
		u.c.failed(err)
	}
	return found, err
}

func (u circuitUsers) call(fn func() (int, error)) (int, error) {
	if u.c.open.Load() {
		return 0, ErrSharedDown
	}
	n, err := fn()
	if err != nil {
		u.c.failed(err)
	}
	return n, err
}
