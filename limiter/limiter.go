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
// budgets, shared by every limiter on it: N proxies in front of one daemon
// then allow a key the failures one would, and a ban made by one is
// enforced by all within milliseconds. Check still never waits on the store; when the store
// is down, decisions go on locally (or refuse, with Config.FailClosed).
//
// Every method takes the current time as now: the package never reads the
// clock, so tests are tables of steps. Memory is bounded: at most
// Config.MaxTracked keys hold budget state (the least recently used is
// forgotten) and at most as many bans are kept (the ban due first is dropped).
package limiter

import (
	"errors"
	"fmt"
	"net/netip"
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
	BansEvicted uint64 // bans in force lifted early to stay within MaxTracked (only when no ended ban is left)
	StoreErrors uint64 // failed Store calls
	BansCreated uint64 // bans made (budget and admin) by this limiter
	// RememberedEvicted is the ended bans forgotten early (the next ban of
	// their key does not escalate) to stay within MaxTracked.
	RememberedEvicted uint64
	// SharedDown: the store keeps shared budgets (SharedBudgets) and is
	// unreachable or unsubscribed: decisions are local until it is back.
	SharedDown bool
	// Unsynced is the ban changes made while the shared store was down and
	// not yet written to it.
	Unsynced int
	// Waiting is the guesses queued for a place of their key (Verdict.Wait).
	Waiting int
	// Unsaved is the ban changes that the store failed to write (a full
	// disk, an I/O error) and that are being retried with backoff: they
	// are in force here but would not survive a restart.
	Unsaved int
	// Repaired counts the bans a resync with the shared store found missing
	// there without an unban (the store lost them) and wrote back.
	Repaired uint64
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
	bansEvicted  uint64 // bans in force evicted from the ban table
	bansCreated  uint64
	storeMu      sync.Mutex // serialises store writes, so they land in order
	store        Store
	storeErrors  atomic.Uint64
	lastStoreErr atomic.Pointer[error]
	unbanned     map[bkey]bool // keys unbanned during a resync's load (nil: none under way); under mu
	// rememberedEvicted: ended bans evicted from the ban table.
	rememberedEvicted uint64
	// unbans: the keys whose Unban is still to be written to the store, by
	// the version of the unban (pendingUnbanLocked); under mu.
	unbans map[bkey]uint64

	retry retrier // ban changes the store failed to write, written again later

	// keeper decides budgets: localKeeper, or a circuit on a shared store.
	keeper    budgetKeeper
	closeOnce sync.Once

	hook     atomic.Pointer[func(BanChange)] // SetBanHook; nil: none
	external atomic.Pointer[External]        // SetExternal; nil: none
	wide     widener                         // keys banned per wider prefix (widen.go)

	// The guesses waiting for a place, per key (wait.go). wmu is taken
	// after mu when both are held, never before.
	wmu     sync.Mutex
	waiters map[bkey]*waitQueue
	nwait   atomic.Int64 // guesses queued; 0 lets settles skip wmu

	pen penalties // no-auth penalties (penalty.go); its own lock
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
	l.keeper = localKeeper{l}
	l.cfg.Store(s)
	bans, err := store.LoadBans(time.Time{})
	if err != nil {
		l.storeFailed(fmt.Errorf("%w: load bans: %w", ErrStore, err))
	}
	l.mu.Lock()
	for _, b := range bans {
		l.restoreLocked(s, b)
	}
	l.nactive.Store(int64(l.bans.nactive()))
	l.mu.Unlock()
	if sb, ok := store.(SharedBudgets); ok {
		l.keeper = newCircuit(l, sb, err != nil) // open until the first reconcile if the load failed
	}
	return l, nil
}

// restoreLocked adds a ban loaded from the store.
func (l *Limiter) restoreLocked(s *settings, b Ban) {
	p, err := NormPrefix(b.Key)
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
	if !l.makeRoomLocked(s, &b) {
		return
	}
	l.bans.insert(&banRec{ban: b, key: k, active: true, due: b.Until, synced: true})
}

// Key returns the key of addr: addr without zone and unmapped from IPv4-mapped
// IPv6 (a 6to4 or Teredo address: the IPv4 address it carries), masked to Config.IPv4Prefix or IPv6Prefix bits. The invalid Addr has
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
	if s.FailClosed && l.keeper.down() {
		d.Allowed, d.StoreDown = false, true
		return d
	}
	if l.checkExternal(now, addr, &d) { // external.go: e.g. a CrowdSec decision
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
	if l.bans.len() > s.MaxTracked {
		l.bans.sweep(l.clock, -1) // what is past its time is forgotten, not evicted
		for l.bans.len() > s.MaxTracked {
			l.evictLocked(l.bans.victim())
		}
	}
	l.syncLocked()
	l.wakeOverlapping(netip.Prefix{}) // budgets may be larger, keys other
	return nil
}

// Stats returns a snapshot of the limiter's tables and counters. Bans over
// as of the latest time given to the limiter are not counted as Banned.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bans.sweep(l.clock, -1)
	l.syncLocked()
	waiting, _ := l.waiting()
	return Stats{
		Waiting:           waiting,
		Tracked:           l.budgets.len(),
		Banned:            l.bans.nactive(),
		Remembered:        l.bans.len() - l.bans.nactive(),
		Evicted:           l.evicted,
		BansEvicted:       l.bansEvicted,
		RememberedEvicted: l.rememberedEvicted,
		BansCreated:       l.bansCreated,
		StoreErrors:       l.storeErrors.Load(),
		SharedDown:        l.keeper.down(),
		Unsynced:          l.keeper.unsynced(),
		Unsaved:           l.retry.len(),
		Repaired:          l.repaired(),
	}
}

// repaired is the circuit's count of bans written back, if any.
func (l *Limiter) repaired() uint64 {
	if c, ok := l.keeper.(*circuit); ok {
		return c.repaired.Load()
	}
	return 0
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

// Close stops the limiter's background work: with a SharedBudgets store,
// the subscription to other limiters' bans and the writing of queued ban
// changes; with any store, the retries of ban changes it failed to write
// (one last round is tried). It waits for them to end. It does not close the store, which
// belongs to the caller (close the store after the limiter). Decisions go
// on after Close; bans of other limiters no longer arrive. Close is
// idempotent and always returns nil.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		l.keeper.close()
		l.retry.close()
	})
	return nil
}

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
	l.nactive.Store(int64(l.bans.nactive()))
}

// normAddr drops a zone and unmaps an IPv4-mapped IPv6 address; a 6to4 or
// Teredo address becomes the IPv4 address it carries (prefix.Addr), so
// its key, allowlisting and bans are those of that IPv4 host.
func normAddr(a netip.Addr) netip.Addr { return prefix.Addr(a) }

// NormPrefix returns p as the limiter keeps it: masked, an IPv4-mapped
// prefix of 96 bits or more as the IPv4 prefix it maps, a 6to4 prefix of
// /24 or longer and a single Teredo address as the IPv4 prefix they carry
// (BanKey and Unban take a prefix so). The admin API checks a ban's width
// on this form.
func NormPrefix(p netip.Prefix) (netip.Prefix, error) { return prefix.Norm(p) }
