package limiter

// Per-username budgets, against distributed guessing: a botnet that spreads
// the guesses for one account over thousands of addresses stays under every
// per-key budget, but not under the account's own.

import (
	"context"
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxUserName is the number of bytes of a username that Users stores. A
// longer name is stored as its first MaxUserName−8 bytes followed by a 64-bit
// hash of the whole name (seeded per Users, so names cannot be chosen to
// collide), and marked as hashed so that it never equals a short name. Each
// stored name thus takes a fixed MaxUserName+1 bytes however long the names
// an attacker sends.
const MaxUserName = 64

// maxNamesPerKeyLimit bounds UserConfig.MaxNamesPerKey, and so the size of
// each per-key name set (MaxNamesPerKey+1 entries of 16 bytes).
const maxNamesPerKeyLimit = 1000

// userSweepBatch bounds the dead entries (full budgets, expired pairs, stale
// name sets) that one call drops from the tail of each table.
const userSweepBatch = 16

// UserDecision is the answer of Check and Failure. The zero UserDecision
// neither throttles nor refuses (it is what every call returns while per-user
// budgets are off).
type UserDecision struct {
	// Throttled: the username's budget is spent and the key is not
	// known-good for it. The caller answers 530 locally, never forwards.
	Throttled bool
	// KnownGood: the key logged in to this username within KnownGoodTTL.
	// Such a guess is always forwarded: Throttled and TooManyNames are false.
	KnownGood bool
	// TooManyNames: the key has tried more than MaxNamesPerKey distinct
	// usernames within Window (spraying). The caller refuses.
	TooManyNames bool
	// Remaining is the whole tokens left in the username's budget (after
	// the failure, for Failure); 0 while budgets are off.
	Remaining int
	// Held (Attempt only): the guess holds a place in the username's
	// budget until Release; the caller must call Release once, whatever
	// the outcome.
	Held bool
	// Busy (with Throttled): the budget is not spent — every place left in
	// it is held by a guess in flight, and one frees when that guess is
	// answered. The caller should wait and ask again (Attempt), not tell
	// the client the name is paused: many new addresses logging in to one
	// account at once are not an attack.
	Busy bool
	// RetryIn (Attempt only, when Throttled): about how long until
	// the budget lets a guess from a new address through again, if no
	// more guesses reach the daemon meanwhile (the refill of one token,
	// plus those held by guesses in flight).
	RetryIn time.Duration
}

// UserState is a username's budget as Throttled lists it.
type UserState struct {
	// Name is the canonical form of the username (CanonicalUser); a name
	// longer than MaxUserName bytes is shown as its kept prefix and "…"
	// (Hashed), and Reset needs the whole name.
	Name      string
	Hashed    bool
	Remaining int           // whole tokens left in this instance's budget
	Held      int           // places held by guesses in flight
	Failures  int           // the budget's size (UserConfig.Failures)
	RetryIn   time.Duration // until a guess from a new address passes again
	FullIn    time.Duration // until the budget is full again
}

// MaxThrottledList bounds the list Throttled returns.
const MaxThrottledList = 1000

// UserStats is a snapshot of a Users' tables and counters.
type UserStats struct {
	Users        int    // usernames with budget state (a full budget needs none)
	KnownGood    int    // remembered (username, key) pairs, including expired ones not yet dropped
	Keys         int    // keys with a set of recently tried usernames
	Throttled    uint64 // Check calls that returned Throttled
	TooManyNames uint64 // Check calls that returned TooManyNames
	Evicted      uint64 // live entries forgotten (any table) to stay within MaxTracked
}

// uname is a username as stored: the name itself when it has at most
// MaxUserName bytes (n is its length), otherwise its first MaxUserName−8
// bytes and a seeded hash of the whole (n is uHashed). It holds no pointer,
// so a caller's string is never retained.
type uname struct {
	b [MaxUserName]byte
	n uint8
}

const uHashed = MaxUserName + 1

// String is the name as Throttled shows it: a hashed name as its kept
// prefix and "…".
func (n uname) String() string {
	if n.n == uHashed {
		return string(n.b[:MaxUserName-8]) + "…"
	}
	return string(n.b[:n.n])
}

// upair is the key of the known-good table.
type upair struct {
	name uname
	key  bkey
}

// useen is one username tried by a key: the name's hash and when it was
// last tried (nanoseconds since uEpoch).
type useen struct {
	h  uint64
	at int64
}

// uNames is the set of usernames a key tried within Window, at most
// MaxNamesPerKey+1 entries.
type uNames struct {
	seen []useen
	last int64 // latest at in seen
}

// uEpoch is the origin of the int64 times in uNames. time.Time.Sub
// saturates, so no time overflows.
var uEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func unano(t time.Time) int64 { return int64(t.Sub(uEpoch)) }

// Users keeps per-username budgets, the (username, key) pairs that logged in,
// and the usernames each key tried recently. It is safe for concurrent use:
// one mutex guards everything. The zero value is not usable; use NewUsers.
//
// A username's budget caps the guesses in flight as well: Attempt holds a
// place for each guess it lets through until Release, and a guess finds the
// budget spent when its whole tokens are all held, so guesses sent together
// cannot all pass before their Failures land. Check holds nothing. With a
// shared store the places are held per instance.
//
// Memory is bounded by MaxTracked entries per table, each of a fixed size
// (usernames are bounded to MaxUserName bytes, name sets to
// MaxNamesPerKey+1 entries). An entry that carries no information any more
// (a full budget, an expired pair, a name set older than Window) is dropped
// before a live one is evicted, so a live budget is forgotten only when more
// than MaxTracked usernames failed within about Window. "Recently used"
// means: a budget's latest Failure, a pair's latest Success (so the pair
// evicted is the one due to expire first), a key's latest recorded Check.
type Users struct {
	mu   sync.Mutex
	cfg  *userSettings
	seed maphash.Seed

	budgets ulru[uname, rate.Limiter] // touched on Failure: the tail failed longest ago
	good    ulru[upair, int64]        // expiry (unano); touched on Success: the tail expires first
	keys    ulru[bkey, uNames]        // touched when the key tries a name

	throttled, tooMany, evicted uint64

	// held counts, per username, the guesses that passed Attempt and are
	// not Released yet (in flight to the daemon): bounded by the sessions.
	held map[uname]int

	shared SharedUserBudgets // nil: budgets are this instance's own
}

// SharedUserBudgets is implemented by a store that keeps the username
// budgets for every instance sharing it (redisstore.Store), so that guesses for
// one account spread over a fleet meet one budget, not one per instance.
// user is the name as sent (the store derives its own fixed-size key);
// failures and window are UserConfig's. Both return the whole tokens left.
type SharedUserBudgets interface {
	// UserRemaining reads user's budget at now.
	UserRemaining(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error)
	// UserFailure takes a token from user's budget at now, or, finding less
	// than a whole one, empties it as of now (as Failure does locally).
	UserFailure(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error)
}

// SetShared makes u keep its username budgets in s as well (call before
// use; Limiter.SharedUsers gives the one of a Redis limiter, behind its
// circuit): while s answers, Check and Failure decide by s's budget; when
// it fails they decide by u's own, which counts this instance's failures
// throughout (fail-open to the local budget). Known-good pairs and the
// names a key tried stay per instance.
func (u *Users) SetShared(s SharedUserBudgets) {
	u.mu.Lock()
	u.shared = s
	u.mu.Unlock()
}

// NewUsers returns a Users with the configuration cfg, or the error of
// cfg.Validate.
func NewUsers(cfg UserConfig) (*Users, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u := &Users{cfg: newUserSettings(cfg), seed: maphash.MakeSeed(), held: make(map[uname]int)}
	u.budgets.init()
	u.good.init()
	u.keys.init()
	return u, nil
}

// Reload applies cfg, keeping all state: budgets keep their tokens (capped at
// a smaller Failures), known-good pairs keep their expiry, and tables beyond a
// smaller MaxTracked are cut down at once. An invalid cfg changes nothing.
// With Failures 0 the state is kept, unused, until budgets are on again.
func (u *Users) Reload(cfg UserConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s := newUserSettings(cfg)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cfg = s
	for u.budgets.len() > s.MaxTracked {
		u.budgets.remove(u.budgets.oldest())
		u.evicted++
	}
	for u.good.len() > s.MaxTracked {
		u.good.remove(u.good.oldest())
		u.evicted++
	}
	for u.keys.len() > s.MaxTracked {
		u.keys.remove(u.keys.oldest())
		u.evicted++
	}
	return nil
}

// Check is called before a PASS for user from an address whose key is key (a
// Limiter.Key) is forwarded. It records that key tried user (for
// MaxNamesPerKey; not if the pair is known-good) and takes no token.
//
// user is compared in its canonical form (CanonicalUser: one account
// under any case, width or default-ignorable spelling; the caller trims
// spaces); unknown usernames count like any other. A key that is known-good for user is
// never Throttled nor TooManyNames. Otherwise the key is TooManyNames while
// it has tried more than MaxNamesPerKey distinct usernames within Window,
// counting this one, whichever name it tries (a name tried again does not
// add to the count).
func (u *Users) Check(now time.Time, user string, key netip.Prefix) UserDecision {
	return u.check(now, user, key, false)
}

// Attempt is Check for a guess about to be forwarded: a guess that is not
// refused (nor from a known-good key) also holds a place in the username's
// budget until Release, and a guess finds the budget spent when its whole
// tokens are all held by guesses in flight. So guesses sent together from
// many addresses cannot all pass while the daemon is still answering the
// first (pure-ftpd takes seconds): at most the budget's tokens reach the
// daemon. (With a shared store the places are held per instance: N
// instances may let up to N times the tokens left through at once.)
func (u *Users) Attempt(now time.Time, user string, key netip.Prefix) UserDecision {
	return u.check(now, user, key, true)
}

// Release ends a guess held by Attempt (Held), after its Failure or
// Success, or when it was never answered.
func (u *Users) Release(user string) {
	name, _ := u.canon(CanonicalUser(user))
	u.mu.Lock()
	defer u.mu.Unlock()
	if n := u.held[name]; n > 1 {
		u.held[name] = n - 1
	} else {
		delete(u.held, name)
	}
}

func (u *Users) check(now time.Time, user string, key netip.Prefix, hold bool) UserDecision {
	cu := CanonicalUser(user)
	name, h := u.canon(cu)
	u.mu.Lock()
	s, shared := u.cfg, u.shared
	if s.off() {
		u.mu.Unlock()
		return UserDecision{}
	}
	u.tidyLocked(now, s)
	k := keyOf(key.Masked())
	var d UserDecision
	d.KnownGood = u.knownGoodLocked(now, s, name, key)
	d.Remaining = s.Failures
	if e := u.budgets.get(name); e != nil {
		d.Remaining = u.remainingLocked(now, s, &e.val)
	}
	if d.KnownGood {
		u.mu.Unlock()
		return d
	}
	if s.MaxNamesPerKey > 0 {
		d.TooManyNames = u.recordLocked(now, s, k, h)
	}
	u.mu.Unlock()
	if shared != nil { // outside the lock: a round trip to the store
		if r, err := shared.UserRemaining(context.Background(), cu, now, s.Failures, s.Window); err == nil {
			d.Remaining = r
		}
	}
	u.mu.Lock()
	d.Throttled = d.Remaining-u.held[name] < 1
	d.Busy = d.Throttled && d.Remaining >= 1
	if hold && d.Throttled {
		d.RetryIn = u.retryLocked(now, s, name)
	}
	if hold && !d.Throttled && !d.TooManyNames {
		u.held[name]++
		d.Held = true
	}
	if d.Throttled && !d.Busy {
		u.throttled++
	}
	if d.TooManyNames {
		u.tooMany++
	}
	u.mu.Unlock()
	return d
}

// Failure records a failed guess for user from key: it consumes one token
// of the username's budget. It is called for throttled guesses answered
// locally too, so that the budget stays spent while the attack lasts: a
// failure that finds less than one whole token empties the budget (the
// fraction refilled so far is lost, but no debt is run up), so the budget
// is full again Window after the guesses stop. The decision is as for
// Check, after the failure; Failure records no name for MaxNamesPerKey and
// counts nothing in UserStats.Throttled.
func (u *Users) Failure(now time.Time, user string, key netip.Prefix) UserDecision {
	cu := CanonicalUser(user)
	d, shared, s := u.failure(now, cu, key)
	if shared == nil {
		return d
	}
	// Outside the lock: a round trip to the store, whose budget decides
	// while it answers.
	if r, err := shared.UserFailure(context.Background(), cu, now, s.Failures, s.Window); err == nil {
		d.Remaining = r
		d.Throttled = !d.KnownGood && r < 1
	}
	return d
}

// failure is Failure on u's own budget for the canonical name cu; it
// returns the store to tell too (nil: none, or budgets are off) and the
// settings in force.
func (u *Users) failure(now time.Time, cu string, key netip.Prefix) (UserDecision, SharedUserBudgets, *userSettings) {
	name, _ := u.canon(cu)
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.cfg
	if s.off() {
		return UserDecision{}, nil, s
	}
	u.tidyLocked(now, s)
	k := keyOf(key.Masked())
	e := u.budgets.get(name)
	if e == nil {
		if u.budgets.len() >= s.MaxTracked {
			u.budgets.remove(u.budgets.oldest())
			u.evicted++
		}
		e = u.budgets.add(name)
		e.val = *rate.NewLimiter(s.limit, s.Failures)
	} else {
		u.budgets.touch(e)
		uadapt(&e.val, s, now)
	}
	if !e.val.AllowN(now, 1) {
		e.val = *rate.NewLimiter(s.limit, s.Failures)
		e.val.AllowN(now, s.Failures) // empty as of now
	}
	d := UserDecision{
		KnownGood: u.knownGoodLocked(now, s, name, key),
		Remaining: max(0, whole(e.val.TokensAt(now))),
	}
	if !d.KnownGood {
		d.Throttled = d.Remaining < 1
		if s.MaxNamesPerKey > 0 {
			if ks := u.keys.get(k); ks != nil {
				d.TooManyNames = countSince(ks.val.seen, unano(now)-int64(s.Window)) > s.MaxNamesPerKey
			}
		}
	}
	return d, u.shared, s
}

// Success remembers that key logged in to user: the pair is known-good until
// now+KnownGoodTTL (each success extends it), and user no longer counts
// among the names key tried. It does not refill the username's budget.
// An invalid key is never remembered.
func (u *Users) Success(now time.Time, user string, key netip.Prefix) {
	name, h := u.canon(CanonicalUser(user))
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.cfg
	if s.off() && s.traps == nil || !key.IsValid() { // pairs also spare traps (Trap)
		return
	}
	u.tidyLocked(now, s)
	k := keyOf(key.Masked())
	p := upair{name, keyOf(s.goodKey(key))}
	e := u.good.get(p)
	if e == nil {
		if u.good.len() >= s.MaxTracked {
			u.good.remove(u.good.oldest())
			u.evicted++
		}
		e = u.good.add(p)
	} else {
		u.good.touch(e)
	}
	e.val = unano(now.Add(s.KnownGoodTTL))
	if ks := u.keys.get(k); ks != nil {
		seen := ks.val.seen
		for i := range seen {
			if seen[i].h == h {
				seen[i] = seen[len(seen)-1]
				ks.val.seen = seen[:len(seen)-1]
				break
			}
		}
	}
}

// Stats returns a snapshot of the tables and counters.
func (u *Users) Stats() UserStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return UserStats{
		Users:        u.budgets.len(),
		KnownGood:    u.good.len(),
		Keys:         u.keys.len(),
		Throttled:    u.throttled,
		TooManyNames: u.tooMany,
		Evicted:      u.evicted,
	}
}

// canon returns the stored form of user (already CanonicalUser's) and a
// seeded hash of all its bytes. It reads only u.seed, which never changes:
// no lock needed.
func (u *Users) canon(user string) (uname, uint64) {
	h := maphash.String(u.seed, user)
	var n uname
	if len(user) <= MaxUserName {
		n.n = uint8(copy(n.b[:], user))
		return n, h
	}
	copy(n.b[:MaxUserName-8], user)
	for i := range 8 {
		n.b[MaxUserName-8+i] = byte(h >> (8 * i))
	}
	n.n = uHashed
	return n, h
}

// knownGoodLocked reports whether name logged in from key's known-good
// neighbourhood (s.goodKey) within KnownGoodTTL, dropping the pair if it
// expired.
func (u *Users) knownGoodLocked(now time.Time, s *userSettings, name uname, key netip.Prefix) bool {
	if !key.IsValid() {
		return false
	}
	e := u.good.get(upair{name, keyOf(s.goodKey(key))})
	if e == nil {
		return false
	}
	if unano(now) < e.val {
		return true
	}
	u.good.remove(e)
	return false
}

// remainingLocked is the whole tokens in lim at now under s.
func (u *Users) remainingLocked(now time.Time, s *userSettings, lim *rate.Limiter) int {
	uadapt(lim, s, now)
	return max(0, whole(lim.TokensAt(now)))
}

// recordLocked records that k tried the name with hash h at now and reports
// whether k has tried more than MaxNamesPerKey distinct names within Window.
func (u *Users) recordLocked(now time.Time, s *userSettings, k bkey, h uint64) bool {
	at := unano(now)
	e := u.keys.get(k)
	if e == nil {
		if u.keys.len() >= s.MaxTracked {
			u.keys.remove(u.keys.oldest())
			u.evicted++
		}
		e = u.keys.add(k)
		e.val = uNames{seen: e.val.seen[:0]} // an evicted entry's array is reused
	} else {
		u.keys.touch(e)
	}
	ks := &e.val
	// Forget the names tried Window ago or more, and any beyond the cap of
	// a Reload that lowered it (the oldest go first).
	cutoff := at - int64(s.Window)
	seen := ks.seen[:0]
	found := false
	for _, x := range ks.seen {
		if x.at > cutoff {
			if x.h == h {
				x.at, found = max(x.at, at), true
			}
			seen = append(seen, x)
		}
	}
	for len(seen) > s.MaxNamesPerKey+1 {
		i := oldestSeen(seen)
		seen[i] = seen[len(seen)-1]
		seen = seen[:len(seen)-1]
	}
	switch {
	case found:
	case len(seen) <= s.MaxNamesPerKey:
		seen = append(seen, useen{h: h, at: at})
	default:
		// Full at MaxNamesPerKey+1: the newest name takes the place of the
		// oldest, so the key stays refused while it keeps spraying, and at
		// most Window after it stops.
		seen[oldestSeen(seen)] = useen{h: h, at: at}
	}
	ks.seen = seen
	ks.last = max(ks.last, at)
	return len(seen) > s.MaxNamesPerKey
}

// tidyLocked drops a few dead entries from the least recently used end of
// each table: budgets that are full again, pairs that expired, name sets
// whose newest name is Window old. The work per call is bounded.
func (u *Users) tidyLocked(now time.Time, s *userSettings) {
	at := unano(now)
	for range userSweepBatch {
		e := u.budgets.oldest()
		if e == nil {
			break
		}
		uadapt(&e.val, s, now)
		if whole(e.val.TokensAt(now)) < s.Failures {
			break
		}
		u.budgets.remove(e)
	}
	for range userSweepBatch {
		e := u.good.oldest()
		if e == nil || e.val > at {
			break
		}
		u.good.remove(e)
	}
	for range userSweepBatch {
		e := u.keys.oldest()
		if e == nil || e.val.last > at-int64(s.Window) {
			break
		}
		u.keys.remove(e)
	}
}

// retryLocked is about how long until name's budget lets one guess from a
// new address through: the refill of the whole tokens its guesses in
// flight hold plus one. When the local budget is not the one spent (a
// shared store's is), one token's refill (Window/Failures) bounds it.
func (u *Users) retryLocked(now time.Time, s *userSettings, name uname) time.Duration {
	tokens := float64(s.Failures)
	if e := u.budgets.get(name); e != nil {
		uadapt(&e.val, s, now)
		tokens = e.val.TokensAt(now)
	}
	need := float64(1+u.held[name]) - tokens
	if need <= tokenSlack {
		return s.Window / time.Duration(s.Failures)
	}
	return refillTime(need, s)
}

// refillTime is how long s's budgets take to refill n tokens, to the
// millisecond.
func refillTime(n float64, s *userSettings) time.Duration {
	return time.Duration(n / float64(s.limit) * float64(time.Second)).Round(time.Millisecond)
}
