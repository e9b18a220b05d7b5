package limiter

// The circuit's catching up with the shared store once it is back: the
// resync of the ban table (bans missing from the store are written back,
// not lifted) and the charging of the failures settled locally meanwhile.

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// resyncBans loads the store's bans into the table after a subscription
// gap: bans made or escalated elsewhere meanwhile are applied. Records that
// were in the store and no longer are, unless they changed since the load
// began, are dropped only if the store remembers an explicit unban of
// them (UnbanLog: unbanned elsewhere during the gap); otherwise the store
// lost them and they are queued to be written back (repair). Records not yet
// written (queued, or a save under way) stay, and keys unbanned during the
// load are not banned again from it.
func (c *circuit) resyncBans() error {
	l := c.l
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
			p, err := NormPrefix(b.Key)
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
	// Records the store should hold and does not: lost (Redis restarted
	// from an older snapshot, a lagging replica promoted, a key evicted) or
	// unbanned elsewhere. Missing never means lifted: only an unban the
	// store remembers (UnbanLog) lifts; the rest are written back.
	type missing struct {
		key bkey
		ban Ban
		seq uint64
	}
	var lost []missing
	l.mu.Lock()
	for k, r := range l.bans.recs {
		if r.synced && r.seq <= seq0 && !seen[k] {
			lost = append(lost, missing{k, r.ban, r.seq})
		}
	}
	l.mu.Unlock()
	var unbanned map[netip.Prefix]time.Time
	if ul, ok := c.sb.(UnbanLog); ok && len(lost) > 0 {
		keys := make([]netip.Prefix, len(lost))
		for i, m := range lost {
			keys[i] = m.ban.Key
		}
		if unbanned, err = ul.Unbanned(context.Background(), keys); err != nil {
			return fmt.Errorf("%w: read unbans: %w", ErrStore, err)
		}
	}
	l.mu.Lock()
	c.queueMu.Lock()
	for _, m := range lost {
		r := l.bans.recs[m.key]
		if r == nil || r.seq != m.seq || l.unbanned[m.key] {
			continue // changed meanwhile
		}
		if at, ok := unbanned[m.ban.Key]; ok && at.UnixMilli() >= m.ban.Since.UnixMilli() {
			if r.active && r.ban.Active(l.clock) {
				changes = append(changes, BanChange{Ban: r.ban, Lifted: true, Remote: true})
			}
			l.bans.remove(r)
			continue
		}
		r.synced = false // repair: write it back
		c.enqueueLocked(r.ban.Key)
		c.repaired.Add(1)
	}
	c.queueMu.Unlock()
	l.syncLocked()
	l.mu.Unlock()
	l.notify(changes...)
	return nil
}

// owedFailures are the failures of a key settled locally while the shared
// store was down, not yet charged to its shared budget.
type owedFailures struct {
	key netip.Prefix
	n   int
}

// owe records a failure of key settled locally, within bounds: at most
// MaxTracked keys, and per key at most Failures (more would only ban what
// Failures bans already). Called with l.mu held.
func (c *circuit) owe(s *settings, key netip.Prefix, _ time.Time) {
	c.queueMu.Lock()
	defer c.queueMu.Unlock()
	k := keyOf(key)
	o := c.owed[k]
	if o == nil {
		if len(c.owed) >= s.MaxTracked {
			return
		}
		o = &owedFailures{key: key}
		c.owed[k] = o
	}
	o.n = min(o.n+1, s.Failures)
}

// chargeOwed charges the failures settled locally during the outage to
// the shared budgets (OutcomePenalty: a token each, no place), so that an
// outage does not give a key its budget once per instance on top of the
// shared one. A key the charges ban is banned here as by any shared
// decision (and published by the store). Charged at the latest time the
// limiter was given. What is not charged when the store fails again stays
// owed.
func (c *circuit) chargeOwed(ctx context.Context) error {
	l := c.l
	c.queueMu.Lock()
	todo := make([]*owedFailures, 0, len(c.owed))
	for _, o := range c.owed {
		todo = append(todo, o)
	}
	c.queueMu.Unlock()
	for _, o := range todo {
		for {
			c.queueMu.Lock()
			n := o.n
			c.queueMu.Unlock()
			if n == 0 || ctx.Err() != nil {
				break
			}
			l.mu.RLock()
			now := l.clock
			l.mu.RUnlock()
			s := l.cfg.Load()
			res, err := c.sb.SharedSettle(ctx, o.key, now, OutcomePenalty, s.params())
			if err != nil {
				return fmt.Errorf("%w: charge failures of %v: %w", ErrStore, o.key, err)
			}
			c.queueMu.Lock()
			o.n--
			if res.Verdict == SharedBanned || res.Verdict == SharedNewBan {
				o.n = 0 // banned: the rest would change nothing
			}
			c.queueMu.Unlock()
			if res.Verdict == SharedBanned || res.Verdict == SharedNewBan {
				l.mu.Lock()
				_, change := l.sharedBanLocked(s, res, Decision{Key: o.key})
				l.mu.Unlock()
				if change != nil {
					l.notify(*change)
				}
			}
		}
		c.queueMu.Lock()
		if o.n == 0 && c.owed[keyOf(o.key)] == o {
			delete(c.owed, keyOf(o.key))
		}
		c.queueMu.Unlock()
	}
	return ctx.Err()
}
