package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// AdminConfig is the [admin] table: the admin HTTP listener (bans, reload,
// health, metrics, status page).
type AdminConfig struct {
	// Listen is "host:port", "unix:/path/to/socket", or "" (no listener).
	Listen string `toml:"listen"`
	// TokenFile holds a bearer token that every route but /healthz
	// requires. "" = no token (only allowed on loopback or a unix socket).
	TokenFile string `toml:"token_file"`
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool `toml:"pprof"`
}

// FirewallConfig is the [firewall] table: commands run on each ban and
// unban, to push bans into the kernel's firewall.
type FirewallConfig struct {
	BanCommand   []string      `toml:"ban_command"`
	UnbanCommand []string      `toml:"unban_command"`
	Timeout      time.Duration `toml:"timeout"`
	// UnbanExpired runs unban_command also when a ban runs out, not only
	// when it is lifted.
	UnbanExpired bool `toml:"unban_expired"`
}

// AdminSettings are the validated [admin] settings.
type AdminSettings struct {
	Network, Address string // for net.Listen; Network "" = off
	Token            string // the token read from TokenFile; "" = none
	Pprof            bool
}

// FirewallSettings are the validated [firewall] settings.
type FirewallSettings struct {
	Ban, Unban   []string // argv with placeholders; Ban nil = off
	Timeout      time.Duration
	UnbanExpired bool // run Unban when a ban runs out too
}

// minTokenLen is the shortest admin token accepted: a short one can be
// guessed over the network like any password.
const minTokenLen = 16

// placeholders of firewall commands, and the pattern that finds them.
var (
	fwPlaceholders = []string{"{ip}", "{prefix}", "{seconds}", "{family}"}
	placeholderRE  = regexp.MustCompile(`\{[A-Za-z_]+\}`)
)

// parseAdminListen splits an [admin] listen value into network and address.
func parseAdminListen(v string) (network, address string, err error) {
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

// readToken reads an admin token file: its first line, trimmed.
func readToken(path string) (string, error) {
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

// opsSettings validates mode, [admin] and [firewall].
func (c Config) opsSettings(s *Settings, bad func(key, format string, args ...any)) {
	switch c.Mode {
	case "enforce":
	case "observe":
		s.Proxy.Observe = true
	default:
		bad("mode", "must be \"enforce\" or \"observe\", got %q", c.Mode)
	}

	a := c.Admin
	network, address, err := parseAdminListen(a.Listen)
	if err != nil {
		bad("admin.listen", "%v", err)
	}
	s.Admin = AdminSettings{Network: network, Address: address, Pprof: a.Pprof}
	if a.TokenFile != "" {
		tok, err := readToken(a.TokenFile)
		if err != nil {
			bad("admin.token_file", "%v", err)
		}
		s.Admin.Token = tok
	} else if network == "tcp" && !isLoopbackListen(address) {
		bad("admin.listen", "%q is reachable from other hosts: set admin.token_file too (whoever reaches the admin listener can lift bans)", a.Listen)
	}

	f := c.Firewall
	checkArgv := func(key string, argv []string) {
		if len(argv) == 0 {
			return
		}
		if argv[0] == "" {
			bad(key, "the program (first element) is empty")
		} else if _, err := exec.LookPath(argv[0]); err != nil {
			bad(key, "program %q: %v", argv[0], err)
		}
		for _, arg := range argv {
			for _, p := range placeholderRE.FindAllString(arg, -1) {
				known := false
				for _, k := range fwPlaceholders {
					known = known || p == k
				}
				if !known {
					bad(key, "unknown placeholder %s in %q (known: %s)", p, arg, strings.Join(fwPlaceholders, ", "))
				}
			}
		}
	}
	checkArgv("firewall.ban_command", f.BanCommand)
	checkArgv("firewall.unban_command", f.UnbanCommand)
	if len(f.BanCommand) == 0 && len(f.UnbanCommand) > 0 {
		bad("firewall.unban_command", "needs a ban_command too")
	}
	if f.Timeout <= 0 {
		bad("firewall.timeout", "must be a positive duration such as \"5s\", got %v", f.Timeout)
	}
	s.Firewall = FirewallSettings{Timeout: f.Timeout, UnbanExpired: f.UnbanExpired}
	if len(f.BanCommand) > 0 {
		s.Firewall.Ban = f.BanCommand
		s.Firewall.Unban = f.UnbanCommand
	}
}
