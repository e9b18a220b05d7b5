package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/proxy"
)

// Config is the TOML configuration file. Field names are the public
// interface (DESIGN.md, "The config file"); every key is documented in
// config.example.toml.
type Config struct {
	Listen   string         `toml:"listen"`
	Active   bool           `toml:"active"`
	TLS      TLSConfig      `toml:"tls"`
	Backend  BackendConfig  `toml:"backend"`
	Passive  PassiveConfig  `toml:"passive"`
	Limits   LimitsConfig   `toml:"limits"`
	Sessions SessionsConfig `toml:"sessions"`
	Store    StoreConfig    `toml:"store"`
	Log      LogConfig      `toml:"log"`
	// ProxyProtocol is the [proxy_protocol] table.
	ProxyProtocol ProxyProtocolConfig `toml:"proxy_protocol"`
	// UserLimits is the [user_limits] table.
	UserLimits UserLimitsConfig `toml:"user_limits"`
	// Mode is "enforce" or "observe" (count and log, refuse nobody).
	Mode string `toml:"mode"`
	// Admin is the [admin] table.
	Admin AdminConfig `toml:"admin"`
	// Firewall is the [firewall] table.
	Firewall FirewallConfig `toml:"firewall"`
}

// UserLimitsConfig is the [user_limits] table: per-username budgets.
type UserLimitsConfig struct {
	Failures       int           `toml:"failures"`
	Window         time.Duration `toml:"window"`
	KnownGoodTTL   time.Duration `toml:"known_good_ttl"`
	MaxNamesPerKey int           `toml:"max_names_per_key"`
	MaxTracked     int           `toml:"max_tracked"`
}

// ProxyProtocolConfig is the [proxy_protocol] table.
type ProxyProtocolConfig struct {
	Trusted       []string      `toml:"trusted"`
	HeaderTimeout time.Duration `toml:"header_timeout"`
}

// BackendConfig is the [backend] table.
type BackendConfig struct {
	Address     string        `toml:"address"`
	DialTimeout time.Duration `toml:"dial_timeout"`
	SendProxy   string        `toml:"send_proxy"`
}

// PassiveConfig is the [passive] table.
type PassiveConfig struct {
	Address string `toml:"address"`
	Ports   string `toml:"ports"`
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

// SessionsConfig is the [sessions] table.
type SessionsConfig struct {
	MaxConns           int           `toml:"max_conns"`
	MaxConnsPerIP      int           `toml:"max_conns_per_ip"`
	LoginTimeout       time.Duration `toml:"login_timeout"`
	IdleTimeout        time.Duration `toml:"idle_timeout"`
	DataTimeout        time.Duration `toml:"data_timeout"`
	DrainTimeout       time.Duration `toml:"drain_timeout"`
	MaxPreauthCommands int           `toml:"max_preauth_commands"`
	MaxLine            int           `toml:"max_line"`
	MaxReply           int           `toml:"max_reply"`
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
		Listen:  "0.0.0.0:21",
		Active:  true,
		TLS:     TLSConfig{Mode: "off", MinVersion: "1.2", ImplicitListen: "0.0.0.0:990"},
		Backend: BackendConfig{Address: "127.0.0.1:2121", DialTimeout: 5 * time.Second, SendProxy: "off"},
		Passive: PassiveConfig{Ports: "50000-50099"},
		Limits: LimitsConfig{
			Failures: 5, Window: 10 * time.Minute,
			BanTime: time.Hour, BanFactor: 2, MaxBanTime: 168 * time.Hour,
			IPv4Prefix: 32, IPv6Prefix: 64, Allow: []string{}, MaxTracked: 1_000_000,
			CountUserRejects: true,
			FailureDelay:     time.Second, MaxFailureDelay: 16 * time.Second,
		},
		Sessions: SessionsConfig{
			MaxConns: 2000, MaxConnsPerIP: 10,
			LoginTimeout: 30 * time.Second, IdleTimeout: 10 * time.Minute,
			DataTimeout: 30 * time.Second, DrainTimeout: 30 * time.Second,
			MaxPreauthCommands: 20, MaxLine: 2048, MaxReply: 256 << 10,
		},
		Store: StoreConfig{Kind: "file", Path: "ftpguard.db", OnCorrupt: "fail",
			Prefix: "ftpguard:", Timeout: 200 * time.Millisecond},
		ProxyProtocol: ProxyProtocolConfig{Trusted: []string{}, HeaderTimeout: 5 * time.Second},
		UserLimits: UserLimitsConfig{Failures: 20, Window: time.Hour, KnownGoodTTL: 720 * time.Hour,
			MaxNamesPerKey: 10, MaxTracked: 100_000},
		Log:      LogConfig{Level: "info", Format: "text"},
		Mode:     "enforce",
		Admin:    AdminConfig{Listen: "127.0.0.1:9121"},
		Firewall: FirewallConfig{BanCommand: []string{}, UnbanCommand: []string{}, Timeout: 5 * time.Second, UnbanExpired: true},
	}
}

// Settings is a loaded, validated configuration turned into the settings of
// each package.
type Settings struct {
	File     Config
	Listen   string
	Proxy    proxy.Config
	Limiter  limiter.Config
	Users    limiter.UserConfig
	LogLevel slog.Level
	Admin    AdminSettings
	Firewall FirewallSettings

	cert *tls.Certificate // [tls] key pair, put in use by installCert
}

// installCert puts the key pair of st in use for every later TLS handshake
// (at start, and by a reload once the whole file is accepted).
func (st *Settings) installCert() {
	if st.cert != nil {
		certs.Store(st.cert)
	}
}

// keyError is a problem with one key of the file.
type keyError struct {
	key, reason string
}

// LoadConfig reads, decodes and validates the file at path. Every problem
// is reported as "path:line key: reason" (line omitted for a key the file
// does not set), all of them at once.
func LoadConfig(path string) (*Settings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg := DefaultConfig()
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return nil, fmt.Errorf("%s:%d %s: %s", path, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return nil, fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		// Type mismatches come as "toml: line N (last key "K"): reason".
		var line int
		var key string
		msg := err.Error()
		if n, _ := fmt.Sscanf(msg, "toml: line %d (last key %q):", &line, &key); n == 2 {
			_, reason, _ := strings.Cut(msg, "): ")
			return nil, fmt.Errorf("%s:%d %s: %s", path, line, key, reason)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var errs []keyError
	for _, k := range md.Undecoded() {
		errs = append(errs, keyError{k.String(), "unknown key"})
	}
	for _, p := range []*string{&cfg.Store.Path, &cfg.TLS.Cert, &cfg.TLS.Key, &cfg.TLS.BackendCA, &cfg.Admin.TokenFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	st, verrs := cfg.settings()
	errs = append(errs, verrs...)
	if len(errs) > 0 {
		msgs := make([]error, len(errs))
		for i, e := range errs {
			if line := lineOf(data, e.key); line > 0 {
				msgs[i] = fmt.Errorf("%s:%d %s: %s", path, line, e.key, e.reason)
			} else {
				msgs[i] = fmt.Errorf("%s: %s: %s", path, e.key, e.reason)
			}
		}
		return nil, errors.Join(msgs...)
	}
	return st, nil
}

// settings validates c and converts it.
func (c Config) settings() (*Settings, []keyError) {
	var errs []keyError
	bad := func(key, format string, args ...any) {
		errs = append(errs, keyError{key, fmt.Sprintf(format, args...)})
	}
	positive := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, "must be a positive duration such as \"30s\", got %v", d)
		}
	}
	atLeast := func(key string, n, min int) {
		if n < min {
			bad(key, "must be ≥ %d, got %d", min, n)
		}
	}
	checkHostPort := func(key, v string) {
		if _, port, err := net.SplitHostPort(v); err != nil {
			bad(key, "must be host:port, got %q: %v", v, err)
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			bad(key, "port must be 0–65535, got %q", port)
		}
	}

	s := &Settings{File: c, Listen: c.Listen}
	checkHostPort("listen", c.Listen)
	validateTLS(c.TLS, bad)
	if c.TLS.Mode == "implicit" {
		checkHostPort("tls.implicit_listen", c.TLS.ImplicitListen)
	}
	checkHostPort("backend.address", c.Backend.Address)
	positive("backend.dial_timeout", c.Backend.DialTimeout)

	var sendProxy byte
	switch c.Backend.SendProxy {
	case "off":
	case "v1":
		sendProxy = 1
	case "v2":
		sendProxy = 2
	default:
		bad("backend.send_proxy", "must be \"off\", \"v1\" or \"v2\", got %q", c.Backend.SendProxy)
	}
	var trusted []netip.Prefix
	for _, a := range c.ProxyProtocol.Trusted {
		p, err := parsePrefix(a)
		if err != nil {
			bad("proxy_protocol.trusted", "%q is not an IP address or CIDR", a)
			continue
		}
		trusted = append(trusted, p)
	}
	positive("proxy_protocol.header_timeout", c.ProxyProtocol.HeaderTimeout)

	var passiveAddr netip.Addr
	if c.Passive.Address != "" {
		a, err := netip.ParseAddr(c.Passive.Address)
		if err != nil {
			bad("passive.address", "must be an IP address (never a name: no DNS), got %q", c.Passive.Address)
		}
		passiveAddr = a.Unmap()
	}
	ports, err := parsePortRange(c.Passive.Ports)
	if err != nil {
		bad("passive.ports", "%v", err)
	}

	l := c.Limits
	atLeast("limits.failures", l.Failures, 1)
	positive("limits.window", l.Window)
	positive("limits.ban_time", l.BanTime)
	if l.BanFactor < 1 {
		bad("limits.ban_factor", "must be ≥ 1, got %g", l.BanFactor)
	}
	positive("limits.max_ban_time", l.MaxBanTime)
	if l.MaxBanTime > 0 && l.MaxBanTime < l.BanTime {
		bad("limits.max_ban_time", "must be ≥ ban_time (%v), got %v", l.BanTime, l.MaxBanTime)
	}
	if l.IPv4Prefix < 1 || l.IPv4Prefix > 32 {
		bad("limits.ipv4_prefix", "must be 1–32, got %d", l.IPv4Prefix)
	}
	if l.IPv6Prefix < 1 || l.IPv6Prefix > 128 {
		bad("limits.ipv6_prefix", "must be 1–128, got %d", l.IPv6Prefix)
	}
	var allow []netip.Prefix
	for _, a := range l.Allow {
		p, err := parsePrefix(a)
		if err != nil {
			bad("limits.allow", "%q is not an IP address or CIDR", a)
			continue
		}
		allow = append(allow, p)
	}
	atLeast("limits.max_tracked", l.MaxTracked, 1)
	if l.FailureDelay < 0 {
		bad("limits.failure_delay", "must be ≥ 0 (0 turns the tarpit off), got %v", l.FailureDelay)
	}
	if l.MaxFailureDelay < l.FailureDelay {
		bad("limits.max_failure_delay", "must be ≥ failure_delay (%v), got %v", l.FailureDelay, l.MaxFailureDelay)
	}

	ss := c.Sessions
	atLeast("sessions.max_conns", ss.MaxConns, 1)
	atLeast("sessions.max_conns_per_ip", ss.MaxConnsPerIP, 1)
	positive("sessions.login_timeout", ss.LoginTimeout)
	positive("sessions.idle_timeout", ss.IdleTimeout)
	positive("sessions.data_timeout", ss.DataTimeout)
	positive("sessions.drain_timeout", ss.DrainTimeout)
	atLeast("sessions.max_preauth_commands", ss.MaxPreauthCommands, 1)
	atLeast("sessions.max_line", ss.MaxLine, 512)
	atLeast("sessions.max_reply", ss.MaxReply, 4096)

	switch c.Store.Kind {
	case "memory":
	case "file":
		if c.Store.Path == "" {
			bad("store.path", "must name the state file for kind = \"file\"")
		}
	case "redis":
		if u, err := url.Parse(c.Store.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			bad("store.url", "must be \"redis://host:port/db\" (or rediss://) for kind = \"redis\", got %q", c.Store.URL)
		}
		positive("store.timeout", c.Store.Timeout)
	default:
		bad("store.kind", "must be \"memory\", \"file\" or \"redis\", got %q", c.Store.Kind)
	}
	if c.Store.OnCorrupt != "fail" && c.Store.OnCorrupt != "reset" {
		bad("store.on_corrupt", "must be \"fail\" or \"reset\", got %q", c.Store.OnCorrupt)
	}

	if err := s.LogLevel.UnmarshalText([]byte(c.Log.Level)); err != nil {
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "must be \"text\" or \"json\", got %q", c.Log.Format)
	}

	s.Proxy = proxy.Config{
		Backend:            c.Backend.Address,
		DialTimeout:        c.Backend.DialTimeout,
		PassiveAddr:        passiveAddr,
		PassivePorts:       ports,
		MaxConns:           ss.MaxConns,
		MaxConnsPerIP:      ss.MaxConnsPerIP,
		LoginTimeout:       ss.LoginTimeout,
		IdleTimeout:        ss.IdleTimeout,
		MaxPreauthCommands: ss.MaxPreauthCommands,
		MaxLine:            ss.MaxLine,
		MaxReply:           ss.MaxReply,
		DataTimeout:        ss.DataTimeout,
		TrustedProxies:     trusted,
		ProxyHeaderTimeout: c.ProxyProtocol.HeaderTimeout,
		SendProxy:          sendProxy,
		RequireTLS:         c.TLS.Require,
		Active:             c.Active,
	}
	s.Limiter = limiter.Config{
		Failures:      l.Failures,
		Window:        l.Window,
		BanTime:       l.BanTime,
		BanFactor:     l.BanFactor,
		MaxBanTime:    l.MaxBanTime,
		IPv4Prefix:    l.IPv4Prefix,
		IPv6Prefix:    l.IPv6Prefix,
		Allow:         allow,
		MaxTracked:    l.MaxTracked,
		SuccessResets: l.SuccessResets,

		FailureDelay:     l.FailureDelay,
		MaxFailureDelay:  l.MaxFailureDelay,
		CountUserRejects: l.CountUserRejects,
	}
	u := c.UserLimits
	s.Users = limiter.UserConfig{Failures: u.Failures, Window: u.Window, KnownGoodTTL: u.KnownGoodTTL,
		MaxNamesPerKey: u.MaxNamesPerKey, MaxTracked: u.MaxTracked}
	atLeast("user_limits.failures", u.Failures, 0)
	positive("user_limits.window", u.Window)
	positive("user_limits.known_good_ttl", u.KnownGoodTTL)
	atLeast("user_limits.max_names_per_key", u.MaxNamesPerKey, 0)
	atLeast("user_limits.max_tracked", u.MaxTracked, 1)
	s.Limiter.FailClosed = c.Store.FailClosed
	c.opsSettings(s, bad)
	if len(errs) == 0 {
		var err error
		if s.Proxy.TLS, s.cert, err = loadTLS(c.TLS); err != nil {
			bad("tls.cert", "%v", err)
		}
		if s.Proxy.BackendTLS, err = loadBackendTLS(c.TLS, c.Backend.Address); err != nil {
			bad("tls.backend_ca", "%v", err)
		}
	}
	if len(errs) == 0 {
		for _, v := range []error{s.Limiter.Validate(), s.Users.Validate()} {
			var ce *limiter.ConfigError
			for _, e := range unjoin(v) {
				if errors.As(e, &ce) {
					key := ce.Key
					if !strings.Contains(key, ".") {
						key = "limits." + key
					}
					bad(key, "%s", ce.Reason)
				} else if e != nil {
					bad("limits", "%v", e)
				}
			}
		}
	}
	return s, errs
}

// unjoin splits an errors.Join result.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// parsePortRange parses "50000-50099" (or a single port).
func parsePortRange(v string) (proxy.PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(v), "-")
	if !found {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	switch {
	case err1 != nil || err2 != nil:
		return proxy.PortRange{}, fmt.Errorf("must be \"LOW-HIGH\" with ports 1024–65535, got %q", v)
	case a < 1024 || b < a:
		return proxy.PortRange{}, fmt.Errorf("must be \"LOW-HIGH\" with 1024 ≤ LOW ≤ HIGH ≤ 65535, got %q", v)
	}
	return proxy.PortRange{Min: uint16(a), Max: uint16(b)}, nil
}

// parsePrefix accepts a CIDR or a bare address (a /32 or /128).
func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// lineOf finds the line (1-based) where a dotted key such as
// "limits.failures" or a table such as "bogus" is set, or 0. The config is
// flat (tables of scalars), so a scan of "[table]" headers and "key ="
// lines suffices.
func lineOf(data []byte, key string) int {
	table, name := "", key
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		table, name = key[:i], key[i+1:]
	}
	cur := ""
	for i, raw := range bytes.Split(data, []byte("\n")) {
		line := strings.TrimSpace(string(raw))
		if strings.HasPrefix(line, "[") {
			h := strings.TrimSpace(strings.Trim(line, "[]"))
			if h == key {
				return i + 1
			}
			cur = h
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if ok && cur == table && strings.Trim(strings.TrimSpace(k), `"`) == name {
			return i + 1
		}
	}
	return 0
}
