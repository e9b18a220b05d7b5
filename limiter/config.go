package limiter

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// Defaults that New and Reload put in place of zero Config fields.
const (
	DefaultFailures   = 5
	DefaultWindow     = 10 * time.Minute
	DefaultBanTime    = time.Hour
	DefaultBanFactor  = 2.0
	DefaultMaxBanTime = 168 * time.Hour
	DefaultIPv4Prefix = 32
	DefaultIPv6Prefix = 64
	DefaultMaxTracked = 1_000_000
)

// Config holds the budget and ban settings of a Limiter. The field comments
// give the config-file key ([limits] section) and the default.
//
// A zero field means "use the default", so the zero Config is the default
// configuration. Validate reports out-of-range values; New and Reload call it.
type Config struct {
	// Failures is the budget: failed guesses a key may make before it is
	// banned, i.e. the burst of its token bucket (failures; default 5).
	Failures int
	// Window is the time over which an emptied budget is fully refilled, so
	// one token comes back every Window/Failures (window; default 10m).
	Window time.Duration
	// BanTime is the length of a key's first ban (ban_time; default 1h).
	BanTime time.Duration
	// BanFactor multiplies the length of each repeat ban of a key: ban n lasts
	// BanTime × BanFactor^(n−1) (ban_factor; default 2; must be ≥ 1).
	BanFactor float64
	// MaxBanTime caps the length of a ban. It is also how long a key's ban
	// count is remembered after its ban ends (max_ban_time; default 168h).
	MaxBanTime time.Duration
	// IPv4Prefix is the prefix length that IPv4 addresses are masked to
	// to form a key (ipv4_prefix; default 32, range 1..32).
	IPv4Prefix int
	// IPv6Prefix is the prefix length for IPv6 keys (ipv6_prefix; default
	// 64, range 1..128).
	IPv6Prefix int
	// Allow lists networks that are never banned (allow; default none).
	// Their attempts are not budgeted; decisions carry Allowlisted so the
	// caller can still count and log them. IPv4-mapped IPv6 prefixes are
	// treated as the IPv4 prefix they map.
	Allow []netip.Prefix
	// MaxTracked bounds the keys that hold budget state; beyond it the
	// least recently used key is forgotten. It separately bounds the ban
	// table, bans in force and ended bans kept for escalation alike: a full
	// table forgets the ended ban due to be forgotten first, and lifts the
	// ban in force ending first only when it holds nothing else
	// (max_tracked; default 1,000,000).
	MaxTracked int
	// SuccessResets makes a successful login refill the key's budget
	// (success_resets; default false: whoever knows one account must not be
	// able to reset the budget for guessing others).
	SuccessResets bool
	// FailClosed makes a limiter on a shared store (SharedBudgets) refuse
	// connections (Check) and guesses (Attempt) with Decision.StoreDown
	// while the store is unreachable ([store] fail_closed; default false).
	// The default, fail-open, keeps the service available to legitimate
	// users through a store outage at a bounded cost: bans already known
	// stay enforced locally, every limiter still applies the budget to the
	// attempts it sees, and bans made meanwhile are shared when the store
	// is back. Without a shared store it has no effect.
	FailClosed bool
	// FailureDelay holds the reply to a failed login (tarpit): this long
	// for a key's first failure in its budget, doubled for each further
	// one, up to MaxFailureDelay (failure_delay; 0 — the zero Config — turns
	// the tarpit off; the config file's default is 1s). Only the failing
	// session waits. Allowlisted keys are not delayed.
	FailureDelay time.Duration
	// MaxFailureDelay caps the tarpit (max_failure_delay; a value below
	// FailureDelay is read as FailureDelay).
	MaxFailureDelay time.Duration
	// CountUserRejects counts a 530 reply to USER (a user list deny, an
	// unknown user on some daemons) against the key's budget
	// (count_user_rejects; the config file's default is true).
	CountUserRejects bool
	// MaxLoginWaiters bounds the guesses of one key that wait in its FIFO
	// queue for a place held by attempts in flight (Verdict.Wait); beyond
	// it a Busy guess is not queued, and the caller refuses it
	// (max_login_waiters; default 32).
	MaxLoginWaiters int
	// WidenIPv6Prefix and WidenIPv4Prefix are the networks that bans widen
	// to: once WidenAfter distinct keys inside one such prefix have been
	// banned for their own offences (a spent budget, a trap username)
	// within Window, the prefix itself is banned, escalated on its own
	// count, Reason "widened: …" — never over an allowlisted network
	// (widen_ipv6_prefix, widen_ipv4_prefix; 0 — the zero Config — is off;
	// the config file's defaults are 48 and 0). Each must be shorter than
	// the family's key prefix.
	WidenIPv6Prefix int
	WidenIPv4Prefix int
	// WidenAfter is how many distinct banned keys make a ban widen
	// (widen_after; default 3, range 2..1000).
	WidenAfter int
}

// ConfigError is the error Validate returns for one bad setting; Validate
// joins several with errors.Join. Use errors.As to get at the Key.
type ConfigError struct {
	Key    string // config-file key, e.g. "ban_factor"
	Reason string // e.g. "must be ≥ 1"
}

// Error returns "limiter: " followed by the key and the reason.
func (e *ConfigError) Error() string { return "limiter: " + e.Key + " " + e.Reason }

// Validate reports whether c is usable: each bad setting gives one
// *ConfigError naming its config-file key (e.g. "limiter: ban_factor must be
// ≥ 1"); several are joined with errors.Join. Zero fields are valid: they
// stand for the defaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &ConfigError{Key: key, Reason: fmt.Sprintf(format, args...)})
	}
	switch {
	case c.Failures < 0:
		bad("failures", "must be ≥ 1")
	case c.Failures > math.MaxInt32:
		bad("failures", "must be ≤ %d", math.MaxInt32)
	}
	if c.Window < 0 {
		bad("window", "must be > 0")
	}
	if c.BanTime < 0 {
		bad("ban_time", "must be > 0")
	}
	if c.BanFactor != 0 && !(c.BanFactor >= 1) { // also catches NaN
		bad("ban_factor", "must be ≥ 1")
	} else if math.IsInf(c.BanFactor, 0) {
		bad("ban_factor", "must be finite")
	}
	if c.MaxBanTime < 0 {
		bad("max_ban_time", "must be > 0")
	} else if d := c.withDefaults(); c.BanTime >= 0 && d.MaxBanTime < d.BanTime {
		bad("max_ban_time", "must be ≥ ban_time (%v)", d.BanTime)
	}
	if c.FailureDelay < 0 {
		bad("failure_delay", "must be ≥ 0 (0 turns the tarpit off)")
	}
	if c.IPv4Prefix < 0 || c.IPv4Prefix > 32 {
		bad("ipv4_prefix", "must be in 1..32")
	}
	if c.IPv6Prefix < 0 || c.IPv6Prefix > 128 {
		bad("ipv6_prefix", "must be in 1..128")
	}
	for i, p := range c.Allow {
		if !p.IsValid() {
			bad("allow", "entry %d is not a valid CIDR prefix", i+1)
		}
	}
	switch {
	case c.MaxTracked < 0:
		bad("max_tracked", "must be ≥ 1")
	case c.MaxTracked > math.MaxInt32:
		bad("max_tracked", "must be ≤ %d", math.MaxInt32)
	}
	if c.MaxLoginWaiters < 0 {
		bad("max_login_waiters", "must be ≥ 1")
	}
	d := c.withDefaults()
	if c.WidenIPv6Prefix < 0 || c.WidenIPv6Prefix > 0 && c.WidenIPv6Prefix >= d.IPv6Prefix {
		bad("widen_ipv6_prefix", "must be 0 (off) or shorter than ipv6_prefix (%d)", d.IPv6Prefix)
	}
	if c.WidenIPv4Prefix < 0 || c.WidenIPv4Prefix > 0 && c.WidenIPv4Prefix >= d.IPv4Prefix {
		bad("widen_ipv4_prefix", "must be 0 (off) or shorter than ipv4_prefix (%d)", d.IPv4Prefix)
	}
	if c.WidenAfter != 0 && (c.WidenAfter < 2 || c.WidenAfter > maxWidenAfter) {
		bad("widen_after", "must be in 2..%d", maxWidenAfter)
	}
	return errors.Join(errs...)
}

// withDefaults returns c with zero fields replaced by the defaults.
func (c Config) withDefaults() Config {
	if c.Failures == 0 {
		c.Failures = DefaultFailures
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.BanTime == 0 {
		c.BanTime = DefaultBanTime
	}
	if c.BanFactor == 0 {
		c.BanFactor = DefaultBanFactor
	}
	if c.MaxBanTime == 0 {
		c.MaxBanTime = DefaultMaxBanTime
	}
	if c.IPv4Prefix == 0 {
		c.IPv4Prefix = DefaultIPv4Prefix
	}
	if c.IPv6Prefix == 0 {
		c.IPv6Prefix = DefaultIPv6Prefix
	}
	if c.MaxTracked == 0 {
		c.MaxTracked = DefaultMaxTracked
	}
	if c.MaxLoginWaiters == 0 {
		c.MaxLoginWaiters = DefaultMaxLoginWaiters
	}
	return c
}

// settings is a validated Config with defaults applied and derived values.
// It is immutable once built; Reload swaps in a new one.
type settings struct {
	Config
	limit  rate.Limit     // Failures per Window, in tokens per second
	allow4 []netip.Prefix // Allow entries, normalised and split by family
	allow6 []netip.Prefix
}

// newSettings builds settings from a Config that passed Validate.
func newSettings(c Config) *settings {
	c = c.withDefaults()
	c.Allow = append([]netip.Prefix(nil), c.Allow...) // the caller keeps its slice
	s := &settings{Config: c, limit: rate.Limit(float64(c.Failures) / c.Window.Seconds())}
	for _, p := range c.Allow {
		p, err := NormPrefix(p)
		if err != nil {
			continue // only ::ffff:0:0/n with n < 96; it cannot match a normalised address
		}
		if p.Addr().Is4() {
			s.allow4 = append(s.allow4, p)
		} else {
			s.allow6 = append(s.allow6, p)
		}
	}
	return s
}

// key masks a normalised address (normAddr: a 6to4 or Teredo address is
// already the IPv4 address it carries, under IPv4Prefix) to its key.
func (s *settings) key(a netip.Addr) netip.Prefix {
	bits := s.IPv6Prefix
	if a.Is4() {
		bits = s.IPv4Prefix
	}
	p, _ := a.Prefix(bits) // cannot fail: bits is in range for a's family
	return p
}

// allowed reports whether the normalised address a is allowlisted.
func (s *settings) allowed(a netip.Addr) bool {
	list := s.allow6
	if a.Is4() {
		list = s.allow4
	}
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// allowedPrefix reports whether every address of the normalised prefix p is
// allowlisted (so a ban of p could never apply).
func (s *settings) allowedPrefix(p netip.Prefix) bool {
	list := s.allow6
	if p.Addr().Is4() {
		list = s.allow4
	}
	for _, a := range list {
		if a.Bits() <= p.Bits() && a.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// banDuration is the length of a key's count-th ban:
// BanTime × BanFactor^(count−1), capped at MaxBanTime.
func (s *settings) banDuration(count int) time.Duration {
	d := float64(s.BanTime) * math.Pow(s.BanFactor, float64(count-1))
	if !(d < float64(s.MaxBanTime)) { // also catches +Inf
		return s.MaxBanTime
	}
	return time.Duration(d)
}
