package limiter

import (
	"net/netip"
	"time"
)

// External is a source of bans kept outside the limiter (a CrowdSec
// bouncer's decisions): it reports the ban in force at now covering addr
// (an address already normalised: unmapped, no zone), if any. It is called
// by Check for every connection and login verb, and by Attempt (Begin) for
// every guess with the limiter's lock held, so it must be fast, must not
// block, must not call the Limiter and must be safe for concurrent use.
type External func(addr netip.Addr, now time.Time) (Ban, bool)

// SetExternal makes Check consult fn after its allowlist and before its
// own ban table: a ban fn reports refuses the address like one of the
// limiter's own (Decision.Allowed false, Decision.Ban the external ban),
// on every path that checks bans: Check (the gate, USER) and Attempt or
// Begin (every guess, which then takes no place). External bans stay
// apart from the limiter's: they are not stored, not escalated, not
// reported to the ban hook, not listed by Bans and not lifted by Unban.
// Allowlisted addresses are never refused. nil removes the source.
// SetExternal is safe for concurrent use.
func (l *Limiter) SetExternal(fn External) {
	if fn == nil {
		l.external.Store(nil)
		return
	}
	l.external.Store(&fn)
}

// checkExternal fills d from the external source, if one reports a ban
// of addr at now, and reports whether it did.
func (l *Limiter) checkExternal(now time.Time, addr netip.Addr, d *Decision) bool {
	p := l.external.Load()
	if p == nil {
		return false
	}
	b, ok := (*p)(addr, now)
	if !ok || !b.Active(now) {
		return false
	}
	d.Allowed, d.Ban = false, b
	return true
}
