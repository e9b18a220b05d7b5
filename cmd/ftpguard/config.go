package main

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/ftpguard/ftpguard/admin"
	"github.com/ftpguard/ftpguard/crowdsec"
	"github.com/ftpguard/ftpguard/firewall"
	"github.com/ftpguard/ftpguard/geo"
	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/stores"
	"github.com/ftpguard/ftpguard/proxy"
)

// Config is the TOML configuration file, made of the sections each
// package owns (docs/design.md, "The config file"); every key is
// documented in config.example.toml. [log], mode and timer_slack are main's.
type Config struct {
	// listen, active, [tls], [backend], [passive], [sessions], [proxy_protocol]
	proxy.Section
	Limits     limiter.LimitsConfig     `toml:"limits"`
	UserLimits limiter.UserLimitsConfig `toml:"user_limits"`
	Store      stores.Config            `toml:"store"`
	Log        LogConfig                `toml:"log"`
	// Mode is "enforce" or "observe" (count and log, refuse nobody).
	Mode string `toml:"mode"`
	// TimerSlack is the timer slack of every thread (slack_linux.go); 0:
	// the one ftpguard started with.
	TimerSlack time.Duration    `toml:"timer_slack"`
	Admin      admin.Config     `toml:"admin"`
	Firewall   firewall.Config  `toml:"firewall"`
	CrowdSec   crowdsec.Section `toml:"crowdsec"`
	Geo        geo.Config       `toml:"geo"`
}

// LogConfig is the [log] table.
type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// DefaultConfig returns the settings used for every key a file leaves out.
func DefaultConfig() Config {
	return Config{
		Section:    proxy.DefaultSection(),
		Limits:     limiter.DefaultLimits(),
		UserLimits: limiter.DefaultUserLimits(),
		Store:      stores.Default(),
		Log:        LogConfig{Level: "info", Format: "text"},
		Mode:       "enforce",
		TimerSlack: time.Millisecond,
		Admin:      admin.DefaultConfig(),
		Firewall:   firewall.DefaultConfig(),
		CrowdSec:   crowdsec.Defaults(),
		Geo:        geo.DefaultConfig(),
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
	CrowdSec crowdsec.Settings // taken into use at start only
	Geo      geo.Settings
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
	for _, f := range []*string{&cfg.Store.Path, &cfg.TLS.Cert, &cfg.TLS.Key, &cfg.TLS.BackendCA, &cfg.Admin.TokenFile,
		&cfg.CrowdSec.BouncerKeyFile, &cfg.CrowdSec.PasswordFile, &cfg.Store.PasswordFile,
		&cfg.Geo.CountryDatabase, &cfg.Geo.ASNDatabase} {
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
// settings they give; [log], mode and timer_slack are main's own.
func (c Config) settings(p *conf.Problems) *Settings {
	s := &Settings{File: c}
	s.Proxy = c.Section.Settings(p)
	s.Admin = c.Admin.Settings(p)
	guarded := []string{c.Listen}
	if c.TLS.Mode == "implicit" {
		guarded = append(guarded, c.TLS.ImplicitListen)
	}
	s.Firewall = c.Firewall.WithPorts(firewall.ProxyPorts(guarded, c.Passive.Ports)...).Settings(p)
	if c.Passive.DataPath == proxy.DataPathNftables && c.Firewall.Kind == firewall.KindNftables && c.Passive.NftTable == c.Firewall.Table {
		p.Add("passive.nft_table", "must differ from firewall.table (%q): each owns its table", c.Firewall.Table)
	}
	s.CrowdSec = c.CrowdSec.Settings(p)
	s.Geo = c.Geo.Settings(p)
	p.OneOf("mode", c.Mode, "enforce", "observe")
	if c.TimerSlack < 0 || c.TimerSlack > maxTimerSlack {
		p.Add("timer_slack", "must be between 0s (the slack ftpguard started with) and %v, got %v", maxTimerSlack, c.TimerSlack)
	}
	s.Proxy.Observe = c.Mode == "observe"

	s.Limiter = c.Limits.Settings(p, c.Store.FailClosed)
	s.Users = c.UserLimits.Settings(p)
	c.Store.Validate(p)

	if err := s.LogLevel.UnmarshalText([]byte(c.Log.Level)); err != nil {
		p.Add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	p.OneOf("log.format", c.Log.Format, "text", "json")

	return s
}
