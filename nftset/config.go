package nftset

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// Section is the config file section whose keys Config holds; problems are
// reported as "firewall.table" and so on.
const Section = "firewall"

// DefaultTable is the name of the inet table a Set owns unless configured.
const DefaultTable = "ftpguard"

// Config is this backend's part of the [firewall] section. Start from
// DefaultConfig, decode the file over it, then Validate.
type Config struct {
	// Table is the name of the inet table the Set owns (creates, replaces,
	// and with RemoveOnExit deletes); no other table is touched.
	Table string `toml:"table"`
	// DropRule adds a chain that drops new TCP connections from banned
	// addresses to Ports. Without it only the sets are kept, for rules of
	// the admin's own to reference (@banned4, @banned6).
	DropRule bool `toml:"drop_rule"`
	// Ports are the destination ports the drop rule guards: single ports
	// ("21") or ranges ("50000-50099"). Required with DropRule (the
	// caller may fill them from listen and passive.ports before Validate).
	Ports []string `toml:"ports"`
	// RemoveOnExit deletes the table on Close. Off by default: the bans
	// stay in force across a restart until the new process re-syncs.
	RemoveOnExit bool `toml:"remove_on_exit"`
}

// DefaultConfig returns the defaults: table "ftpguard", drop_rule on, no
// ports (they must be given or derived), remove_on_exit off.
func DefaultConfig() Config {
	return Config{Table: DefaultTable, DropRule: true}
}

// tableName is what nft accepts unquoted as a table name (and a bit
// stricter): a letter, then letters, digits, '_', '-' or '.'.
var tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)

// Validate records the problems of c in p, with keys "firewall.…".
func (c *Config) Validate(p *conf.Problems) {
	if !tableName.MatchString(c.Table) {
		p.Add(Section+".table", "must be a letter then up to 63 letters, digits, '_', '-' or '.', got %q", c.Table)
	}
	for _, v := range c.Ports {
		if _, err := ParsePortRange(v); err != nil {
			p.Add(Section+".ports", "%v", err)
		}
	}
	if c.DropRule && len(c.Ports) == 0 {
		p.Add(Section+".ports", "must list at least one port or range such as \"21\" or \"50000-50099\" when drop_rule is true")
	}
}

// err returns the problems of c as one error, or nil.
func (c *Config) err() error {
	var p conf.Problems
	c.Validate(&p)
	if p.OK() {
		return nil
	}
	msgs := make([]string, len(p.List))
	for i, q := range p.List {
		msgs[i] = q.Error()
	}
	return fmt.Errorf("nftset: bad config: %s", strings.Join(msgs, "; "))
}

// PortRange is an inclusive range of TCP ports; a single port has Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

// String formats r as "21" or "50000-50099".
func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// ParsePortRange parses "21" or "50000-50099" (ports 1–65535, low ≤ high).
func ParsePortRange(v string) (PortRange, error) {
	s := strings.TrimSpace(v)
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := parsePort(lo)
	h, err2 := parsePort(hi)
	if err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("%q is not a port or range such as \"21\" or \"50000-50099\" (ports 1–65535)", v)
	}
	if l > h {
		return PortRange{}, fmt.Errorf("%q: the range's low port is above its high port", v)
	}
	return PortRange{l, h}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint16(n), nil
}

// portRanges parses c.Ports, sorted and with overlapping or adjacent
// ranges merged (the ports set is an interval set, which rejects overlaps).
func (c *Config) portRanges() ([]PortRange, error) {
	var rs []PortRange
	for _, v := range c.Ports {
		r, err := ParsePortRange(v)
		if err != nil {
			return nil, fmt.Errorf("nftset: %w", err)
		}
		rs = append(rs, r)
	}
	return mergePorts(rs), nil
}

// mergePorts sorts rs and merges overlapping and adjacent ranges.
func mergePorts(rs []PortRange) []PortRange {
	rs = append([]PortRange(nil), rs...)
	slices.SortFunc(rs, func(a, b PortRange) int { return int(a.Lo) - int(b.Lo) })
	var out []PortRange
	for _, r := range rs {
		if n := len(out); n > 0 && uint32(r.Lo) <= uint32(out[n-1].Hi)+1 {
			if r.Hi > out[n-1].Hi {
				out[n-1].Hi = r.Hi
			}
			continue
		}
		out = append(out, r)
	}
	return out
}
