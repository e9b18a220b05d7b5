package main

import (
	"errors"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/admin"
	"github.com/ftpguard/ftpguard/firewall"
	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/proxy"
)

// Config is the TOML configuration file, made of the sections each
// package owns (docs/design.md, "The config file"); every key is
// documented in config.example.toml. [log] and mode are main's.
type Config struct {
	// listen, active, [tls], [backend], [passive], [sessions], [proxy_protocol]
	proxy.Section
	Limits LimitsConfig `toml:"limits"`
	Store  StoreConfig  `toml:"store"`
	Log    LogConfig    `toml:"log"`
	// UserLimits is the [user_limits] table.
	UserLimits UserLimitsConfig `toml:"user_limits"`
	// Mode is "enforce" or "observe" (count and log, refuse nobody).
	Mode     string          `toml:"mode"`
	Admin    admin.Config    `toml:"admin"`
	Firewall firewall.Config `toml:"firewall"`
}

// UserLimitsConfig is the [user_limits] table: per-username budgets.
type UserLimitsConfig struct {
	Failures       int           `toml:"failures"`
	Window         time.Duration `toml:"window"`
	KnownGoodTTL   time.Duration `toml:"known_good_ttl"`
	MaxNamesPerKey int           `toml:"max_names_per_key"`
	MaxTracked     int           `toml:"max_tracked"`
}

// LimitsConfig is the [limits] table.
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
}

// StoreConfig is the [store] table.
type StoreConfig struct {
	Kind       string        `toml:"kind"`
	Path       string        `toml:"path"`
	OnCorrupt  string        `toml:"on_corrupt"`
	URL        string        `toml:"url"`
	Prefix     string        `toml:"prefix"`
	Timeout    time.Duration `toml:"timeout"`
	FailClosed bool          `toml:"fail_closed"`
}

// LogConfig is the [log] table.
type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// DefaultConfig returns the settings used for every key a file leaves out.
func DefaultConfig() Config {
	return Config{
		Section: proxy.DefaultSection(),
		Limits: LimitsConfig{
			Failures: 5, Window: 10 * time.Minute,
			BanTime: time.Hour, BanFactor: 2, MaxBanTime: 168 * time.Hour,
			IPv4Prefix: 32, IPv6Prefix: 64, Allow: []string{}, MaxTracked: 1_000_000,
			CountUserRejects: true,
			FailureDelay:     time.Second, MaxFailureDelay: 16 * time.Second,
		},
		Store: StoreConfig{Kind: "file", Path: "ftpguard.db", OnCorrupt: "fail",
			Prefix: "ftpguard:", Timeout: 200 * time.Millisecond},
		UserLimits: UserLimitsConfig{Failures: 20, Window: time.Hour, KnownGoodTTL: 720 * time.Hour,
			MaxNamesPerKey: 10, MaxTracked: 100_000},
		Log:      LogConfig{Level: "info", Format: "text"},
		Mode:     "enforce",
		Admin:    admin.DefaultConfig(),
		Firewall: firewall.DefaultConfig(),
	}
}

// Settings is a loaded, validated configuration: each package's settings,
// from its own section.
type Settings struct {
	File     Config
	Proxy    proxy.Settings // Observe set from mode
	Limiter  limiter.Config
	Users    limiter.UserConfig
	LogLevel slog.Level
	Admin    admin.Settings
	Firewall firewall.Settings
}

// LoadConfig reads, decodes and validates the file at path. Every problem
// is reported as "path:line key: reason" (line omitted for a key the file
// does not set), all of them at once.
func LoadConfig(path string) (*Settings, error) {
	file, err := conf.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	var p conf.Problems
	if err := file.Decode(&cfg, &p); err != nil {
		return nil, err
	}
	for _, f := range []*string{&cfg.Store.Path, &cfg.TLS.Cert, &cfg.TLS.Key, &cfg.TLS.BackendCA, &cfg.Admin.TokenFile} {
		if *f != "" && !filepath.IsAbs(*f) {
			*f = filepath.Join(filepath.Dir(path), *f)
		}
	}
	st := cfg.settings(&p)
	if err := file.Err(&p); err != nil {
		return nil, err
	}
	return st, nil
}

// settings asks each section to validate itself into p and returns the
// settings they give; [limits], [user_limits], [store], [log] and mode are
// validated here.
func (c Config) settings(p *conf.Problems) *Settings {
	s := &Settings{File: c}
	s.Proxy = c.Section.Settings(p)
	s.Admin = c.Admin.Settings(p)
	s.Firewall = c.Firewall.Settings(p)
	p.OneOf("mode", c.Mode, "enforce", "observe")
	s.Proxy.Observe = c.Mode == "observe"

	l := c.Limits
	p.AtLeast("limits.failures", l.Failures, 1)
	p.Positive("limits.window", l.Window)
	p.Positive("limits.ban_time", l.BanTime)
	if l.BanFactor < 1 {
		p.Add("limits.ban_factor", "must be ≥ 1, got %g", l.BanFactor)
	}
	p.Positive("limits.max_ban_time", l.MaxBanTime)
	if l.MaxBanTime > 0 && l.MaxBanTime < l.BanTime {
		p.Add("limits.max_ban_time", "must be ≥ ban_time (%v), got %v", l.BanTime, l.MaxBanTime)
	}
	p.Between("limits.ipv4_prefix", l.IPv4Prefix, 1, 32)
	p.Between("limits.ipv6_prefix", l.IPv6Prefix, 1, 128)
	allow := p.Prefixes("limits.allow", l.Allow)
	p.AtLeast("limits.max_tracked", l.MaxTracked, 1)
	if l.FailureDelay < 0 {
		p.Add("limits.failure_delay", "must be ≥ 0 (0 turns the tarpit off), got %v", l.FailureDelay)
	}
	if l.MaxFailureDelay < l.FailureDelay {
		p.Add("limits.max_failure_delay", "must be ≥ failure_delay (%v), got %v", l.FailureDelay, l.MaxFailureDelay)
	}

	switch c.Store.Kind {
	case "file":
		if c.Store.Path == "" {
			p.Add("store.path", "must name the state file for kind = \"file\"")
		}
	case "redis":
		if u, err := url.Parse(c.Store.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			p.Add("store.url", "must be \"redis://host:port/db\" (or rediss://) for kind = \"redis\", got %q", c.Store.URL)
		}
		p.Positive("store.timeout", c.Store.Timeout)
	default:
		p.OneOf("store.kind", c.Store.Kind, "memory", "file", "redis")
	}
	p.OneOf("store.on_corrupt", c.Store.OnCorrupt, "fail", "reset")

	if err := s.LogLevel.UnmarshalText([]byte(c.Log.Level)); err != nil {
		p.Add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	p.OneOf("log.format", c.Log.Format, "text", "json")

	s.Limiter = limiter.Config{
		Failures:         l.Failures,
		Window:           l.Window,
		BanTime:          l.BanTime,
		BanFactor:        l.BanFactor,
		MaxBanTime:       l.MaxBanTime,
		IPv4Prefix:       l.IPv4Prefix,
		IPv6Prefix:       l.IPv6Prefix,
		Allow:            allow,
		MaxTracked:       l.MaxTracked,
		SuccessResets:    l.SuccessResets,
		FailClosed:       c.Store.FailClosed,
		FailureDelay:     l.FailureDelay,
		MaxFailureDelay:  l.MaxFailureDelay,
		CountUserRejects: l.CountUserRejects,
	}
	u := c.UserLimits
	s.Users = limiter.UserConfig{Failures: u.Failures, Window: u.Window, KnownGoodTTL: u.KnownGoodTTL,
		MaxNamesPerKey: u.MaxNamesPerKey, MaxTracked: u.MaxTracked}
	p.AtLeast("user_limits.failures", u.Failures, 0)
	p.Positive("user_limits.window", u.Window)
	p.Positive("user_limits.known_good_ttl", u.KnownGoodTTL)
	p.AtLeast("user_limits.max_names_per_key", u.MaxNamesPerKey, 0)
	p.AtLeast("user_limits.max_tracked", u.MaxTracked, 1)
	if p.OK() {
		for _, v := range []error{s.Limiter.Validate(), s.Users.Validate()} {
			var ce *limiter.ConfigError
			for _, e := range unjoin(v) {
				if errors.As(e, &ce) {
					key := ce.Key
					if !strings.Contains(key, ".") {
						key = "limits." + key
					}
					p.Add(key, "%s", ce.Reason)
				} else if e != nil {
					p.Add("limits", "%v", e)
				}
			}
		}
	}
	return s
}

// unjoin splits an errors.Join result.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
