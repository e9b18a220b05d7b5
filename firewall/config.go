package firewall

import (
	"net"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/nftset"
)

// Kinds of firewall backends (Config.Kind).
const (
	KindExec     = "exec"     // run ban_command / unban_command per ban
	KindNftables = "nftables" // keep the bans in a table of nftables' own, over netlink (package nftset)
)

// Config is the [firewall] table of the config file: how bans are pushed
// into the kernel's firewall — commands run on each ban and unban (kind
// "exec", the default), or a table of ftpguard's own in nftables (kind
// "nftables": the embedded nftset.Config keys table, drop_rule, ports,
// remove_on_exit).
type Config struct {
	// Kind is "exec" ("" means it too) or "nftables".
	Kind          string        `toml:"kind"`
	nftset.Config               // kind = "nftables"
	BanCommand    []string      `toml:"ban_command"`
	UnbanCommand  []string      `toml:"unban_command"`
	Timeout       time.Duration `toml:"timeout"`
	// UnbanExpired runs unban_command also when a ban runs out, not only
	// when it is lifted.
	UnbanExpired bool `toml:"unban_expired"`
}

// DefaultConfig returns the [firewall] settings of a file that leaves the
// table out: kind "exec" with no commands, a 5s timeout, unban_expired on;
// for kind "nftables", nftset's defaults (table "ftpguard", drop_rule on)
// and no ports (WithPorts fills them).
func DefaultConfig() Config {
	nft := nftset.DefaultConfig()
	nft.Ports = []string{}
	return Config{Kind: KindExec, Config: nft, BanCommand: []string{}, UnbanCommand: []string{}, Timeout: 5 * time.Second,
		UnbanExpired: true}
}

// WithPorts returns c with ports as its nftables ports if the file gives
// none (the caller passes the proxy's own: listen's, [passive] ports, the
// implicit TLS port).
func (c Config) WithPorts(ports ...string) Config {
	if len(c.Ports) == 0 {
		c.Ports = ports
	}
	return c
}

// Settings are the validated [firewall] settings a Runner runs with.
type Settings struct {
	Ban, Unban   []string // argv with placeholders; Ban nil = off (kind "exec")
	Timeout      time.Duration
	UnbanExpired bool // run Unban when a ban runs out too
	// Nft is the nftables table to keep the bans in; nil unless kind is
	// "nftables" (then Ban and Unban are nil). Taken into use at start only.
	Nft *nftset.Config
}

// on reports whether s pushes bans anywhere.
func (s *Settings) on() bool { return len(s.Ban) > 0 || s.Nft != nil }

// placeholders of the commands, and the pattern that finds them.
var (
	placeholders  = []string{"{ip}", "{prefix}", "{seconds}", "{family}"}
	placeholderRE = regexp.MustCompile(`\{[A-Za-z_]+\}`)
)

// Settings validates c into p (keys "firewall.…") and returns the
// settings it gives. The programs must exist (on $PATH or as a path).
func (c Config) Settings(p *conf.Problems) Settings {
	checkArgv := func(key string, argv []string) {
		if len(argv) == 0 {
			return
		}
		if argv[0] == "" {
			p.Add(key, "the program (first element) is empty")
		} else if _, err := exec.LookPath(argv[0]); err != nil {
			p.Add(key, "program %q: %v", argv[0], err)
		}
		for _, arg := range argv {
			for _, ph := range placeholderRE.FindAllString(arg, -1) {
				known := false
				for _, k := range placeholders {
					known = known || ph == k
				}
				if !known {
					p.Add(key, "unknown placeholder %s in %q (known: %s)", ph, arg, strings.Join(placeholders, ", "))
				}
			}
		}
	}
	switch c.Kind {
	case "", KindExec:
	case KindNftables:
		if len(c.BanCommand) > 0 || len(c.UnbanCommand) > 0 {
			p.Add("firewall.ban_command", "must be [] with kind = \"nftables\" (ftpguard keeps the table itself)")
		}
		c.Config.Validate(p)
		p.Positive("firewall.timeout", c.Timeout)
		nft := c.Config
		nft.Ports = append([]string(nil), c.Ports...)
		return Settings{Timeout: c.Timeout, UnbanExpired: true, Nft: &nft}
	default:
		p.OneOf("firewall.kind", c.Kind, KindExec, KindNftables)
	}
	checkArgv("firewall.ban_command", c.BanCommand)
	checkArgv("firewall.unban_command", c.UnbanCommand)
	if len(c.BanCommand) == 0 && len(c.UnbanCommand) > 0 {
		p.Add("firewall.unban_command", "needs a ban_command too")
	}
	p.Positive("firewall.timeout", c.Timeout)
	s := Settings{Timeout: c.Timeout, UnbanExpired: c.UnbanExpired}
	if len(c.BanCommand) > 0 {
		s.Ban = c.BanCommand
		s.Unban = c.UnbanCommand
	}
	return s
}

// ProxyPorts returns the ports the nftables drop rule guards by default:
// the port of each "host:port" of addrs (listen, tls.implicit_listen) and
// each port range of ranges ([passive] ports, "50000-50099"). Port 0 (a
// kernel-chosen port) and values that do not parse are left out.
func ProxyPorts(addrs []string, ranges ...string) []string {
	var specs, out []string
	for _, a := range addrs {
		if _, port, err := net.SplitHostPort(a); err == nil {
			specs = append(specs, port)
		}
	}
	for _, r := range append(specs, ranges...) {
		if _, err := nftset.ParsePortRange(r); err == nil {
			out = append(out, strings.TrimSpace(r))
		}
	}
	return out
}
