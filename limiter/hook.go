package limiter

// BanChange is one change of a Limiter's ban table, as reported to the hook
// of SetBanHook.
type BanChange struct {
	// Ban is the ban made or learned; for a lift, the ban that was lifted.
	Ban Ban
	// Lifted: the ban of Ban.Key was lifted (Unban here, or an unban made
	// by another limiter on the shared store). Otherwise Ban was made.
	Lifted bool
	// Remote: the change was learned from the shared store (made by another
	// limiter), not made by this one.
	Remote bool
	// Unsaved: a ban this limiter made that is in force but not (yet) in
	// the store: the write failed (a full disk, an I/O error) or is queued
	// while the shared store is down. It would not survive a restart nor
	// reach other instances. The limiter writes it again, with backoff,
	// until it lands, then reports the same Ban once more with Saved.
	Unsaved bool
	// Saved: not a new change, but a ban reported earlier with Unsaved that
	// has now been written to the store. A hook that acts on bans (a
	// firewall) has nothing more to do for it.
	Saved bool
}

// SetBanHook makes fn receive every ban this limiter makes (a spent budget,
// BanKey) or learns from a shared store (another limiter's ban, found by
// the subscription, a resync or a shared decision), and every ban lifted
// (Unban, or another limiter's unban). A ban learned that is already over
// is not reported, nor are the bans New loads (read them with Bans) or bans
// that simply run out (Ban.Until says when).
//
// fn is called after the change is in force, outside the limiter's lock,
// on the goroutine that made or learned it (a session deciding a login, an
// admin call, the subscription): it must be fast and must not block — hand
// the change to a queue. Changes made at once by several goroutines reach
// fn concurrently, and two changes of one key made at once may arrive in
// either order. nil removes the hook. SetBanHook is safe for concurrent use.
func (l *Limiter) SetBanHook(fn func(BanChange)) {
	if fn == nil {
		l.hook.Store(nil)
		return
	}
	l.hook.Store(&fn)
}

// notify reports changes to the hook, if any, marking the bans this
// limiter made that are not in the store as Unsaved, then lets the bans
// widen (widen.go). Never call it with l.mu held.
func (l *Limiter) notify(changes ...BanChange) {
	if p := l.hook.Load(); p != nil {
		for _, c := range changes {
			if !c.Lifted && !c.Remote && !c.Saved {
				c.Unsaved = l.unsaved(c.Ban)
			}
			(*p)(c)
		}
	}
	l.widen(changes)
}
