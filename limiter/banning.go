package limiter

// Bans made and lifted by hand (BanKey, Unban), the ban table's bounds, and
// the writing of ban changes to the Store.

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"
)

// BanKey bans the prefix key from now for d (d ≤ 0: the escalated ban time,
// as for a budget ban), replacing any ban of key in force, and counts it for
// escalation. key is usually a Key, but may be any prefix: a wider one bans a
// whole network, a narrower one part of a key. It fails with
// ErrInvalidPrefix, or ErrAllowlisted if Config.Allow covers the whole of
// key. An error wrapping ErrStore comes with a valid Ban: the ban is in force
// but was not saved.
func (l *Limiter) BanKey(now time.Time, key netip.Prefix, d time.Duration, reason string) (Ban, error) {
	p, err := NormPrefix(key)
	if err != nil {
		return Ban{}, err
	}
	if reason == "" {
		reason = ReasonAdmin
	}
	l.mu.Lock()
	s := l.tickLocked(now)
	if s.allowedPrefix(p) {
		l.mu.Unlock()
		return Ban{}, fmt.Errorf("%w: %v", ErrAllowlisted, p)
	}
	ban, seq := l.banLocked(now, s, p, d, reason)
	l.mu.Unlock()
	err = l.saveBan(ban, seq)
	l.notify(BanChange{Ban: ban})
	return ban, err
}

// Unban lifts the ban of the prefix key (as given to BanKey, or a Ban's Key)
// and forgets its escalation count, in the limiter and in the store (whose
// DeleteBan keeps nothing): an admin who unbans a key vouches for it, and a
// count kept in memory only would not survive a restart. It reports whether
// a ban was in force as of the latest time the limiter was given. An error
// wrapping ErrStore means the store still has the ban.
func (l *Limiter) Unban(key netip.Prefix) (bool, error) {
	p, err := NormPrefix(key)
	if err != nil {
		return false, err
	}
	l.mu.Lock()
	r := l.bans.recs[keyOf(p)]
	lifted := r != nil && l.inForceLocked(r)
	var old Ban
	if r != nil {
		old = r.ban
		l.bans.remove(r)
		l.syncLocked()
	}
	if l.unbanned != nil {
		l.unbanned[keyOf(p)] = true
	}
	l.seq++
	seq := l.seq
	l.pendingUnbanLocked(keyOf(p), seq)
	l.mu.Unlock()
	err = l.deleteBan(p, seq)
	if lifted {
		l.notify(BanChange{Ban: old, Lifted: true})
	}
	return lifted, err
}

// bansChunk bounds the records Bans copies under one hold of the read
// lock.
const bansChunk = 1024

// Bans returns the bans in force at now, sorted by Until. It reads the
// table a chunk at a time (BansPage) under the read lock only, so the
// connect gate (Check) and the decisions never wait for more than one
// chunk however many bans there are. A ban made, lifted or changed while
// Bans runs may be missing from the result or be there in its earlier
// state; each key appears once.
func (l *Limiter) Bans(now time.Time) []Ban {
	l.advance(now)
	var out []Ban
	seen := make(map[bkey]bool)
	for cursor := 0; ; {
		page, next := l.BansPage(now, cursor, bansChunk)
		for _, b := range page {
			if k := keyOf(b.Key); !seen[k] {
				seen[k] = true
				out = append(out, b)
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	slices.SortFunc(out, compareBans)
	return out
}

// advance moves the limiter's clock to now and expires the bans over,
// bansChunk records per hold of the lock.
func (l *Limiter) advance(now time.Time) {
	l.mu.RLock()
	idle := !now.After(l.clock) && l.bans.idle(now)
	l.mu.RUnlock()
	if idle {
		return
	}
	for {
		l.mu.Lock()
		if now.After(l.clock) {
			l.clock = now
		}
		l.bans.sweep(now, bansChunk)
		more := !l.bans.idle(now)
		l.syncLocked()
		l.mu.Unlock()
		if !more {
			return
		}
	}
}

// BansPage returns the bans in force at now among at most limit records of
// the table's bans marked active, from position cursor (0: the first),
// sorted by Until, and the cursor of the next page (0: this was the last).
// Records of ended bans, kept for escalation, are not paged; a page may
// still hold fewer than limit bans before the last, when bans over have
// not been found so yet. It holds the read lock only, for O(limit) work.
// Positions are those of the heap of active bans (bans ending first come
// early): a ban made, lifted or changed between two pages may be missed or
// repeated. limit < 1 means 1.
func (l *Limiter) BansPage(now time.Time, cursor, limit int) ([]Ban, int) {
	limit = max(limit, 1)
	cursor = max(cursor, 0)
	l.mu.RLock()
	h := l.bans.live
	end := len(h)
	if cursor > end {
		cursor = end // past the last: an empty last page
	}
	if limit < end-cursor { // not cursor+limit: a cursor near MaxInt would wrap
		end = cursor + limit
	}
	var out []Ban
	for i := cursor; i < end; i++ {
		if r := h[i]; r.ban.Active(now) {
			out = append(out, r.ban)
		}
	}
	next := 0
	if end < len(h) {
		next = end
	}
	l.mu.RUnlock()
	slices.SortFunc(out, compareBans)
	return out, next
}

// makeRoomLocked evicts ban records while the table is full, ended ones
// first (banTable.victim). in is the ban about to be added: nil for a ban
// just made here, which always gets its place; a ban from the store or
// another limiter gets one only if it would not itself be the first to go
// (so that a load of ended bans never evicts a ban in force). It reports
// whether there is room.
func (l *Limiter) makeRoomLocked(s *settings, in *Ban) bool {
	for l.bans.len() >= s.MaxTracked {
		r := l.bans.victim()
		if r == nil || in != nil && !l.outranks(*in, r) {
			return false
		}
		l.evictLocked(r)
	}
	return true
}

// evictLocked drops r to stay within MaxTracked, and counts it: a ban in
// force lifted early (BansEvicted) or an ended ban's escalation count
// forgotten early (RememberedEvicted).
func (l *Limiter) evictLocked(r *banRec) {
	if l.inForceLocked(r) {
		l.bansEvicted++
	} else {
		l.rememberedEvicted++
	}
	l.bans.remove(r)
}

// inForceLocked reports whether r holds a ban in force as of the
// limiter's clock (marked active, and not yet past its Until).
func (l *Limiter) inForceLocked(r *banRec) bool {
	return r.active && l.clock.Before(r.ban.Until)
}

// outranks reports whether b is to be kept before the record r, by the
// order of eviction: a ban in force (as of the limiter's clock) before an
// ended one; among bans in force the one ending later; among ended ones
// the one forgotten later. A tie keeps r.
func (l *Limiter) outranks(b Ban, r *banRec) bool {
	bIn, rIn := l.clock.Before(b.Until), l.inForceLocked(r)
	switch {
	case bIn != rIn:
		return bIn
	case bIn:
		return b.Until.After(r.ban.Until)
	default:
		return b.forget().After(r.ban.forget())
	}
}

// banLocked bans p (normalised) from now for d (d ≤ 0: escalated), clears
// the budget of p, and returns the ban and its version for saveBan.
func (l *Limiter) banLocked(now time.Time, s *settings, p netip.Prefix, d time.Duration, reason string) (Ban, uint64) {
	k := keyOf(p)
	r := l.bans.recs[k]
	count := 1
	if r != nil && now.Before(r.ban.Forget) {
		count = min(r.ban.Count, math.MaxInt32-1) + 1 // a store's count may be anything
	}
	if d <= 0 {
		d = s.banDuration(count)
	}
	until := now.Add(d)
	ban := Ban{Key: p, Until: until, Count: count, Reason: reason, Since: now, Forget: until.Add(s.MaxBanTime)}
	if r != nil {
		r.ban = ban
		l.bans.activate(r)
	} else {
		l.makeRoomLocked(s, nil) // MaxTracked ≥ 1, so there is room
		r = &banRec{ban: ban, key: k, active: true, due: until}
		l.bans.insert(r)
	}
	l.seq++
	r.seq, r.synced = l.seq, false
	delete(l.unbans, k) // the key's state to write is this ban
	l.bansCreated++
	l.budgets.remove(k)
	l.wakeOverlapping(p) // the guesses waiting find the ban
	l.syncLocked()
	return ban, r.seq
}

// saveBan writes ban (version seq) to the store unless a later change of
// the same key has superseded it. Store writes are serialised, and l.mu is
// not held during I/O.
func (l *Limiter) saveBan(ban Ban, seq uint64) error {
	l.storeMu.Lock()
	defer l.storeMu.Unlock()
	l.mu.RLock()
	r := l.bans.recs[keyOf(ban.Key)]
	current := r != nil && r.seq == seq
	l.mu.RUnlock()
	if !current {
		return nil
	}
	queued, err := l.keeper.write(ban.Key, func() error { return l.store.SaveBan(ban) })
	if queued {
		return fmt.Errorf("%w: save ban of %v: %w", ErrStore, ban.Key, ErrSharedDown)
	}
	if err != nil {
		l.retryLater(ban.Key)
		return l.storeFailed(fmt.Errorf("%w: save ban of %v: %w", ErrStore, ban.Key, err))
	}
	l.markSynced(keyOf(ban.Key), seq)
	return nil
}

// markSynced records that version seq of the ban of k is in the store. It
// reports whether that ban was announced to the hook as Unsaved (it is to
// be announced again as Saved).
func (l *Limiter) markSynced(k bkey, seq uint64) (toldUnsaved bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.bans.recs[k]; r != nil && r.seq == seq {
		r.synced = true
		toldUnsaved, r.toldUnsaved = r.toldUnsaved, false
	}
	return toldUnsaved
}

// deleteBan deletes the ban of p from the store unless p was banned again
// after the unban of version seq.
func (l *Limiter) deleteBan(p netip.Prefix, seq uint64) error {
	l.storeMu.Lock()
	defer l.storeMu.Unlock()
	l.mu.RLock()
	r := l.bans.recs[keyOf(p)]
	superseded := r != nil && r.seq > seq
	l.mu.RUnlock()
	if superseded {
		return nil
	}
	queued, err := l.keeper.write(p, func() error { return l.store.DeleteBan(p) })
	if queued {
		return fmt.Errorf("%w: delete ban of %v: %w", ErrStore, p, ErrSharedDown)
	}
	if err != nil {
		l.retryLater(p)
		return l.storeFailed(fmt.Errorf("%w: delete ban of %v: %w", ErrStore, p, err))
	}
	l.unbanWritten(keyOf(p), seq)
	return nil
}

// pendingUnbanLocked records that the unban of k (version seq) is to be
// written to the store. A change written again later (retry.go, the
// circuit's queue) is written from the table: a key with no record there
// is deleted from the store only if it is recorded here — a record
// evicted (the table was full) or forgotten leaves the store as it is, for
// an eviction frees memory and is no unban (in Redis a deletion is
// published to every instance as one). At most MaxTracked unbans wait, as
// many as the queues hold; beyond, a failed unban's retry leaves the ban
// in the store.
func (l *Limiter) pendingUnbanLocked(k bkey, seq uint64) {
	if l.unbans == nil {
		l.unbans = make(map[bkey]uint64)
	}
	if _, ok := l.unbans[k]; ok || len(l.unbans) < l.cfg.Load().MaxTracked {
		l.unbans[k] = seq
	}
}

// writeUnban deletes p (key k), whose unban of version seq is pending,
// from the store, and records it written. Called with l.storeMu held.
func (l *Limiter) writeUnban(k bkey, p netip.Prefix, seq uint64) error {
	err := l.store.DeleteBan(p)
	if err == nil {
		l.unbanWritten(k, seq)
	}
	return err
}

// unbanWritten records that the unban of k (version seq) is in the store.
func (l *Limiter) unbanWritten(k bkey, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unbans[k] == seq {
		delete(l.unbans, k)
	}
}

// retryLater has the change of p written again later, after a failed
// write. The circuit of a shared store has queued it already. Called with
// l.storeMu held.
func (l *Limiter) retryLater(p netip.Prefix) {
	if _, ok := l.keeper.(*circuit); !ok {
		l.retry.add(l, p)
	}
}

// storeFailed counts and records err, and returns it.
func (l *Limiter) storeFailed(err error) error {
	l.storeErrors.Add(1)
	l.lastStoreErr.Store(&err)
	return err
}
