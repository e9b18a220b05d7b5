// Package geo owns the [geo] section: country and ASN rules over
// MaxMind-format databases (GeoLite2/GeoIP2 Country and ASN, or any
// database with the same fields), read with maxminddb-golang. Rules are
// tried in order, the first that matches an address decides: allow (the
// rules after it are skipped), deny (421 at the gate, before the daemon is
// dialed) or a budget of its own (a limiter.Limiter per budget rule, with
// the rule's failures and ban_time). The [limits] allowlist always wins
// (the proxy does not ask about allowlisted addresses, and the budget
// limiters share the allowlist). Lookups are cached per network
// (Result.Prefix), in a bounded cache.
package geo

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftpguard/ftpguard/limiter"
)

// Other is the country label of refusals of addresses whose country no rule
// names (an ASN rule's, or one with no country found).
const Other = "other"

// Geo decides by the country and ASN of an address. Make it with Open;
// safe for concurrent use.
type Geo struct {
	mu      sync.RWMutex
	s       Settings
	country *maxminddb.Reader // nil: none configured
	asn     *maxminddb.Reader
	lims    []*limiter.Limiter // per rule: the budget of a budget rule, else nil
	hook    func(limiter.BanChange)
	cache   cache

	refused atomic.Pointer[refusals]
}

// refusals counts refusals per country label; its label set is fixed when
// the settings are applied (the configured countries and Other), so it
// stays bounded.
type refusals struct {
	labels []string
	n      map[string]*atomic.Uint64
}

func newRefusals(labels []string, old *refusals) *refusals {
	r := &refusals{labels: append(labels, Other), n: make(map[string]*atomic.Uint64)}
	for _, l := range r.labels {
		c := new(atomic.Uint64)
		if old != nil && old.n[l] != nil {
			c.Store(old.n[l].Load()) // a counter never goes back
		}
		r.n[l] = c
	}
	return r
}

// Open opens the databases s names and returns a Geo deciding by s; base
// is the [limits] Config each budget rule's limiter starts from. A missing
// or corrupt database is an error naming the file.
func Open(s Settings, base limiter.Config) (*Geo, error) {
	g := &Geo{}
	if err := g.Reload(s, base); err != nil {
		return nil, err
	}
	return g, nil
}

// openDB opens one database, or returns nil for "".
func openDB(key, path string) (*maxminddb.Reader, error) {
	if path == "" {
		return nil, nil
	}
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("geo: %s %s: %w", key, path, err)
	}
	return r, nil
}

// Reload re-reads the databases and applies s (SIGHUP). If a database
// cannot be read the old ones and the old settings stay in use and the
// error, naming the file, is returned. A budget rule's limiter is kept by
// what the rule matches (its countries and ASNs), wherever the rule moves
// (its bans and budgets survive), and takes the new limits; a rule that
// matches anything new starts afresh.
func (g *Geo) Reload(s Settings, base limiter.Config) error {
	country, err := openDB("country_database", s.CountryDatabase)
	if err != nil {
		return err
	}
	asn, err := openDB("asn_database", s.ASNDatabase)
	if err != nil {
		if country != nil {
			country.Close()
		}
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	// A budget rule keeps its limiter (its counts and bans) across a
	// reload by what it matches, not by its position: rules reordered, or
	// one inserted before it, must not hand its bans to another rule.
	old := map[string]*limiter.Limiter{}
	for i, r := range g.s.rules {
		if i < len(g.lims) && g.lims[i] != nil {
			old[r.matchKey()] = g.lims[i]
		}
	}
	lims := make([]*limiter.Limiter, len(s.rules))
	kept := map[*limiter.Limiter]bool{}
	for i, r := range s.rules {
		if r.action != ActionBudget {
			continue
		}
		cfg := base
		cfg.Failures, cfg.BanTime = r.failures, r.banTime
		cfg.MaxBanTime = max(cfg.MaxBanTime, r.banTime, limiter.DefaultMaxBanTime)
		if l := old[r.matchKey()]; l != nil && !kept[l] {
			if err := l.Reload(cfg); err != nil {
				return fmt.Errorf("geo: %s: %w", r.name, err)
			}
			lims[i], kept[l] = l, true
			continue
		}
		l, err := limiter.New(cfg, nil)
		if err != nil {
			return fmt.Errorf("geo: %s: %w", r.name, err)
		}
		if g.hook != nil {
			l.SetBanHook(g.hook)
		}
		lims[i] = l
	}
	for _, l := range g.lims {
		if l != nil && !kept[l] {
			l.Close()
		}
	}
	if g.country != nil {
		g.country.Close()
	}
	if g.asn != nil {
		g.asn.Close()
	}
	g.s, g.country, g.asn, g.lims = s, country, asn, lims
	g.cache.reset(s.CacheSize)
	g.refused.Store(newRefusals(s.countries(), g.refused.Load()))
	return nil
}

// SetBanHook makes fn receive the ban changes of every budget rule's
// limiter (limiter.SetBanHook), now and after each Reload.
func (g *Geo) SetBanHook(fn func(limiter.BanChange)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hook = fn
	for _, l := range g.lims {
		if l != nil {
			l.SetBanHook(fn)
		}
	}
}

// Close closes the databases and the budget limiters.
func (g *Geo) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	for _, r := range []*maxminddb.Reader{g.country, g.asn} {
		if r != nil {
			errs = append(errs, r.Close())
		}
	}
	for _, l := range g.lims {
		if l != nil {
			l.Close()
		}
	}
	g.country, g.asn, g.lims = nil, nil, nil
	return errors.Join(errs...)
}

// Info is what the databases say of an address.
type Info struct {
	Country string // ISO 3166-1 alpha-2, "" if unknown
	ASN     uint32 // 0 if unknown
}

type countryRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
}

type asnRecord struct {
	ASN uint32 `maxminddb:"autonomous_system_number"`
}

// Lookup returns what the databases say of addr (IPv4-mapped addresses
// are looked up as IPv4), from the cache when a lookup of its network was
// made before.
func (g *Geo) Lookup(addr netip.Addr) Info {
	addr = addr.Unmap()
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.lookupRLocked(addr)
}

func (g *Geo) lookupRLocked(addr netip.Addr) Info {
	if info, ok := g.cache.get(addr); ok {
		return info
	}
	var info Info
	net := netip.PrefixFrom(addr, addr.BitLen())
	narrow := func(p netip.Prefix) {
		if p.IsValid() && p.Bits() < net.Bits() {
			net = p.Masked()
		}
	}
	widest := netip.Prefix{}
	if g.country != nil {
		var rec countryRecord
		res := g.country.Lookup(addr)
		if res.Decode(&rec) == nil {
			info.Country = rec.Country.ISOCode
		}
		widest = res.Prefix()
	}
	if g.asn != nil {
		var rec asnRecord
		res := g.asn.Lookup(addr)
		if res.Decode(&rec) == nil {
			info.ASN = rec.ASN
		}
		// The network both answers hold for is the narrower of the two.
		if p := res.Prefix(); !widest.IsValid() || p.IsValid() && p.Bits() > widest.Bits() {
			widest = p
		}
	}
	narrow(widest)
	g.cache.put(net, info)
	return info
}

// match returns the index of the first rule matching info, or -1.
func (s *Settings) match(info Info) int {
	for i, r := range s.rules {
		if info.Country != "" && r.countries[info.Country] || info.ASN != 0 && r.asns[info.ASN] {
			return i
		}
	}
	return -1
}

// Gate is the proxy's gate hook (proxy.Server.SetGate), asked for every
// connection that is not allowlisted (and again before each login command
// of an open session, and for the open sessions after a reload): it
// refuses an address whose first matching rule is deny, or a budget rule
// whose limiter has banned it, and counts the refusal under the address's
// country.
func (g *Geo) Gate(addr netip.Addr) (refuse bool, reason string) {
	return g.gate(addr, true)
}

// Peek is Gate without counting the refusal: for a question that refuses
// nobody (which open sessions the config in force refuses, asked before a
// reload to tell the ones it newly refuses).
func (g *Geo) Peek(addr netip.Addr) (refuse bool, reason string) {
	return g.gate(addr, false)
}

// gate is Gate, counting the refusal only with count.
func (g *Geo) gate(addr netip.Addr, count bool) (refuse bool, reason string) {
	g.mu.RLock()
	if len(g.s.rules) == 0 {
		g.mu.RUnlock()
		return false, ""
	}
	info := g.lookupRLocked(addr.Unmap())
	i := g.s.match(info)
	if i < 0 {
		g.mu.RUnlock()
		return false, ""
	}
	r, l := g.s.rules[i], g.lims[i]
	g.mu.RUnlock()
	switch {
	case r.action == ActionDeny:
		reason = r.name
	case r.action == ActionBudget && !l.Check(time.Now(), addr).Allowed:
		reason = r.name + ": banned"
	default:
		return false, ""
	}
	if !count {
		return true, reason
	}
	rs := g.refused.Load()
	c := rs.n[info.Country]
	if c == nil {
		c = rs.n[Other]
	}
	c.Add(1)
	return true, reason
}

// LimiterFor returns the limiter of the budget rule that decides addr, or
// nil when it is the [limits] budget's (no rule, or allow or deny).
func (g *Geo) LimiterFor(addr netip.Addr) *limiter.Limiter {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if len(g.s.rules) == 0 {
		return nil
	}
	if i := g.s.match(g.lookupRLocked(addr.Unmap())); i >= 0 {
		return g.lims[i]
	}
	return nil
}

// Bans returns the bans in force at now of the budget rules' limiters,
// each with its Reason prefixed by the rule ("geo rule 3 (budget XC):
// budget"), sorted by Until; for the admin API's bans list. These bans
// are per instance and in memory: a restart, or a reload that drops their
// rule, forgets them.
func (g *Geo) Bans(now time.Time) []limiter.Ban {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []limiter.Ban
	for i, l := range g.lims {
		if l == nil {
			continue
		}
		for _, b := range l.Bans(now) {
			b.Reason = "geo " + g.s.rules[i].name + ": " + b.Reason
			out = append(out, b)
		}
	}
	slices.SortStableFunc(out, func(x, y limiter.Ban) int { return x.Until.Compare(y.Until) })
	return out
}

// Unban lifts the ban of key (and forgets its escalation) in every budget
// rule's limiter, and reports whether one was lifted.
func (g *Geo) Unban(key netip.Prefix) bool {
	g.mu.RLock()
	lims := slices.Clone(g.lims)
	g.mu.RUnlock()
	lifted := false
	for _, l := range lims {
		if l == nil {
			continue
		}
		if ok, _ := l.Unban(key); ok { // a memory store: no store error
			lifted = true
		}
	}
	return lifted
}

// Refusals returns the refusals so far per country label.
func (g *Geo) Refusals() map[string]uint64 {
	rs := g.refused.Load()
	out := make(map[string]uint64, len(rs.n))
	for l, c := range rs.n {
		out[l] = c.Load()
	}
	return out
}

var descRefusals = prometheus.NewDesc("ftpguard_geo_refusals_total",
	"Refusals by a [geo] rule (deny, or a budget rule's ban): connections at the gate, open sessions' login commands, and sessions a reload ends; by country (the countries the rules name, else \"other\").",
	[]string{"country"}, nil)

// Describe implements prometheus.Collector.
func (g *Geo) Describe(ch chan<- *prometheus.Desc) { ch <- descRefusals }

// Collect implements prometheus.Collector.
func (g *Geo) Collect(ch chan<- prometheus.Metric) {
	rs := g.refused.Load()
	for _, l := range rs.labels {
		ch <- prometheus.MustNewConstMetric(descRefusals, prometheus.CounterValue, float64(rs.n[l].Load()), l)
	}
}

// cache holds lookups per network, at most size; when full it starts
// afresh (bounded, and a full cache is rare: one entry per network seen).
type cache struct {
	mu   sync.Mutex
	size int
	m    map[netip.Prefix]Info
	bits [2][129]int // entries per family and prefix length
}

func (c *cache) reset(size int) {
	c.mu.Lock()
	c.size, c.m, c.bits = max(size, 1), make(map[netip.Prefix]Info), [2][129]int{}
	c.mu.Unlock()
}

func fam(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func (c *cache) get(a netip.Addr) (Info, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := fam(a)
	for b := a.BitLen(); b >= 0; b-- {
		if c.bits[f][b] == 0 {
			continue
		}
		p, _ := a.Prefix(b)
		if info, ok := c.m[p]; ok {
			return info, true
		}
	}
	return Info{}, false
}

func (c *cache) put(p netip.Prefix, info Info) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= c.size {
		c.m, c.bits = make(map[netip.Prefix]Info), [2][129]int{}
	}
	if _, ok := c.m[p]; !ok {
		c.bits[fam(p.Addr())][p.Bits()]++
	}
	c.m[p] = info
}
