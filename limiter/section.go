package limiter

// The [limits] and [user_limits] tables of the config file: the limiter
// owns them, their defaults and their validation. cmd/ftpguard decodes the
// file into these types and asks them for a Config and a UserConfig; every
// key is documented in config.example.toml.

import (
	"errors"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// LimitsConfig is the [limits] table of the config file: the per-address
// budgets and bans (see Config for what each key does). Unlike Config, its
// zero value is not the default: a file's missing keys keep the values of
// DefaultLimits, so decode the file into DefaultLimits().
type LimitsConfig struct {
	Failures         int           `toml:"failures"`
	Window           time.Duration `toml:"window"`
	BanTime          time.Duration `toml:"ban_time"`
	BanFactor        float64       `toml:"ban_factor"`
	MaxBanTime       time.Duration `toml:"max_ban_time"`
	IPv4Prefix       int           `toml:"ipv4_prefix"`
	IPv6Prefix       int           `toml:"ipv6_prefix"`
	Allow            []string      `toml:"allow"`
	MaxTracked       int           `toml:"max_tracked"`
	SuccessResets    bool          `toml:"success_resets"`
	CountUserRejects bool          `toml:"count_user_rejects"`
	FailureDelay     time.Duration `toml:"failure_delay"`
	MaxFailureDelay  time.Duration `toml:"max_failure_delay"`
	MaxLoginWaiters  int           `toml:"max_login_waiters"`
	WidenIPv6Prefix  int           `toml:"widen_ipv6_prefix"`
	WidenIPv4Prefix  int           `toml:"widen_ipv4_prefix"`
	WidenAfter       int           `toml:"widen_after"`
	// EndSessionsOnBan is which open sessions a new ban of their address
	// ends: "pre-login" (the default), "all" (logged-in ones after their
	// current reply), "all-now" or "off". The limiter only validates it;
	// the proxy ends the sessions (proxy.Server.EndSessions).
	EndSessionsOnBan string `toml:"end_sessions_on_ban"`
}

// DefaultLimits returns the [limits] settings used for every key a file
// leaves out.
func DefaultLimits() LimitsConfig {
	return LimitsConfig{
		Failures: DefaultFailures, Window: DefaultWindow,
		BanTime: DefaultBanTime, BanFactor: DefaultBanFactor, MaxBanTime: DefaultMaxBanTime,
		IPv4Prefix: DefaultIPv4Prefix, IPv6Prefix: DefaultIPv6Prefix, Allow: []string{},
		MaxTracked:       DefaultMaxTracked,
		CountUserRejects: true,
		FailureDelay:     time.Second, MaxFailureDelay: 16 * time.Second,
		MaxLoginWaiters: DefaultMaxLoginWaiters,
		WidenIPv6Prefix: 48, WidenAfter: DefaultWidenAfter,
		EndSessionsOnBan: "pre-login",
	}
}

// Settings validates c, adding each bad key to p once (as "limits.failures"
// and so on), and returns the Config it gives. failClosed is [store]
// fail_closed, which the Config carries. When p gained problems the
// returned Config is not to be used.
func (c LimitsConfig) Settings(p *conf.Problems, failClosed bool) Config {
	n := len(p.List)
	p.AtLeast("limits.failures", c.Failures, 1)
	p.Positive("limits.window", c.Window)
	p.Positive("limits.ban_time", c.BanTime)
	if c.BanFactor < 1 {
		p.Add("limits.ban_factor", "must be ≥ 1, got %g", c.BanFactor)
	}
	p.Positive("limits.max_ban_time", c.MaxBanTime)
	if c.MaxBanTime > 0 && c.MaxBanTime < c.BanTime {
		p.Add("limits.max_ban_time", "must be ≥ ban_time (%v), got %v", c.BanTime, c.MaxBanTime)
	}
	p.Between("limits.ipv4_prefix", c.IPv4Prefix, 1, 32)
	p.Between("limits.ipv6_prefix", c.IPv6Prefix, 1, 128)
	allow := p.Prefixes("limits.allow", c.Allow)
	p.AtLeast("limits.max_tracked", c.MaxTracked, 1)
	p.AtLeast("limits.max_login_waiters", c.MaxLoginWaiters, 1)
	if c.FailureDelay < 0 {
		p.Add("limits.failure_delay", "must be ≥ 0 (0 turns the tarpit off), got %v", c.FailureDelay)
	}
	if c.MaxFailureDelay < c.FailureDelay {
		p.Add("limits.max_failure_delay", "must be ≥ failure_delay (%v), got %v", c.FailureDelay, c.MaxFailureDelay)
	}
	cfg := Config{
		Failures:         c.Failures,
		Window:           c.Window,
		BanTime:          c.BanTime,
		BanFactor:        c.BanFactor,
		MaxBanTime:       c.MaxBanTime,
		IPv4Prefix:       c.IPv4Prefix,
		IPv6Prefix:       c.IPv6Prefix,
		Allow:            allow,
		MaxTracked:       c.MaxTracked,
		SuccessResets:    c.SuccessResets,
		FailClosed:       failClosed,
		FailureDelay:     c.FailureDelay,
		MaxFailureDelay:  c.MaxFailureDelay,
		CountUserRejects: c.CountUserRejects,
		MaxLoginWaiters:  c.MaxLoginWaiters,
		WidenIPv6Prefix:  c.WidenIPv6Prefix,
		WidenIPv4Prefix:  c.WidenIPv4Prefix,
		WidenAfter:       c.WidenAfter,
	}
	p.OneOf("limits.end_sessions_on_ban", c.EndSessionsOnBan, "pre-login", "all", "all-now", "off")
	if c.WidenAfter == 0 {
		p.Add("limits.widen_after", "must be in 2..%d, got 0", maxWidenAfter)
	}
	addRest(p, n, "limits.", cfg.Validate())
	return cfg
}

// UserLimitsConfig is the [user_limits] table of the config file: the
// per-username budgets (see UserConfig). Its zero value is not the default:
// decode the file into DefaultUserLimits().
type UserLimitsConfig struct {
	Failures       int           `toml:"failures"`
	Window         time.Duration `toml:"window"`
	KnownGoodTTL   time.Duration `toml:"known_good_ttl"`
	MaxNamesPerKey int           `toml:"max_names_per_key"`
	MaxTracked     int           `toml:"max_tracked"`
	// 0 (the default): [limits] ipv4_prefix / ipv6_prefix.
	KnownGoodIPv4Prefix int `toml:"known_good_ipv4_prefix"`
	KnownGoodIPv6Prefix int `toml:"known_good_ipv6_prefix"`
	// TrapUsernames: see UserConfig.TrapUsernames (default none).
	TrapUsernames []string `toml:"trap_usernames"`
}

// DefaultUserLimits returns the [user_limits] settings used for every key a
// file leaves out: per-username budgets are on in the file (20 failures an
// hour), while the zero UserConfig turns them off.
func DefaultUserLimits() UserLimitsConfig {
	return UserLimitsConfig{Failures: 20, Window: DefaultUserWindow, KnownGoodTTL: DefaultKnownGoodTTL,
		MaxNamesPerKey: 10, MaxTracked: DefaultUserMaxTracked, TrapUsernames: []string{}}
}

// Settings validates c, adding each bad key to p once (as
// "user_limits.window" and so on), and returns the UserConfig it gives.
// When p gained problems the returned UserConfig is not to be used.
func (c UserLimitsConfig) Settings(p *conf.Problems) UserConfig {
	n := len(p.List)
	p.AtLeast("user_limits.failures", c.Failures, 0)
	p.Positive("user_limits.window", c.Window)
	p.Positive("user_limits.known_good_ttl", c.KnownGoodTTL)
	p.AtLeast("user_limits.max_names_per_key", c.MaxNamesPerKey, 0)
	p.AtLeast("user_limits.max_tracked", c.MaxTracked, 1)
	p.Between("user_limits.known_good_ipv4_prefix", c.KnownGoodIPv4Prefix, 0, 32)
	p.Between("user_limits.known_good_ipv6_prefix", c.KnownGoodIPv6Prefix, 0, 128)
	cfg := UserConfig{Failures: c.Failures, Window: c.Window, KnownGoodTTL: c.KnownGoodTTL,
		MaxNamesPerKey: c.MaxNamesPerKey, MaxTracked: c.MaxTracked,
		KnownGoodIPv4Prefix: c.KnownGoodIPv4Prefix, KnownGoodIPv6Prefix: c.KnownGoodIPv6Prefix,
		TrapUsernames: c.TrapUsernames}
	addRest(p, n, "user_limits.", cfg.Validate())
	return cfg
}

// addRest adds to p the problems of err (from Config.Validate or
// UserConfig.Validate: the bounds the section's own checks do not cover,
// such as failures beyond 2³¹−1 or a NaN ban_factor) whose key p.List[n:]
// has not reported yet, so that each bad key gets one message. Keys without
// a dot are put in section.
func addRest(p *conf.Problems, n int, section string, err error) {
	if err == nil {
		return
	}
	seen := make(map[string]bool)
	for _, q := range p.List[n:] {
		seen[q.Key] = true
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var ce *ConfigError
		if !errors.As(e, &ce) {
			p.Add(strings.TrimSuffix(section, "."), "%v", e)
			continue
		}
		key := ce.Key
		if !strings.Contains(key, ".") {
			key = section + key
		}
		if !seen[key] {
			seen[key] = true
			p.Add(key, "%s", ce.Reason)
		}
	}
}
