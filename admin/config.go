package admin

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// Config is the [admin] table of the config file: the admin HTTP listener
// (bans, reload, health, metrics, status page).
type Config struct {
	// Listen is "host:port", "unix:/path/to/socket", or "" (no listener).
	Listen string `toml:"listen"`
	// TokenFile holds a bearer token that every route but /healthz
	// requires. "" = no token (only allowed on loopback or a unix socket).
	TokenFile string `toml:"token_file"`
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool `toml:"pprof"`
	// HistoryInterval is the step of the in-memory history the status
	// page draws (history.go): one sample per interval for 360 intervals,
	// one per 6 intervals for 1440 of those. Takes effect on restart.
	HistoryInterval time.Duration `toml:"history_interval"`
	// MaxBanPrefixIPv4 and MaxBanPrefixIPv6 are the widest ban an admin
	// may make without forcing it (bans add --force, "force": true): no
	// shorter prefix than these. A typo such as 0.0.0.0/0 would otherwise
	// lock the world out. Defaults 16 and 32.
	MaxBanPrefixIPv4 int `toml:"max_ban_prefix_ipv4"`
	MaxBanPrefixIPv6 int `toml:"max_ban_prefix_ipv6"`
}

// Defaults of [admin] max_ban_prefix_ipv4 and max_ban_prefix_ipv6.
const (
	DefaultMaxBanPrefixIPv4 = 16
	DefaultMaxBanPrefixIPv6 = 32
)

// DefaultHistoryInterval is [admin] history_interval's default: the last
// hour at 10s, the last day at a minute.
const DefaultHistoryInterval = 10 * time.Second

// DefaultConfig returns the [admin] settings of a file that leaves the
// table out: a listener on 127.0.0.1:9121, no token, no pprof.
func DefaultConfig() Config {
	return Config{Listen: "127.0.0.1:9121", HistoryInterval: DefaultHistoryInterval,
		MaxBanPrefixIPv4: DefaultMaxBanPrefixIPv4, MaxBanPrefixIPv6: DefaultMaxBanPrefixIPv6}
}

// Settings are the validated [admin] settings.
type Settings struct {
	Network, Address string // for net.Listen; Network "" = off
	Token            string // the token read from TokenFile; "" = none
	Pprof            bool
	HistoryInterval  time.Duration // of the status page's history
	// MaxBanPrefix is the shortest prefix an admin ban may have without
	// force, for IPv4 and IPv6; 0 (a Settings{} literal) means the default.
	MaxBanPrefix4, MaxBanPrefix6 int
}

// banLimit returns the shortest prefix a ban of p may have without force.
func (s *Settings) banLimit(is4 bool) int {
	if is4 {
		if s.MaxBanPrefix4 == 0 {
			return DefaultMaxBanPrefixIPv4
		}
		return s.MaxBanPrefix4
	}
	if s.MaxBanPrefix6 == 0 {
		return DefaultMaxBanPrefixIPv6
	}
	return s.MaxBanPrefix6
}

// minTokenLen is the shortest admin token accepted: a short one can be
// guessed over the network like any password.
const minTokenLen = 16

// Settings validates c into p (keys "admin.…"; the token file is read) and
// returns the settings it gives.
func (c Config) Settings(p *conf.Problems) Settings {
	network, address, err := parseListen(c.Listen)
	if err != nil {
		p.Add("admin.listen", "%v", err)
	}
	s := Settings{Network: network, Address: address, Pprof: c.Pprof, HistoryInterval: c.HistoryInterval,
		MaxBanPrefix4: c.MaxBanPrefixIPv4, MaxBanPrefix6: c.MaxBanPrefixIPv6}
	if c.MaxBanPrefixIPv4 != 0 { // 0: a Config{} literal, the default
		p.Between("admin.max_ban_prefix_ipv4", c.MaxBanPrefixIPv4, 1, 32)
	}
	if c.MaxBanPrefixIPv6 != 0 {
		p.Between("admin.max_ban_prefix_ipv6", c.MaxBanPrefixIPv6, 1, 128)
	}
	if s.HistoryInterval == 0 { // a Config{} literal
		s.HistoryInterval = DefaultHistoryInterval
	} else if c.HistoryInterval < time.Second || c.HistoryInterval > time.Hour {
		p.Add("admin.history_interval", "must be between 1s and 1h, got %v", c.HistoryInterval)
	}
	if c.TokenFile != "" {
		tok, err := ReadToken(c.TokenFile)
		if err != nil {
			p.Add("admin.token_file", "%v", err)
		}
		s.Token = tok
	} else if s.Reachable() {
		p.Add("admin.listen", "%q is reachable from other hosts: set admin.token_file too (whoever reaches the admin listener can lift bans)", c.Listen)
	}
	return s
}

// Reachable reports whether the listener of s can be reached from other
// hosts (TCP on an address that is not loopback): such a listener needs a
// token, for as long as it is open — a reload does not move it
// (docs/operating.md, "Admin endpoint").
func (s Settings) Reachable() bool { return s.Network == "tcp" && !isLoopbackListen(s.Address) }

// parseListen splits an [admin] listen value into network and address.
func parseListen(v string) (network, address string, err error) {
	switch {
	case v == "":
		return "", "", nil
	case strings.HasPrefix(v, "unix:"):
		p := strings.TrimPrefix(v, "unix:")
		if !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("a unix socket needs an absolute path (\"unix:/run/ftpguard/admin.sock\"), got %q", v)
		}
		return "unix", p, nil
	}
	host, _, err := net.SplitHostPort(v)
	if err != nil {
		return "", "", fmt.Errorf("must be host:port, \"unix:/path\" or \"\" (off), got %q: %v", v, err)
	}
	if host == "" {
		return "", "", fmt.Errorf("must name an IP address (127.0.0.1 keeps it local), got %q", v)
	}
	return "tcp", v, nil
}

// isLoopbackListen reports whether a tcp listen address stays on this host.
func isLoopbackListen(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ReadToken reads an admin token file: its first line, trimmed, of at
// least 16 bytes.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	tok = strings.TrimSpace(tok)
	if len(tok) < minTokenLen {
		return "", fmt.Errorf("the token in %s is %d bytes; use at least %d random ones (e.g. openssl rand -hex 32 > %s)",
			path, len(tok), minTokenLen, path)
	}
	return tok, nil
}

// Listen opens the admin listener of s (nil when Network is "": none). A
// stale unix socket file is replaced; a new one is made readable and
// writable by the owner and group only.
func Listen(s Settings) (net.Listener, error) {
	switch s.Network {
	case "":
		return nil, nil
	case "unix":
		if fi, err := os.Lstat(s.Address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", s.Address); err == nil {
				c.Close()
				return nil, fmt.Errorf("admin.listen: %s is in use by another process", s.Address)
			}
			os.Remove(s.Address)
		}
		ln, err := net.Listen("unix", s.Address)
		if err != nil {
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		if err := os.Chmod(s.Address, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		return ln, nil
	default:
		ln, err := net.Listen(s.Network, s.Address)
		if err != nil {
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		return ln, nil
	}
}
