// Package redisstore is a limiter.Store on Redis that also keeps the
// budgets (limiter.SharedBudgets) and username budgets
// (limiter.SharedUserBudgets) shared by every limiter on the same server:
// N proxies in front of one daemon allow a key the failures one would.
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/ftpguard/ftpguard/limiter"
)

// Defaults of Options.
const (
	DefaultPrefix     = "ftpguard:"
	DefaultTimeout    = 200 * time.Millisecond
	DefaultAttemptTTL = 2 * time.Minute
)

// redisKeepalive is how long the subscription may stay silent before it is
// pinged; a second silence of as long drops the connection (a peer gone
// without a reset would otherwise leave bans unpropagated for good).
const redisKeepalive = 10 * time.Second

// unbanTTL is how long an unban is remembered (unban:K) for the limiters
// whose subscription missed it.
const unbanTTL = 7 * 24 * time.Hour

// redisLoadBatch bounds the ban records read in one round trip by LoadBans.
const redisLoadBatch = 512

// Backoff of the subscription's reconnects.
const (
	redisMinBackoff = 50 * time.Millisecond
	redisMaxBackoff = time.Second
)

// Options configures a Store. Zero fields take their defaults.
type Options struct {
	// URL is the server, "redis://[user:password@]host:port/db" or
	// "rediss://…" for TLS ([store] url). Required.
	URL string
	// Prefix starts every key and the channel the store uses (default
	// "ftpguard:"); instances that share budgets use the same one.
	Prefix string
	// Timeout bounds each call, dial included (default 200ms): the longest
	// a PASS waits on Redis before the limiter decides locally.
	Timeout time.Duration
	// AttemptTTL is how long an attempt in flight holds its place in a
	// shared budget if it is never settled (its instance died): longer than
	// any PASS takes to be answered (login_timeout), default 2m.
	AttemptTTL time.Duration
	// Logger receives call failures and subscription changes (nil:
	// slog.Default()).
	Logger *slog.Logger
	// SentinelAddrs are Redis Sentinels ("host:port") to ask for the
	// master's address ([store] sentinel_addrs); with them URL only gives
	// the user, password, db and TLS, and may be "". See sentinel.go.
	SentinelAddrs []string
	// SentinelMaster is the master's name the sentinels monitor
	// ([store] sentinel_master); required with SentinelAddrs.
	SentinelMaster string
	// Password of the Redis servers, replacing the URL's ([store]
	// password_file's line); "" keeps the URL's.
	Password string
	// SentinelPassword of the sentinels themselves (requirepass in
	// sentinel.conf); "" for none.
	SentinelPassword string
}

// Store is a limiter.Store on Redis that also keeps budgets shared by
// every limiter on the same server and Prefix (it implements
// limiter.SharedBudgets), and the username budgets of every limiter.Users
// set on it (limiter.SharedUserBudgets). Give each limiter.Limiter its own
// Store: it tells its limiter's attempts in flight from those of others.
//
// Layout, for a key K such as "192.0.2.7/32" (all under Prefix):
//
//	ban:K   hash {u until, s since, f forget (Unix ms), c count, r reason},
//	        expiring (PEXPIREAT) at its Forget time: nothing scans for old bans
//	bans    sorted set of K by Forget time, for LoadBans (pruned as bans are made)
//	b:K     hash {t tokens, l last refill (Unix ms)}, expiring once full again
//	p:K     sorted set of the attempts in flight, "<instance>:<n>" by deadline
//	u:H     hash {t tokens, l last refill} of a username budget, H the first
//	        16 bytes of the name's SHA-256 in hex, expiring once full again
//	bans    also the pub/sub channel of ban events ("B|…" and "U|…")
//	unban:K the Since of the ban an unban lifted (Unix ms), kept a week, so
//	        that a limiter that missed the unban event lifts it on resync
//	        (limiter.UnbanLog) while a ban merely missing is written back
//	epoch   a random value set when first missing: a new one means the server
//	        lost its data (restart without persistence), so that limiters write
//	        their bans back rather than take the missing ones for unbans
//
// Every decision is one Lua script (EVALSHA, falling back to EVAL), so it
// is atomic: no two limiters both take a key's last token or both make its
// n-th ban; a ban is written and published in the same script.
//
// Time: the scripts use the now the limiter is given (Unix ms), not the
// server's TIME, like every limiter method: decisions stay step-testable,
// and a budget ban lasts exactly as long as a local one. Instances must
// therefore keep their clocks in step (NTP); a clock behind the latest
// refill only refills nothing. Record expiries (PEXPIREAT at Forget) are
// absolute, so the limiter's now must be wall-clock time, as the proxy's is.
//
// A place held by an attempt in flight is a member of p:K whose score is
// its deadline (now + AttemptTTL); members past their deadline are dropped
// before each decision. Settling removes the oldest member of this store's
// instance, so places are released by whoever took them and an instance
// that dies frees its places within AttemptTTL.
//
// Safe for concurrent use. Use New; the zero value is not usable.
type Store struct {
	client     *redis.Client
	prefix     string
	channel    string
	index      string
	timeout    time.Duration
	attemptTTL time.Duration
	id         string // this instance, in attempt ids and events
	seq        atomic.Uint64
	log        *slog.Logger
	epoch      string       // the epoch seen at the latest subscription (Subscribe's goroutine only)
	logged     atomic.Int64 // Unix ns of the latest failure logged
	unlogged   atomic.Int64 // failures not logged since
}

var (
	_ limiter.SharedBudgets = (*Store)(nil)
	_ limiter.UnbanLog      = (*Store)(nil)
)

// New returns a Store for opt. It does not contact the
// server (a limiter starting while Redis is down works locally and catches
// up); it fails only for invalid options.
func New(opt Options) (*Store, error) {
	o, err := baseOptions(opt) // sentinel.go
	if err != nil {
		return nil, err
	}
	if opt.Timeout < 0 || opt.AttemptTTL < 0 {
		return nil, errors.New("redisstore: timeout and attempt_ttl must be ≥ 0")
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix
	}
	if opt.Timeout == 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.AttemptTTL == 0 {
		opt.AttemptTTL = DefaultAttemptTTL
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = opt.Timeout, opt.Timeout, opt.Timeout, opt.Timeout
	o.ContextTimeoutEnabled = true
	// No retries: the scripts are not idempotent (a retried attempt whose
	// reply was lost would take two places), and a retry would overrun the
	// time a PASS may wait. The limiter decides locally instead.
	o.MaxRetries = -1
	o.DialerRetries = 1
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	var id [8]byte
	rand.Read(id[:])
	if o.ClientName == "" {
		o.ClientName = "ftpguard-" + hex.EncodeToString(id[:]) // for CLIENT LIST
	}
	return &Store{
		client:     newClient(o, opt), // sentinel.go
		prefix:     opt.Prefix,
		channel:    opt.Prefix + "bans",
		index:      opt.Prefix + "bans",
		timeout:    opt.Timeout,
		attemptTTL: opt.AttemptTTL,
		id:         hex.EncodeToString(id[:]),
		log:        opt.Logger,
	}, nil
}

var _ limiter.SharedUserBudgets = (*Store)(nil)

// UserRemaining reads the shared budget of user (see limiter.SharedUserBudgets).
func (r *Store) UserRemaining(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error) {
	return r.user(ctx, user, now, failures, window, "0")
}

// UserFailure takes a token from the shared budget of user.
func (r *Store) UserFailure(ctx context.Context, user string, now time.Time, failures int, window time.Duration) (int, error) {
	return r.user(ctx, user, now, failures, window, "1")
}

var _ limiter.SharedUserReset = (*Store)(nil)

// UserReset deletes the shared budget of user (see limiter.SharedUserReset):
// the next guess finds it full.
func (r *Store) UserReset(ctx context.Context, user string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	n, err := r.client.Del(ctx, r.userKey(user)).Result()
	if err != nil {
		return false, r.failed("user reset", netip.Prefix{}, err)
	}
	return n > 0, nil
}

// userKey is the key of user's budget: a hash of the name, fixed-size
// whatever an attacker sends as a username, the same on every instance.
func (r *Store) userKey(user string) string {
	h := sha256.Sum256([]byte(user))
	return r.prefix + "u:" + hex.EncodeToString(h[:16])
}

// user runs redisUser. The key is a hash of the name: fixed-size whatever
// an attacker sends as a username, the same on every instance.
func (r *Store) user(ctx context.Context, user string, now time.Time, failures int, window time.Duration, take string) (int, error) {
	if failures <= 0 || window <= 0 {
		return 0, fmt.Errorf("redisstore: user budget of %d over %v", failures, window)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	rate := float64(failures) / (float64(window) / float64(time.Millisecond))
	n, err := redisUser.Run(ctx, r.client, []string{r.userKey(user)},
		now.UnixMilli(), rate, failures, take).Int()
	if err != nil {
		return 0, r.failed("user budget", netip.Prefix{}, err)
	}
	return n, nil
}

// budgetKeys returns the keys of the budget scripts for key.
func (r *Store) budgetKeys(key string) []string {
	return []string{r.prefix + "b:" + key, r.prefix + "p:" + key, r.prefix + "ban:" + key, r.index}
}

// budgetArgs returns ARGV 1–10 of the budget scripts, with room for more.
func (r *Store) budgetArgs(key string, now time.Time, p limiter.BudgetParams) []any {
	ms := float64(time.Millisecond)
	return append(make([]any, 0, 12),
		now.UnixMilli(),
		float64(p.Failures)/(float64(p.Window)/ms),
		p.Failures,
		float64(p.BanTime)/ms,
		p.BanFactor,
		p.MaxBanTime.Milliseconds(),
		key,
		r.channel,
		r.id,
		r.attemptTTL.Milliseconds(),
	)
}

// SharedAttempt takes a place in the shared budget of key (see
// limiter.SharedBudgets and the Store layout).
func (r *Store) SharedAttempt(ctx context.Context, key netip.Prefix, now time.Time, p limiter.BudgetParams) (limiter.SharedResult, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	k := key.String()
	args := append(r.budgetArgs(k, now, p), r.seq.Add(1))
	v, err := redisAttempt.Run(ctx, r.client, r.budgetKeys(k), args...).Slice()
	if err != nil {
		return limiter.SharedResult{}, r.failed("attempt", key, err)
	}
	return parseResult(key, v)
}

// SharedSettle settles an attempt (or counts a penalty) in the shared
// budget of key.
func (r *Store) SharedSettle(ctx context.Context, key netip.Prefix, now time.Time, o limiter.Outcome, p limiter.BudgetParams) (limiter.SharedResult, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	k := key.String()
	resets := "0"
	if p.SuccessResets {
		resets = "1"
	}
	args := append(r.budgetArgs(k, now, p), int(o), resets)
	v, err := redisSettle.Run(ctx, r.client, r.budgetKeys(k), args...).Slice()
	if err != nil {
		return limiter.SharedResult{}, r.failed("settle", key, err)
	}
	return parseResult(key, v)
}

// parseResult reads the reply of a budget script.
func parseResult(key netip.Prefix, v []any) (limiter.SharedResult, error) {
	num := func(i int) int64 {
		n, _ := v[i].(int64)
		return n
	}
	if len(v) < 2 {
		return limiter.SharedResult{}, fmt.Errorf("%w: redis: bad script reply %v", limiter.ErrStore, v)
	}
	res := limiter.SharedResult{Verdict: limiter.SharedVerdict(num(0)), Remaining: int(num(1))}
	if res.Verdict >= limiter.SharedBanned {
		if len(v) < 7 {
			return limiter.SharedResult{}, fmt.Errorf("%w: redis: bad script reply %v", limiter.ErrStore, v)
		}
		reason, _ := v[6].(string)
		res.Ban = limiter.Ban{Key: key, Until: time.UnixMilli(num(2)), Count: int(num(3)), Reason: reason,
			Since: time.UnixMilli(num(4)), Forget: time.UnixMilli(num(5))}
	}
	return res, nil
}

// SaveBan writes b as the ban of b.Key, expiring at b.Forget, unless Redis
// holds a later ban of the key (made elsewhere meanwhile), and publishes it.
// Like a ban made by a budget, it clears the key's shared budget.
func (r *Store) SaveBan(b limiter.Ban) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	k := b.Key.String()
	forget := forgetAt(b)
	keys := []string{r.prefix + "ban:" + k, r.index, r.prefix + "b:" + k, r.prefix + "p:" + k}
	err := redisSaveBan.Run(ctx, r.client, keys, b.Until.UnixMilli(), b.Since.UnixMilli(),
		forget.UnixMilli(), max(b.Count, 1), b.Reason, k, r.channel, r.id).Err()
	if err != nil {
		return r.failed("save ban", b.Key, err)
	}
	return nil
}

// DeleteBan removes the ban of key, remembers the unban for a week
// (limiter.UnbanLog) and publishes it.
func (r *Store) DeleteBan(key netip.Prefix) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	k := key.String()
	err := redisDeleteBan.Run(ctx, r.client, []string{r.prefix + "ban:" + k, r.index, r.prefix + "unban:" + k},
		k, r.channel, r.id, unbanTTL.Milliseconds()).Err()
	if err != nil {
		return r.failed("delete ban", key, err)
	}
	return nil
}

// LoadBans returns the bans whose Forget time is after now (the zero now:
// all), sorted by Until. Each round trip is bounded by the timeout.
func (r *Store) LoadBans(now time.Time) ([]limiter.Ban, error) {
	lo := "-inf"
	if !now.IsZero() {
		lo = "(" + strconv.FormatInt(now.UnixMilli(), 10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	keys, err := r.client.ZRangeByScore(ctx, r.index, &redis.ZRangeBy{Min: lo, Max: "+inf"}).Result()
	cancel()
	if err != nil {
		return nil, r.failed("load bans", netip.Prefix{}, err)
	}
	out := make([]limiter.Ban, 0, len(keys))
	for batch := range slices.Chunk(keys, redisLoadBatch) {
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		pipe := r.client.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(batch))
		for i, k := range batch {
			cmds[i] = pipe.HGetAll(ctx, r.prefix+"ban:"+k)
		}
		_, err := pipe.Exec(ctx)
		cancel()
		if err != nil {
			return nil, r.failed("load bans", netip.Prefix{}, err)
		}
		for i, c := range cmds {
			if b, ok := parseBanRecord(batch[i], c.Val()); ok && (now.IsZero() || now.Before(b.Forget)) {
				out = append(out, b)
			}
		}
	}
	slices.SortFunc(out, compareBans)
	return out, nil
}

// parseBanRecord reads the hash of the ban of key (empty: gone meanwhile).
func parseBanRecord(key string, h map[string]string) (limiter.Ban, bool) {
	p, err := netip.ParsePrefix(key)
	if err != nil {
		return limiter.Ban{}, false
	}
	field := func(f string) (int64, bool) {
		n, err := strconv.ParseInt(h[f], 10, 64)
		return n, err == nil
	}
	u, ok1 := field("u")
	s, ok2 := field("s")
	f, ok3 := field("f")
	c, ok4 := field("c")
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return limiter.Ban{}, false
	}
	return limiter.Ban{Key: p, Until: time.UnixMilli(u), Count: int(c), Reason: h["r"],
		Since: time.UnixMilli(s), Forget: time.UnixMilli(f)}, true
}

// parseEvent reads a message of the channel: "B|instance|K|until|since|
// forget|count|reason" or "U|instance|K". It returns the instance too.
func parseEvent(payload string) (string, limiter.BanEvent, bool) {
	f := strings.SplitN(payload, "|", 8)
	if len(f) < 3 {
		return "", limiter.BanEvent{}, false
	}
	p, err := netip.ParsePrefix(f[2])
	if err != nil {
		return "", limiter.BanEvent{}, false
	}
	switch {
	case f[0] == "U":
		return f[1], limiter.BanEvent{Kind: limiter.EventUnban, Ban: limiter.Ban{Key: p}}, true
	case f[0] == "B" && len(f) == 8:
		b, ok := parseBanRecord(f[2], map[string]string{"u": f[3], "s": f[4], "f": f[5], "c": f[6], "r": f[7]})
		return f[1], limiter.BanEvent{Kind: limiter.EventBan, Ban: b}, ok
	}
	return "", limiter.BanEvent{}, false
}

// Subscribe delivers the ban events of other instances until ctx ends (see
// limiter.SharedBudgets). Each broken subscription is reported
// (limiter.EventLost) and replaced by a new one, after a backoff of 50ms
// doubling up to 1s.
func (r *Store) Subscribe(ctx context.Context, fn func(limiter.BanEvent)) {
	backoff := redisMinBackoff
	lost := false
	for {
		up, err := r.subscribeOnce(ctx, fn)
		if ctx.Err() != nil {
			return
		}
		if up {
			backoff = redisMinBackoff
			r.log.Warn("redis: subscription lost", "channel", r.channel, "err", err)
		} else if !lost {
			r.log.Warn("redis: cannot subscribe", "channel", r.channel, "err", err)
		}
		lost = true
		fn(limiter.BanEvent{Kind: limiter.EventLost, Err: err})
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, redisMaxBackoff)
	}
}

// subscribeOnce runs one subscription until it breaks; up reports whether
// it was established.
func (r *Store) subscribeOnce(ctx context.Context, fn func(limiter.BanEvent)) (up bool, err error) {
	ps := r.client.Subscribe(ctx)
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { ps.Close() }) // unblocks Receive
	defer stop()
	sctx, cancel := context.WithTimeout(ctx, r.timeout)
	err = ps.Subscribe(sctx, r.channel)
	cancel()
	if err != nil {
		return false, err
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, redisKeepalive)
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() && !pinged {
				pinged = true
				if err := ps.Ping(ctx); err != nil {
					return up, err
				}
				continue
			}
			return up, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				fresh, err := r.checkEpoch(ctx)
				if err != nil {
					return up, err
				}
				if !up {
					r.log.Info("redis: subscribed", "channel", r.channel, "fresh", fresh)
				}
				up = true
				fn(limiter.BanEvent{Kind: limiter.EventResync, Fresh: fresh})
			}
		case *redis.Message:
			if from, ev, ok := parseEvent(m.Payload); ok && from != r.id {
				fn(ev)
			}
		}
	}
}

// checkEpoch reports whether the server's data is new since the previous
// subscription.
func (r *Store) checkEpoch(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var nonce [8]byte
	rand.Read(nonce[:])
	v, err := redisEpoch.Run(ctx, r.client, []string{r.prefix + "epoch"}, hex.EncodeToString(nonce[:])).Slice()
	if err != nil {
		return false, r.failed("epoch", netip.Prefix{}, err)
	}
	if len(v) != 2 {
		return false, fmt.Errorf("redisstore: bad epoch reply %v", v)
	}
	e, _ := v[0].(string)
	created, _ := v[1].(int64)
	fresh := created == 1 || r.epoch != "" && e != r.epoch
	r.epoch = e
	return fresh, nil
}

// AttemptTTL returns Options.AttemptTTL in force.
func (r *Store) AttemptTTL() time.Duration { return r.attemptTTL }

// Ping reports whether the server answers within the timeout.
func (r *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.client.Ping(ctx).Err(); err != nil {
		return r.failed("ping", netip.Prefix{}, err)
	}
	return nil
}

// Close closes the connections; later calls fail.
func (r *Store) Close() error {
	if err := r.client.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("redisstore: close: %w", err)
	}
	return nil
}

// failed logs a failed call (at most one a second, with the count of
// those not logged) and returns its error, prefixed.
func (r *Store) failed(op string, key netip.Prefix, err error) error {
	if key.IsValid() {
		err = fmt.Errorf("redisstore: %s %v: %w", op, key, err)
	} else {
		err = fmt.Errorf("redisstore: %s: %w", op, err)
	}
	now, last := time.Now().UnixNano(), r.logged.Load()
	if now-last >= int64(time.Second) && r.logged.CompareAndSwap(last, now) {
		r.log.Warn("redis: call failed", "err", err, "unlogged", r.unlogged.Swap(0))
	} else {
		r.unlogged.Add(1)
	}
	return err
}

// forgetAt is when the store may drop b: its Forget time, or Until for a
// ban that has none.
func forgetAt(b limiter.Ban) time.Time {
	if b.Forget.IsZero() {
		return b.Until
	}
	return b.Forget
}

// compareBans orders bans by Until, then by key, as the limiter's stores
// return them.
func compareBans(a, b limiter.Ban) int {
	if c := a.Until.Compare(b.Until); c != 0 {
		return c
	}
	if c := a.Key.Addr().Compare(b.Key.Addr()); c != 0 {
		return c
	}
	return a.Key.Bits() - b.Key.Bits()
}
