package limiter

// No-auth penalties: a key whose connections keep ending without a login
// attempt (held idle until the login timeout, shed to make room, closed at
// the pre-login command limit) is refused at the gate for a while, in the
// spirit of OpenSSH's PerSourcePenalties. They cost the attacker who holds
// connection slots open what a budget costs the one who guesses.
//
// The table is this instance's own (not in the Store, not shared, not pushed
// to the firewall hook): a penalty is short and keeps a key off the gate, it
// is not a verdict on the key. It never touches the key's budget or its ban
// escalation count.

import (
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// ReasonNoAuth is the Reason of the Bans that Penalties lists.
const ReasonNoAuth = "noauth"

// NoAuthConfig are the settings of no-auth penalties, given with each call
// (they belong to the proxy's [sessions] section). The zero value is off.
type NoAuthConfig struct {
	// Penalty is the first penalty of a key; 0: off (NoAuth records nothing).
	Penalty time.Duration
	// After is how many connections of a key must end without a login
	// attempt, each within MaxPenalty of the one before, for a penalty.
	// Values below 1 count as 1.
	After int
	// Factor multiplies the penalty for each further penalty of the key
	// (values below 1 count as 1).
	Factor float64
	// MaxPenalty caps a penalty (0: Penalty). A key's count of penalties
	// is forgotten MaxPenalty after its latest penalty ends.
	MaxPenalty time.Duration
	// KnownGoodTTL is how long a key that logged in (LoggedIn) is never
	// penalised; 0: 24h.
	KnownGoodTTL time.Duration
}

// duration is the count-th penalty: Penalty × Factor^(count−1), capped.
func (c NoAuthConfig) duration(count int) time.Duration {
	f := max(c.Factor, 1)
	limit := max(c.MaxPenalty, c.Penalty)
	d := float64(c.Penalty) * math.Pow(f, float64(count-1))
	if !(d < float64(limit)) {
		return limit
	}
	return time.Duration(d)
}

// penRec is a key's no-auth state.
type penRec struct {
	strikes int       // connections ended without a login attempt since the last penalty
	last    time.Time // the latest of them
	count   int       // penalties so far (for escalation)
	since   time.Time // the latest penalty began
	until   time.Time // … and ends
	forget  time.Time // count is forgotten then
}

// penalties is the Limiter's table of no-auth state and of keys that logged
// in recently. Both tables hold at most the limiter's MaxTracked keys; the
// least recently used is dropped. Its zero value is ready; it has its own
// lock (never taken with Limiter.mu).
type penalties struct {
	mu     sync.Mutex
	ready  bool
	recs   ulru[bkey, penRec]
	good   ulru[bkey, time.Time] // known-good until; touched on LoggedIn only
	keys   map[bkey]netip.Prefix // the prefix of each key in recs, for listing
	active int                   // upper bound of penalties in force (0: Penalized skips the lock)
}

func (p *penalties) initLocked() {
	if !p.ready {
		p.recs.init()
		p.good.init()
		p.keys = make(map[bkey]netip.Prefix)
		p.ready = true
	}
}

// NoAuth records that a connection of addr ended without a login attempt
// at now. When that makes the key's After-th such connection (each within
// MaxPenalty of the one before), the key is penalised: it returns the
// penalty (a Ban with Reason ReasonNoAuth) and true. Nothing is recorded
// while c is off, for an allowlisted address, for a key that logged in
// within KnownGoodTTL (LoggedIn), or while the key's penalty is in force.
func (l *Limiter) NoAuth(now time.Time, addr netip.Addr, c NoAuthConfig) (Ban, bool) {
	addr = normAddr(addr)
	if c.Penalty <= 0 || !addr.IsValid() {
		return Ban{}, false
	}
	s := l.cfg.Load()
	if s.allowed(addr) {
		return Ban{}, false
	}
	key := s.key(addr)
	k := keyOf(key)
	p := &l.pen
	p.mu.Lock()
	defer p.mu.Unlock()
	p.initLocked()
	if g := p.good.get(k); g != nil {
		if now.Before(g.val) {
			return Ban{}, false
		}
		p.good.remove(g)
	}
	window := max(c.MaxPenalty, c.Penalty)
	e := p.recs.get(k)
	if e == nil {
		for p.recs.len() >= max(s.MaxTracked, 1) {
			old := p.recs.oldest()
			delete(p.keys, old.key)
			p.recs.remove(old)
		}
		e = p.recs.add(k)
		e.val = penRec{}
		p.keys[k] = key
	} else {
		p.recs.touch(e)
	}
	r := &e.val
	switch {
	case now.Before(r.until):
		return Ban{}, false // penalised already: a session opened before
	case !r.forget.IsZero() && !now.Before(r.forget):
		r.count = 0
	}
	if r.strikes > 0 && now.Sub(r.last) > window {
		r.strikes = 0
	}
	r.strikes++
	r.last = now
	if r.strikes < max(c.After, 1) {
		return Ban{}, false
	}
	r.strikes = 0
	r.count++
	r.since = now
	r.until = now.Add(c.duration(r.count))
	r.forget = r.until.Add(window)
	p.active++
	return r.ban(key), true
}

func (r *penRec) ban(key netip.Prefix) Ban {
	return Ban{Key: key, Until: r.until, Count: r.count, Reason: ReasonNoAuth, Since: r.since, Forget: r.forget}
}

// LoggedIn records that a session of addr logged in at now: its key is not
// penalised for KnownGoodTTL (c's; 0: 24h) — connections of a NAT or a
// campus that some users leave idle do not lock the others out. A penalty
// in force is lifted.
func (l *Limiter) LoggedIn(now time.Time, addr netip.Addr, c NoAuthConfig) {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return
	}
	s := l.cfg.Load()
	k := keyOf(s.key(addr))
	ttl := c.KnownGoodTTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	p := &l.pen
	p.mu.Lock()
	defer p.mu.Unlock()
	p.initLocked()
	g := p.good.get(k)
	if g == nil {
		for p.good.len() >= max(s.MaxTracked, 1) {
			p.good.remove(p.good.oldest())
		}
		g = p.good.add(k)
	} else {
		p.good.touch(g)
	}
	g.val = now.Add(ttl)
	if e := p.recs.get(k); e != nil {
		e.val.strikes = 0
		e.val.until = time.Time{}
	}
}

// Penalized returns the no-auth penalty in force at now for addr's key,
// if any. Allowlisted addresses are never penalised.
func (l *Limiter) Penalized(now time.Time, addr netip.Addr) (Ban, bool) {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return Ban{}, false
	}
	s := l.cfg.Load()
	if s.allowed(addr) {
		return Ban{}, false
	}
	key := s.key(addr)
	p := &l.pen
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready || p.active == 0 {
		return Ban{}, false
	}
	e := p.recs.get(keyOf(key))
	if e == nil || !now.Before(e.val.until) {
		return Ban{}, false
	}
	return e.val.ban(key), true
}

// Penalties returns the no-auth penalties in force at now (Reason
// ReasonNoAuth), sorted by Until. It walks the table (at most MaxTracked
// keys): for the admin API, not for the connection path.
func (l *Limiter) Penalties(now time.Time) []Ban {
	p := &l.pen
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready {
		return nil
	}
	var out []Ban
	for e := p.recs.root.next; e != &p.recs.root; e = e.next {
		if now.Before(e.val.until) {
			out = append(out, e.val.ban(p.keys[e.key]))
		}
	}
	p.active = len(out)
	slices.SortFunc(out, compareBans)
	return out
}

// LiftPenalty lifts the no-auth penalty of key (a Key, as Penalties lists
// it) and forgets its escalation count. It reports whether a penalty was in
// force at now.
func (l *Limiter) LiftPenalty(now time.Time, key netip.Prefix) bool {
	np, err := NormPrefix(key)
	if err != nil {
		return false
	}
	p := &l.pen
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready {
		return false
	}
	e := p.recs.get(keyOf(np))
	if e == nil {
		return false
	}
	lifted := now.Before(e.val.until)
	delete(p.keys, e.key)
	p.recs.remove(e)
	return lifted
}
