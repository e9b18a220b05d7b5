package limiter

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// Defaults that NewUsers and Reload put in place of zero UserConfig fields
// (Failures has none: zero turns per-user budgets off).
const (
	DefaultUserWindow     = time.Hour
	DefaultKnownGoodTTL   = 720 * time.Hour
	DefaultUserMaxTracked = 100_000
)

// UserConfig holds the settings of per-username budgets. The field comments
// give the config-file key ([user_limits] section) and the default.
//
// The zero UserConfig turns per-user budgets off (Failures is 0); any other
// zero field means "use the default". Validate reports out-of-range values;
// NewUsers and Reload call it.
type UserConfig struct {
	// Failures is the budget of one username: failed guesses for it, over
	// all addresses, before guesses for it from keys that are not known-good
	// are refused. It is the burst of a token bucket (golang.org/x/time/rate)
	// refilled over Window (user_limits.failures; 0, the default, turns
	// per-user budgets off: every call allows and nothing is recorded).
	Failures int
	// Window is the time over which an emptied username budget is fully
	// refilled, so one token comes back every Window/Failures. It is also the
	// span over which MaxNamesPerKey counts names (user_limits.window;
	// default 1h).
	Window time.Duration
	// KnownGoodTTL is how long a (username, key) pair that logged in is
	// remembered after its latest success; such a key is never throttled for
	// that username (user_limits.known_good_ttl; default 720h).
	KnownGoodTTL time.Duration
	// MaxNamesPerKey is how many distinct usernames one key may try within
	// Window before it is refused as a sprayer (user_limits.max_names_per_key;
	// default 0: no cap; at most 1000).
	MaxNamesPerKey int
	// KnownGoodIPv4Prefix and KnownGoodIPv6Prefix are the neighbourhood a
	// login makes known-good: the pair is kept for the address masked to
	// this prefix, so an owner whose ISP changes the last octet is still
	// known (user_limits.known_good_ipv4_prefix, known_good_ipv6_prefix;
	// default 0: the key's own prefix, [limits] ipv4_prefix/ipv6_prefix).
	// A prefix longer than the key's acts as the key's.
	KnownGoodIPv4Prefix int
	KnownGoodIPv6Prefix int
	// TrapUsernames are names no legitimate user of this server logs in
	// with (root, admin, …): a PASS for one of them (canonical form) from
	// a key that is not known-good for it is never forwarded and bans the
	// key at once (user_limits.trap_usernames; default none). See Trap.
	TrapUsernames []string
	// MaxTracked bounds each of the three tables: usernames with budget
	// state, known-good pairs and per-key name sets. Beyond it the least
	// recently used entry is forgotten (user_limits.max_tracked; default
	// 100,000).
	MaxTracked int
}

// Validate reports whether c is usable: each bad setting gives one
// *ConfigError naming its config-file key (e.g. "limiter:
// user_limits.failures must be ≥ 0"); several are joined with errors.Join.
// Zero fields are valid.
func (c UserConfig) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &ConfigError{Key: "user_limits." + key, Reason: fmt.Sprintf(format, args...)})
	}
	switch {
	case c.Failures < 0:
		bad("failures", "must be ≥ 0")
	case c.Failures > math.MaxInt32:
		bad("failures", "must be ≤ %d", math.MaxInt32)
	}
	if c.Window < 0 {
		bad("window", "must be > 0")
	}
	if c.KnownGoodTTL < 0 {
		bad("known_good_ttl", "must be > 0")
	}
	switch {
	case c.MaxNamesPerKey < 0:
		bad("max_names_per_key", "must be ≥ 0")
	case c.MaxNamesPerKey > maxNamesPerKeyLimit:
		bad("max_names_per_key", "must be ≤ %d", maxNamesPerKeyLimit)
	}
	if c.KnownGoodIPv4Prefix < 0 || c.KnownGoodIPv4Prefix > 32 {
		bad("known_good_ipv4_prefix", "must be 0–32 (0: [limits] ipv4_prefix)")
	}
	if c.KnownGoodIPv6Prefix < 0 || c.KnownGoodIPv6Prefix > 128 {
		bad("known_good_ipv6_prefix", "must be 0–128 (0: [limits] ipv6_prefix)")
	}
	if len(c.TrapUsernames) > maxTrapNames {
		bad("trap_usernames", "must list at most %d names, got %d", maxTrapNames, len(c.TrapUsernames))
	}
	for i, n := range c.TrapUsernames {
		if err := trapNameError(n); err != "" {
			bad("trap_usernames", "entry %d (%q) %s", i+1, n, err)
			break
		}
	}
	switch {
	case c.MaxTracked < 0:
		bad("max_tracked", "must be ≥ 1")
	case c.MaxTracked > math.MaxInt32:
		bad("max_tracked", "must be ≤ %d", math.MaxInt32)
	}
	return errors.Join(errs...)
}

// userSettings is a validated UserConfig with defaults applied. It is
// immutable once built; Reload swaps in a new one.
type userSettings struct {
	UserConfig
	limit rate.Limit      // Failures per Window, in tokens per second
	traps map[string]bool // TrapUsernames, canonical (CanonicalUser); nil: none
}

func newUserSettings(c UserConfig) *userSettings {
	if c.Window == 0 {
		c.Window = DefaultUserWindow
	}
	if c.KnownGoodTTL == 0 {
		c.KnownGoodTTL = DefaultKnownGoodTTL
	}
	if c.MaxTracked == 0 {
		c.MaxTracked = DefaultUserMaxTracked
	}
	return &userSettings{UserConfig: c, limit: rate.Limit(float64(c.Failures) / c.Window.Seconds()),
		traps: trapSet(c.TrapUsernames)}
}

func (s *userSettings) off() bool { return s.Failures == 0 }

// goodKey is the neighbourhood of key (a Limiter.Key) that a known-good
// pair is kept for: key masked to KnownGoodIPv4Prefix/KnownGoodIPv6Prefix
// when that is shorter than key's own prefix, else key itself.
func (s *userSettings) goodKey(key netip.Prefix) netip.Prefix {
	bits := s.KnownGoodIPv6Prefix
	if key.Addr().Is4() {
		bits = s.KnownGoodIPv4Prefix
	}
	if bits > 0 && bits < key.Bits() {
		if p, err := key.Addr().Prefix(bits); err == nil {
			return p
		}
	}
	return key.Masked()
}
