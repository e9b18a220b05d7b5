package firewall

import (
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// Config is the [firewall] table of the config file: commands run on each
// ban and unban, to push bans into the kernel's firewall.
type Config struct {
	BanCommand   []string      `toml:"ban_command"`
	UnbanCommand []string      `toml:"unban_command"`
	Timeout      time.Duration `toml:"timeout"`
	// UnbanExpired runs unban_command also when a ban runs out, not only
	// when it is lifted.
	UnbanExpired bool `toml:"unban_expired"`
}

// DefaultConfig returns the [firewall] settings of a file that leaves the
// table out: no commands, a 5s timeout, unban_expired on.
func DefaultConfig() Config {
	return Config{BanCommand: []string{}, UnbanCommand: []string{}, Timeout: 5 * time.Second, UnbanExpired: true}
}

// Settings are the validated [firewall] settings a Runner runs with.
type Settings struct {
	Ban, Unban   []string // argv with placeholders; Ban nil = off
	Timeout      time.Duration
	UnbanExpired bool // run Unban when a ban runs out too
}

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
