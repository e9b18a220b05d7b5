// Package limiter counts password guesses per network key and bans keys that
// guess too much.
//
// A key is a client address masked to a prefix (/32 for IPv4 and /64 for
// IPv6 by default; IPv4-mapped IPv6 addresses count as IPv4). Each key has a
// budget: a token bucket from golang.org/x/time/rate holding Config.Failures
// tokens and refilled over Config.Window. The caller takes a place in the
// budget with Attempt before it forwards a guess, and settles it with
// Success, Failure or Release when the answer comes. Places held by attempts
// in flight count against the budget, so the budget is a hard cap on the
// guesses that reach the daemon however many connections a key opens: an
// Attempt that finds no free token is refused and bans the key, and so does
// the Failure that takes the last token.
//
// A key's n-th ban lasts BanTime × BanFactor^(n−1), capped at MaxBanTime. The
// count is remembered for MaxBanTime after a ban ends, then forgotten. A ban
// clears the key's budget, so a key comes out of a ban with a full budget
// (and its next ban is longer). Bans go to a Store (NewMemoryStore, or a
// persistent one: package filestore, package redisstore; package stores
// opens the one the [store] config section names) and New loads them back.
//
// A store that implements SharedBudgets (redisstore.Store) also keeps the
// budgets, shared by every limiter on it: N proxies in front of one daemon then allow
// a key the failures one would, and a ban made by one is enforced by all
// within milliseconds. Check still never waits on the store; when the store
// is down, decisions go on locally (or refuse, with Config.FailClosed).
//
// Every method takes the current time as now: the package never reads the
// clock, so tests are tables of steps. Memory is bounded: at most
// Config.MaxTracked keys hold budget state (the least recently used is
// forgotten) and at most as many bans are kept (the ban due first is dropped).
package limiter

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/limiter/internal/prefix"
)

// Errors returned by the limiter and its stores; match them with errors.Is.
var (
	// ErrStore wraps every error that came from the Store.
	ErrStore = errors.New("limiter: store")
	// ErrStoreClosed is returned by a MemoryStore after Close.
	ErrStoreClosed = errors.New("limiter: store closed")
	// ErrAllowlisted is returned by BanKey for a prefix that Config.Allow covers.
	ErrAllowlisted = errors.New("limiter: prefix is allowlisted")
	// ErrInvalidPrefix is returned by BanKey and Unban for an invalid prefix.
	ErrInvalidPrefix = prefix.ErrInvalid
)

// sweepBatch bounds the ban records that one write call expires or forgets.
const sweepBatch = 16

// evictTries is how many least recently used keys with attempts in flight
// are passed over before one is evicted anyway.
const evictTries = 4

// Decision is the answer of Check, Attempt and Failure. The zero Decision
// refuses.
type Decision struct {
	Key         netip.Prefix // the address's key
	Allowed     bool         // false: refuse (banned, or no token left)
	Allowlisted bool         // the address matched Config.Allow (then Allowed is always true)
	Ban         Ban          // the ban in force when !Allowed, or the one just made when NewBan (zero otherwise)
	NewBan      bool         // this very call made the ban (the caller logs "ban")
	// Busy: Attempt refused without a ban because attempts in flight hold
	// every token left (the budget itself is not spent). The caller refuses
	// this guess; the key is not banned for it.
	Busy bool
	// Remaining is the whole tokens left in the key's budget after this call
	// that no attempt in flight holds. Attempt and Failure set it (0 when
	// refused; Config.Failures when allowlisted); Check leaves it 0, as it
	// does not look at budgets.
	Remaining int
	// StoreDown: Check or Attempt refused because Config.FailClosed is set
	// and the shared store is unreachable (no ban is involved).
	StoreDown bool
}

// Stats is a snapshot of a Limiter's tables and counters.
type Stats struct {
	Tracked     int    // keys with budget state
	Banned      int    // active bans (as of the latest time the limiter was given)
	Remembered  int    // ended bans kept for escalation
	Evicted     uint64 // budgets forgotten to stay within MaxTracked
	BansEvicted uint64 // ban records dropped to stay within MaxTracked
	StoreErrors uint64 // failed Store calls
	BansCreated uint64 // bans made (budget and admin) by this limiter
	// SharedDown: the store keeps shared budgets (SharedBudgets) and is
	// unreachable or unsubscribed: decisions are local until it is back.
	SharedDown bool
	// Unsynced is the ban changes made while the shared store was down and
	// not yet written to it.
	Unsynced int
}

// Limiter keeps budgets and bans per key. It is safe for concurrent use:
// one mutex guards the tables (Check only takes it for reading, and not at
// all while no ban is active); store I/O happens outside it. The zero value
// is not usable; use New.
//
// With a store that implements SharedBudgets (redisstore.Store), budgets are
// shared with the other limiters on that store: Attempt, Failure,
// Penalize, Success and Release wait for one call to the store (bounded by
// the store's timeout), while Check still only reads the local ban table,
// which a subscription keeps up to date with the bans of the other
// limiters. When the store fails, decisions go on with the local budget
// (which counts this limiter's own attempts all along), the error is
// counted, Stats reports SharedDown, and bans made meanwhile are written
// when the store is back; Config.FailClosed refuses instead. Call Close to
// stop the subscription.
//
// The hard cap holds as long as a key's budget stays in the table: when more
// than MaxTracked keys are active at once, the least recently used budget is
// forgotten (keys with attempts in flight are passed over a few times first),
// and a forgotten key starts again with a full budget.
type Limiter struct {
	cfg     atomic.Pointer[settings]
	nactive atomic.Int64 // bans marked active; 0 lets Check skip the lock

	mu           sync.RWMutex
	budgets      budgets
	bans         banTable
	clock        time.Time // latest now given to a write call
	seq          uint64    // version of the latest ban-table change
	evicted      uint64
	bansEvicted  uint64
	bansCreated  uint64
	storeMu      sync.Mutex // serialises store writes, so they land in order
	store        Store
	storeErrors  atomic.Uint64
	lastStoreErr atomic.Pointer[error]

	// Shared budgets (nil shared: none); see shared.go.
	shared     SharedBudgets
	sharedDown atomic.Bool // the circuit is open: decisions are local
	subUp      atomic.Bool // the subscription to other limiters' bans is up
	resync     chan struct{}
	queueMu    sync.Mutex            // guards queue, and closing the circuit
	queue      map[bkey]netip.Prefix // ban changes to write once the store is back
	unbanned   map[bkey]bool         // keys unbanned during a resync's load (nil: none under way); under mu
	stop       context.CancelFunc
	wg         sync.WaitGroup
	closeOnce  sync.Once

	hook atomic.Pointer[func(BanChange)] // SetBanHook; nil: none
}

// New returns a Limiter with the configuration cfg (zero fields take their
// defaults) that keeps its bans in store (nil: a new MemoryStore holding at
// most Config.MaxTracked bans).
//
// New loads the bans that store holds (LoadBans with the zero time, as the
// limiter has no clock; bans found to be over are dropped lazily) and
// enforces them, continuing their escalation counts. A store that fails to
// load does not make New fail: the limiter starts without those bans, and
// the error is counted and reported by LastStoreError. New fails only for a
// cfg that does not Validate.
//
// If store implements SharedBudgets, New also starts the goroutines that
// keep the ban table in step with the other limiters on the store; Close
// stops them.
func New(cfg Config, store Store) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := newSettings(cfg)
	if store == nil {
		store = newMemoryStore(s.MaxTracked)
	}
	l := &Limiter{budgets: newBudgets(s.MaxTracked), bans: newBanTable(), store: store}
	l.cfg.Store(s)
	bans, err := store.LoadBans(time.Time{})
	if err != nil {
		l.storeFailed(fmt.Errorf("%w: load bans: %w", ErrStore, err))
	}
	l.mu.Lock()
	for _, b := range bans {
		l.restoreLocked(s, b)
	}
	l.nactive.Store(int64(l.bans.active))
	l.mu.Unlock()
	if sb, ok := store.(SharedBudgets); ok {
		l.sharedDown.Store(err != nil) // until the first reconcile
		l.startShared(sb)
	}
	return l, nil
}

// restoreLocked adds a ban loaded from the store.
func (l *Limiter) restoreLocked(s *settings, b Ban) {
	p, err := normPrefix(b.Key)
	if err != nil || b.Until.IsZero() {
		return
	}
	b.Key = p
	if b.Forget.IsZero() {
		b.Forget = b.Until.Add(s.MaxBanTime)
	}
	b.Count = max(b.Count, 1)
	k := keyOf(p)
	if r := l.bans.recs[k]; r != nil { // the same key twice: keep the later ban
		if !b.Until.After(r.ban.Until) {
			return
		}
		l.bans.remove(r)
	}
	if !l.makeRoomLocked(s) {
		return
	}
	l.bans.insert(&banRec{ban: b, key: k, active: true, due: b.Until, synced: true})
}

// Key returns the key of addr: addr without zone and unmapped from IPv4-mapped
// IPv6, masked to Config.IPv4Prefix or IPv6Prefix bits. The invalid Addr has
// the invalid (zero) key.
func (l *Limiter) Key(addr netip.Addr) netip.Prefix {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return netip.Prefix{}
	}
	return l.cfg.Load().key(addr)
}

// Check is the connect gate: it refuses addr iff a ban covers it at now. It
// is the fast path, run for every connection: it does not touch budgets, does
// no store I/O (not even with a shared store) and does not allocate. A ban
// found over is dropped here. The invalid Addr is refused. With
// Config.FailClosed, it also refuses (StoreDown) while the shared store is
// down.
func (l *Limiter) Check(now time.Time, addr netip.Addr) Decision {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return Decision{}
	}
	s := l.cfg.Load()
	d := Decision{Key: s.key(addr), Allowed: true}
	if s.allowed(addr) {
		d.Allowlisted = true
		return d
	}
	if s.FailClosed && l.sharedDown.Load() {
		d.Allowed, d.StoreDown = false, true
		return d
	}
	if l.nactive.Load() == 0 {
		return d
	}
	l.mu.RLock()
	r, stale := l.bans.find(now, addr)
	if r != nil {
		d.Allowed, d.Ban = false, r.ban
	}
	l.mu.RUnlock()
	if stale {
		l.mu.Lock()
		l.bans.expireCovering(now, addr)
		l.syncLocked()
		l.mu.Unlock()
	}
	return d
}

// Attempt is called before a guess (a PASS, or a counted USER or ACCT) is
// forwarded. It takes a place in the key's budget: it allows the guess iff
// the whole tokens at now, less the attempts in flight, are at least 1, and
// then counts one more attempt in flight, which the caller must settle with
// Success, Failure or Release. When attempts in flight hold every token
// left it refuses with Busy and no ban (concurrent logins behind one NAT
// address must not ban it; the cap holds all the same). When the budget is
// spent it bans the key (NewBan) and refuses. A banned key is refused. An
// allowlisted address is always allowed and not counted.
//
// With a shared store the budget is the one shared by every limiter on it;
// when the store is down the local one decides, or with Config.FailClosed
// the attempt is refused (StoreDown).
func (l *Limiter) Attempt(now time.Time, addr netip.Addr) Decision {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return Decision{}
	}
	l.mu.Lock()
	s := l.tickLocked(now)
	d := Decision{Key: s.key(addr)}
	if s.allowed(addr) {
		l.mu.Unlock()
		d.Allowed, d.Allowlisted, d.Remaining = true, true, s.Failures
		return d
	}
	if r, _ := l.bans.find(now, addr); r != nil {
		l.mu.Unlock()
		d.Ban = r.ban
		return d
	}
	if l.sharedUp() {
		l.mu.Unlock()
		return l.attemptShared(now, s, addr, d)
	}
	if l.shared != nil && s.FailClosed {
		l.mu.Unlock()
		d.StoreDown = true
		return d
	}
	d, seq := l.attemptLocked(now, s, d)
	l.mu.Unlock()
	return l.publish(d, seq)
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
// saveBan once l.mu is released.
func (l *Limiter) attemptLocked(now time.Time, s *settings, d Decision) (Decision, uint64) {
	b := l.bucketLocked(now, s, keyOf(d.Key))
	tokens := whole(b.lim.TokensAt(now))
	if free := tokens - int(b.pending); free >= 1 {
		b.pending++
		d.Allowed, d.Remaining = true, free-1
		return d, 0
	}
	if tokens >= 1 {
		d.Busy = true
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
	l.settle(now, addr, true)
}

// Release settles an attempt of addr that was neither success nor failure
// (e.g. 331 to USER): it frees its place and consumes nothing.
func (l *Limiter) Release(now time.Time, addr netip.Addr) {
	l.settle(now, addr, false)
}

func (l *Limiter) settle(now time.Time, addr netip.Addr, success bool) {
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
	key := s.key(addr)
	if b := l.budgets.get(keyOf(key)); b != nil {
		if b.pending > 0 {
			b.pending--
		}
		if success && s.SuccessResets {
			b.reset(s)
		}
	}
	l.mu.Unlock()
	if l.sharedUp() {
		o := OutcomeRelease
		if success {
			o = OutcomeSuccess
		}
		if _, err := l.shared.SharedSettle(context.Background(), key, now, o, s.params()); err != nil {
			l.sharedFailed(err)
		}
	}
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
	return l.fail(now, addr, true)
}

// Penalize counts a failure of addr that was not preceded by Attempt (e.g.
// a 530 reply to USER for a name the daemon refuses): it consumes one token
// and bans the key like Failure when fewer than one is left, but frees no
// place of an attempt in flight.
func (l *Limiter) Penalize(now time.Time, addr netip.Addr) Decision {
	return l.fail(now, addr, false)
}

func (l *Limiter) fail(now time.Time, addr netip.Addr, settle bool) Decision {
	addr = normAddr(addr)
	if !addr.IsValid() {
		return Decision{}
	}
	l.mu.Lock()
	s := l.tickLocked(now)
	d := Decision{Key: s.key(addr)}
	if s.allowed(addr) {
		l.mu.Unlock()
		d.Allowed, d.Allowlisted, d.Remaining = true, true, s.Failures
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
	if settle && b.pending > 0 {
		b.pending--
	}
	if !b.lim.AllowN(now, 1) {
		// Less than one token, by a hair (within tokenSlack) or because
		// attempts outlived a Reload that shrank the budget: take it on
		// credit, so that every failure is counted. Rare; allocates.
		b.lim.ReserveN(now, 1)
	}
	if l.sharedUp() {
		// The local budget has counted the failure (for the local
		// decisions made if the store goes down); the shared one decides.
		l.mu.Unlock()
		return l.failShared(now, s, addr, d, settle)
	}
	d, seq := l.failLocked(now, s, d, b, cover)
	l.mu.Unlock()
	return l.publish(d, seq)
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

// BanKey bans the prefix key from now for d (d ≤ 0: the escalated ban time,
// as for a budget ban), replacing any ban of key in force, and counts it for
// escalation. key is usually a Key, but may be any prefix: a wider one bans a
// whole network, a narrower one part of a key. It fails with
// ErrInvalidPrefix, or ErrAllowlisted if Config.Allow covers the whole of
// key. An error wrapping ErrStore comes with a valid Ban: the ban is in force
// but was not saved.
func (l *Limiter) BanKey(now time.Time, key netip.Prefix, d time.Duration, reason string) (Ban, error) {
	p, err := normPrefix(key)
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
	p, err := normPrefix(key)
	if err != nil {
		return false, err
	}
	l.mu.Lock()
	r := l.bans.recs[keyOf(p)]
	lifted := r != nil && r.active && l.clock.Before(r.ban.Until)
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
	l.mu.Unlock()
	err = l.deleteBan(p, seq)
	if lifted {
		l.notify(BanChange{Ban: old, Lifted: true})
	}
	return lifted, err
}

// Bans returns the bans in force at now, sorted by Until.
func (l *Limiter) Bans(now time.Time) []Ban {
	l.mu.Lock()
	l.tickLocked(now)
	l.bans.sweep(now, -1)
	l.syncLocked()
	out := make([]Ban, 0, l.bans.active)
	for _, r := range l.bans.recs {
		if r.active {
			out = append(out, r.ban)
		}
	}
	l.mu.Unlock()
	slices.SortFunc(out, compareBans)
	return out
}

// Reload applies cfg (zero fields take their defaults) to later decisions.
// Budgets and bans are kept: a budget takes the new rate and size the next
// time it is used (its tokens capped at the new size); bans keep their
// length; keys under a new prefix length start new budgets, while bans made
// under the old lengths still apply. If the tables hold more than the new
// MaxTracked, they are trimmed now. An invalid cfg is an error, and the old
// configuration stays.
func (l *Limiter) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s := newSettings(cfg)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg.Store(s)
	l.budgets.grow(s.MaxTracked)
	for l.budgets.len() > s.MaxTracked {
		l.evictBudgetLocked()
	}
	for l.bans.len() > s.MaxTracked {
		l.bans.remove(l.bans.soonest())
		l.bansEvicted++
	}
	l.syncLocked()
	return nil
}

// Stats returns a snapshot of the limiter's tables and counters. Bans over
// as of the latest time given to the limiter are not counted as Banned.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bans.sweep(l.clock, -1)
	l.syncLocked()
	return Stats{
		Tracked:     l.budgets.len(),
		Banned:      l.bans.active,
		Remembered:  l.bans.len() - l.bans.active,
		Evicted:     l.evicted,
		BansEvicted: l.bansEvicted,
		BansCreated: l.bansCreated,
		StoreErrors: l.storeErrors.Load(),
		SharedDown:  l.shared != nil && l.sharedDown.Load(),
		Unsynced:    l.unsynced(),
	}
}

// unsynced is the length of the queue of ban changes.
func (l *Limiter) unsynced() int {
	l.queueMu.Lock()
	defer l.queueMu.Unlock()
	return len(l.queue)
}

// LastStoreError returns the latest error from the store (wrapping ErrStore),
// or nil if there was none.
func (l *Limiter) LastStoreError() error {
	if p := l.lastStoreErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Tarpit is how long to hold the reply to a failed login that got d (from
// Failure, Penalize or Attempt.Settle): FailureDelay doubled for each
// failure of the key within its budget (1s, 2s, 4s, …), capped by
// MaxFailureDelay. Allowlisted keys are not delayed; 0 when the tarpit is
// off.
func (l *Limiter) Tarpit(d Decision) time.Duration {
	s := l.cfg.Load()
	if s.FailureDelay <= 0 || d.Allowlisted {
		return 0
	}
	n := min(max(s.Failures-d.Remaining-1, 0), 20)
	return min(s.FailureDelay<<n, max(s.MaxFailureDelay, s.FailureDelay))
}

// CountsUserRejects reports Config.CountUserRejects in force.
func (l *Limiter) CountsUserRejects() bool { return l.cfg.Load().CountUserRejects }

// tickLocked advances the clock, runs a bounded sweep of the ban table and
// returns the settings in force.
func (l *Limiter) tickLocked(now time.Time) *settings {
	if now.After(l.clock) {
		l.clock = now
	}
	if l.bans.len() > 0 {
		l.bans.sweep(now, sweepBatch)
		l.syncLocked()
	}
	return l.cfg.Load()
}

// syncLocked publishes the count of active bans for Check's fast path.
func (l *Limiter) syncLocked() {
	l.nactive.Store(int64(l.bans.active))
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
	l.budgets.remove(b.key)
	l.evicted++
}

// makeRoomLocked drops the ban record due first if the table is full. It
// reports whether there is room.
func (l *Limiter) makeRoomLocked(s *settings) bool {
	for l.bans.len() >= s.MaxTracked {
		r := l.bans.soonest()
		if r == nil {
			return false
		}
		l.bans.remove(r)
		l.bansEvicted++
	}
	return true
}

// banLocked bans p (normalised) from now for d (d ≤ 0: escalated), clears
// the budget of p, and returns the ban and its version for saveBan.
func (l *Limiter) banLocked(now time.Time, s *settings, p netip.Prefix, d time.Duration, reason string) (Ban, uint64) {
	k := keyOf(p)
	r := l.bans.recs[k]
	count := 1
	if r != nil && now.Before(r.ban.Forget) {
		count = r.ban.Count + 1
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
		l.makeRoomLocked(s) // MaxTracked ≥ 1, so there is room
		r = &banRec{ban: ban, key: k, active: true, due: until}
		l.bans.insert(r)
	}
	l.seq++
	r.seq, r.synced = l.seq, false
	l.bansCreated++
	l.budgets.remove(k)
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
	if l.shared != nil && l.queueIfDown(ban.Key) {
		return fmt.Errorf("%w: save ban of %v: %w", ErrStore, ban.Key, ErrSharedDown)
	}
	if err := l.store.SaveBan(ban); err != nil {
		if l.shared != nil {
			l.enqueue(ban.Key)
		}
		return l.storeFailed(fmt.Errorf("%w: save ban of %v: %w", ErrStore, ban.Key, err))
	}
	l.markSynced(keyOf(ban.Key), seq)
	return nil
}

// markSynced records that version seq of the ban of k is in the store.
func (l *Limiter) markSynced(k bkey, seq uint64) {
	l.mu.Lock()
	if r := l.bans.recs[k]; r != nil && r.seq == seq {
		r.synced = true
	}
	l.mu.Unlock()
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
	if l.shared != nil && l.queueIfDown(p) {
		return fmt.Errorf("%w: delete ban of %v: %w", ErrStore, p, ErrSharedDown)
	}
	if err := l.store.DeleteBan(p); err != nil {
		if l.shared != nil {
			l.enqueue(p)
		}
		return l.storeFailed(fmt.Errorf("%w: delete ban of %v: %w", ErrStore, p, err))
	}
	return nil
}

// storeFailed counts and records err, and returns it.
func (l *Limiter) storeFailed(err error) error {
	l.storeErrors.Add(1)
	l.lastStoreErr.Store(&err)
	return err
}

// normAddr drops a zone and unmaps an IPv4-mapped IPv6 address.
func normAddr(a netip.Addr) netip.Addr {
	return a.WithZone("").Unmap()
}

// normPrefix masks p, and turns an IPv4-mapped IPv6 prefix of 96 bits or
// more into the IPv4 prefix it maps.
func normPrefix(p netip.Prefix) (netip.Prefix, error) { return prefix.Norm(p) }
