package geo

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// Actions a rule takes for the addresses it matches.
const (
	ActionAllow  = "allow"  // skip the rules after it: the [limits] budget applies
	ActionDeny   = "deny"   // 421 at the gate, before the daemon is dialed
	ActionBudget = "budget" // a budget of its own (failures, ban_time)
)

// maxRules and maxListed bound the rules and each rule's lists.
const (
	maxRules  = 64
	maxListed = 1000
)

// DefaultCacheSize is Config.CacheSize's default.
const DefaultCacheSize = 10000

// Config is the [geo] table of the config file. Its zero value is the
// default: no database, no rule.
type Config struct {
	CountryDatabase string       `toml:"country_database"`
	ASNDatabase     string       `toml:"asn_database"`
	CacheSize       int          `toml:"cache_size"`
	Rules           []RuleConfig `toml:"rule"`
}

// RuleConfig is one [[geo.rule]] table.
type RuleConfig struct {
	Action    string        `toml:"action"`
	Countries []string      `toml:"countries"`
	ASNs      []int64       `toml:"asns"`
	Failures  int           `toml:"failures"` // budget: failed logins before a ban
	BanTime   time.Duration `toml:"ban_time"` // budget: the first ban's length
}

// DefaultConfig returns the [geo] settings of a file without the table.
func DefaultConfig() Config { return Config{CacheSize: DefaultCacheSize} }

// Settings is a validated [geo] table.
type Settings struct {
	Config
	rules []rule
}

// Enabled reports whether any rule is configured.
func (s Settings) Enabled() bool { return len(s.rules) > 0 }

// rule is a validated RuleConfig.
type rule struct {
	action    string
	countries map[string]bool
	asns      map[uint32]bool
	failures  int
	banTime   time.Duration
	name      string // for logs: "rule 2 (deny XA, AS64496)"
}

// matchKey says what r matches, whatever its position: its action, its
// countries and its ASNs, sorted.
func (r rule) matchKey() string {
	cs := slices.Sorted(maps.Keys(r.countries))
	as := slices.Sorted(maps.Keys(r.asns))
	return fmt.Sprint(r.action, cs, as)
}

// Settings validates c, adding each bad key to p once ("geo.rule",
// "geo.country_database", …), and returns the Settings it gives.
func (c Config) Settings(p *conf.Problems) Settings {
	s := Settings{Config: c}
	p.AtLeast("geo.cache_size", c.CacheSize, 1)
	if len(c.Rules) > maxRules {
		p.Add("geo.rule", "at most %d rules, got %d", maxRules, len(c.Rules))
		return s
	}
	for i, rc := range c.Rules {
		n := i + 1
		r := rule{action: rc.Action, failures: rc.Failures, banTime: rc.BanTime,
			countries: make(map[string]bool), asns: make(map[uint32]bool)}
		switch rc.Action {
		case ActionAllow, ActionDeny, ActionBudget:
		default:
			p.Add("geo.rule", "rule %d: action must be \"allow\", \"deny\" or \"budget\", got %q", n, rc.Action)
			continue
		}
		if len(rc.Countries) == 0 && len(rc.ASNs) == 0 {
			p.Add("geo.rule", "rule %d: give countries, asns or both", n)
			continue
		}
		if len(rc.Countries) > maxListed || len(rc.ASNs) > maxListed {
			p.Add("geo.rule", "rule %d: at most %d countries and %d asns", n, maxListed, maxListed)
			continue
		}
		bad := false
		for _, cc := range rc.Countries {
			if len(cc) != 2 || strings.ToUpper(cc) != cc || cc[0] < 'A' || cc[0] > 'Z' || cc[1] < 'A' || cc[1] > 'Z' {
				p.Add("geo.rule", "rule %d: country %q is not an ISO 3166-1 alpha-2 code in capitals (e.g. \"DE\")", n, cc)
				bad = true
				break
			}
			r.countries[cc] = true
		}
		for _, a := range rc.ASNs {
			if a < 1 || a > 4294967295 {
				p.Add("geo.rule", "rule %d: asn %d is not in 1..4294967295", n, a)
				bad = true
				break
			}
			r.asns[uint32(a)] = true
		}
		if bad {
			continue
		}
		if len(rc.Countries) > 0 && c.CountryDatabase == "" {
			p.Add("geo.country_database", "rule %d matches countries: a country database is needed", n)
		}
		if len(rc.ASNs) > 0 && c.ASNDatabase == "" {
			p.Add("geo.asn_database", "rule %d matches asns: an ASN database is needed", n)
		}
		if rc.Action == ActionBudget {
			if rc.Failures < 1 {
				p.Add("geo.rule", "rule %d: a budget rule needs failures ≥ 1, got %d", n, rc.Failures)
				continue
			}
			if rc.BanTime <= 0 {
				p.Add("geo.rule", "rule %d: a budget rule needs a positive ban_time such as \"24h\", got %v", n, rc.BanTime)
				continue
			}
		} else if rc.Failures != 0 || rc.BanTime != 0 {
			p.Add("geo.rule", "rule %d: failures and ban_time are for action = \"budget\" only", n)
			continue
		}
		var what []string
		what = append(what, rc.Countries...)
		for _, a := range rc.ASNs {
			what = append(what, fmt.Sprintf("AS%d", a))
		}
		r.name = fmt.Sprintf("rule %d (%s %s)", n, rc.Action, strings.Join(what, ", "))
		s.rules = append(s.rules, r)
	}
	return s
}

// countries returns the countries the rules name, sorted: the label values
// of the refusals per country (with "other").
func (s Settings) countries() []string {
	var out []string
	for _, r := range s.rules {
		for c := range r.countries {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	slices.Sort(out)
	return out
}
