package crowdsec

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// Source is the name under which ftpguard lists the bans it learns from
// CrowdSec (bans list, metrics labels).
const Source = "crowdsec"

// DefaultPollInterval is the poll interval when BouncerConfig.Interval is 0.
const DefaultPollInterval = 10 * time.Second

// Decision is a ban from the LAPI that the Bouncer enforces.
type Decision struct {
	ID int64 // the LAPI's decision id
	// Prefix is the banned network: a single address as a /32 or /128
	// (scope Ip), or a range kept as it is (scope Range). IPv4-mapped IPv6
	// values are read as IPv4.
	Prefix   netip.Prefix
	Scope    string    // as the LAPI spells it: "Ip", "Range"
	Origin   string    // "cscli", "crowdsec", "CAPI", "lists", …
	Scenario string    // why, e.g. "crowdsecurity/ssh-bf" or a cscli reason
	Until    time.Time // the ban applies while now < Until
}

// BouncerConfig holds a Bouncer's settings. The zero value polls every
// DefaultPollInterval for bans of scopes ip and range of any origin.
type BouncerConfig struct {
	// Interval between two polls of the decision stream.
	Interval time.Duration
	// Scopes to enforce, case-insensitive: "ip", "range" (nil: both).
	// Decisions of other scopes are ignored and counted.
	Scopes []string
	// Origins to enforce, case-insensitive (nil: all).
	Origins []string
	// Logger gets a line when polls start failing and when they recover
	// (nil: no log).
	Logger *slog.Logger
}

// BouncerStats are a Bouncer's counters, for metrics.
type BouncerStats struct {
	Decisions   int       // bans in the table the gate reads (expired ones go at the next poll)
	Ignored     uint64    // decisions received but not enforced: not a ban, scope or origin not wanted, bad value or duration
	PollsOK     uint64    // polls answered and applied
	PollsFailed uint64    // polls that failed (the table was kept)
	LastError   error     // the error of the latest failed poll, nil if none yet
	LastErrorAt time.Time // when it happened
	LastOK      time.Time // the latest successful poll, zero if none yet
}

// Bouncer keeps the LAPI's ban decisions in a table the gate asks on every
// connection (Lookup). Run polls the decision stream: a startup poll first
// (all decisions in force), then the changes since the previous poll.
//
// Make one with NewBouncer. Lookup, List and Stats are safe for concurrent
// use with each other and with Run or Poll; Lookup takes no lock (it reads
// an immutable snapshot through an atomic pointer). A zero Bouncer has no
// decisions and cannot poll.
type Bouncer struct {
	c      *Client
	cfg    BouncerConfig
	scopes map[string]bool // lower-case
	now    func() time.Time

	snap atomic.Pointer[snapshot]
	hook atomic.Pointer[func([]Decision)] // SetHook; nil: none

	pollMu  sync.Mutex // serialises polls; guards the fields up to statsMu
	table   map[tableKey]Decision
	synced  bool // the table holds a startup answer and every delta since
	failing bool // the latest poll failed (for logging the change only)

	statsMu sync.Mutex // guards stats; never held across a request
	stats   BouncerStats
}

// tableKey identifies a decision for deletion: the LAPI's id, and the
// network in case a LAPI sends no ids.
type tableKey struct {
	id int64
	p  netip.Prefix
}

// NewBouncer returns a Bouncer that polls the LAPI through c (which needs
// URL and APIKey).
func NewBouncer(c *Client, cfg BouncerConfig) *Bouncer {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultPollInterval
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{"ip", "range"}
	}
	b := &Bouncer{c: c, cfg: cfg, scopes: map[string]bool{}, now: time.Now, table: map[tableKey]Decision{}}
	for _, s := range cfg.Scopes {
		b.scopes[strings.ToLower(s)] = true
	}
	return b
}

// Run polls the LAPI at once and then every Interval until ctx ends. A
// failed poll keeps the decisions the Bouncer has (they still expire on
// time), is counted in Stats, and is tried again at the next interval, as a
// startup poll: the LAPI may have marked changes as sent that were never
// read.
func (b *Bouncer) Run(ctx context.Context) {
	t := time.NewTicker(b.cfg.Interval)
	defer t.Stop()
	for {
		_ = b.Poll(ctx) // counted and logged by Poll
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll asks the LAPI once (a startup poll until one has succeeded, and after
// any failure; changes otherwise) and applies the answer. Run calls it; it is
// exported for tests and for a manual refresh.
func (b *Bouncer) Poll(ctx context.Context) error {
	b.pollMu.Lock()
	defer b.pollMu.Unlock()
	startup := !b.synced
	s, err := b.c.DecisionStream(ctx, startup, b.cfg.Scopes, b.cfg.Origins)
	now := b.now()
	if err != nil && ctx.Err() != nil {
		return err // shutting down: not a failure of the LAPI
	}
	if err != nil {
		if b.cfg.Logger != nil && !b.failing {
			b.cfg.Logger.Warn("crowdsec: decision stream poll failed; keeping the decisions held", "err", err, "decisions", len(b.table))
		}
		b.synced, b.failing = false, true
		b.statsMu.Lock()
		b.stats.PollsFailed++
		b.stats.LastError, b.stats.LastErrorAt = err, now
		b.statsMu.Unlock()
		return err
	}
	if b.cfg.Logger != nil && b.failing {
		b.cfg.Logger.Info("crowdsec: decision stream poll works again", "new", len(s.New), "deleted", len(s.Deleted))
	}
	fresh, ignored, changed := b.applyLocked(s, startup, now)
	b.synced, b.failing = true, false
	if changed || b.snap.Load() == nil {
		b.publishLocked()
	}
	b.statsMu.Lock()
	b.stats.PollsOK++
	b.stats.LastOK = now
	b.stats.Ignored += ignored
	b.stats.Decisions = b.snap.Load().n
	b.statsMu.Unlock()
	if fn := b.hook.Load(); fn != nil && len(fresh) > 0 {
		(*fn)(fresh)
	}
	return nil
}

// SetHook makes fn receive, after each poll, the ban decisions that poll
// made the Bouncer enforce (already in the table Lookup reads): new ones,
// not the deletions, nor decisions it held already — a startup poll after
// a failed one reports only those it did not hold before; the very first
// poll reports every decision in force. Ignored decisions (scope, origin,
// type) and ones already expired are not reported. fn is called on the
// polling goroutine with the poll's lock held: it must be fast, must not
// block and must not call Poll. nil removes the hook. Safe for concurrent
// use.
func (b *Bouncer) SetHook(fn func(fresh []Decision)) {
	if fn == nil {
		b.hook.Store(nil)
		return
	}
	b.hook.Store(&fn)
}

// applyLocked applies one stream answer received at now. It returns the
// decisions it added that the table did not hold before (fresh), how many
// new decisions it ignored and whether the table changed.
func (b *Bouncer) applyLocked(s *Stream, startup bool, now time.Time) (fresh []Decision, ignored uint64, changed bool) {
	known := b.table // before a startup answer: what the Bouncer held
	if startup {
		changed = len(b.table) > 0
		b.table = make(map[tableKey]Decision, len(s.New))
	}
	for _, r := range s.Deleted {
		p, ok := b.prefix(r)
		if !ok {
			continue
		}
		k := tableKey{r.ID, p}
		if _, ok := b.table[k]; ok {
			delete(b.table, k)
			changed = true
		}
	}
	for _, r := range s.New {
		d, ok := b.decision(r, now)
		if !ok {
			ignored++
			continue
		}
		if !now.Before(d.Until) {
			continue // already expired: nothing to enforce, not an error
		}
		k := tableKey{d.ID, d.Prefix}
		_, held := known[k]
		if _, dup := b.table[k]; !held && !dup {
			fresh = append(fresh, d)
		}
		b.table[k] = d
		changed = true
	}
	for k, d := range b.table {
		if !now.Before(d.Until) {
			delete(b.table, k)
			changed = true
		}
	}
	return fresh, ignored, changed
}

// prefix reads the network of r if its scope is one the Bouncer enforces.
func (b *Bouncer) prefix(r RawDecision) (netip.Prefix, bool) {
	scope := strings.ToLower(r.Scope)
	if !b.scopes[scope] {
		return netip.Prefix{}, false
	}
	v := strings.TrimSpace(r.Value)
	switch scope {
	case "ip":
		if strings.Contains(v, "/") {
			return netip.Prefix{}, false
		}
	case "range":
	default:
		return netip.Prefix{}, false // a scope asked for that the Bouncer cannot enforce
	}
	p, err := conf.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, false
	}
	return p, true
}

// decision turns r, received at now, into a Decision, or reports that the
// Bouncer does not enforce it.
func (b *Bouncer) decision(r RawDecision, now time.Time) (Decision, bool) {
	if !strings.EqualFold(r.Type, "ban") {
		return Decision{}, false
	}
	if len(b.cfg.Origins) > 0 && !slices.ContainsFunc(b.cfg.Origins, func(o string) bool { return strings.EqualFold(o, r.Origin) }) {
		return Decision{}, false
	}
	p, ok := b.prefix(r)
	if !ok {
		return Decision{}, false
	}
	dur, err := ParseDuration(r.Duration)
	if err != nil {
		return Decision{}, false
	}
	return Decision{
		ID: r.ID, Prefix: p, Scope: r.Scope, Origin: r.Origin, Scenario: r.Scenario,
		Until: addSat(now, dur),
	}, true
}

// addSat returns t+d, saturating instead of wrapping around.
func addSat(t time.Time, d time.Duration) time.Time {
	u := t.Add(d)
	if d > 0 && u.Before(t) {
		return time.Unix(1<<62, 0)
	}
	return u
}

// publishLocked builds a snapshot of the table and makes it the one Lookup
// reads.
func (b *Bouncer) publishLocked() {
	s := &snapshot{addrs: map[netip.Addr]Decision{}, nets: map[netip.Prefix]Decision{}}
	has4, has6 := map[int]bool{}, map[int]bool{}
	for _, d := range b.table {
		p := d.Prefix
		if p.IsSingleIP() {
			if o, ok := s.addrs[p.Addr()]; !ok || d.Until.After(o.Until) {
				s.addrs[p.Addr()] = d
			}
			continue
		}
		if o, ok := s.nets[p]; !ok || d.Until.After(o.Until) {
			s.nets[p] = d
		}
		if p.Addr().Is4() {
			has4[p.Bits()] = true
		} else {
			has6[p.Bits()] = true
		}
	}
	s.bits4 = lengths(has4)
	s.bits6 = lengths(has6)
	s.n = len(s.addrs) + len(s.nets)
	b.snap.Store(s)
}

// lengths returns the keys of m, longest first.
func lengths(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	slices.Reverse(out)
	return out
}

// snapshot is an immutable copy of the table, read without locks. Single
// addresses are one map lookup; ranges one map lookup per prefix length
// present (a handful in practice).
type snapshot struct {
	addrs        map[netip.Addr]Decision   // single addresses, the longest decision of each
	nets         map[netip.Prefix]Decision // masked ranges, the longest decision of each
	bits4, bits6 []int                     // range lengths present, longest first
	n            int
}

// Lookup reports the ban in force at now for addr, if any (the most
// specific: an address's own ban before a range's). IPv4-mapped IPv6
// addresses are looked up as IPv4; zones are ignored. It takes no lock and
// does not allocate.
func (b *Bouncer) Lookup(addr netip.Addr, now time.Time) (Decision, bool) {
	s := b.snap.Load()
	if s == nil || !addr.IsValid() {
		return Decision{}, false
	}
	addr = addr.Unmap().WithZone("")
	if d, ok := s.addrs[addr]; ok && now.Before(d.Until) {
		return d, true
	}
	bits := s.bits6
	if addr.Is4() {
		bits = s.bits4
	}
	for _, n := range bits {
		p, err := addr.Prefix(n)
		if err != nil {
			continue
		}
		if d, ok := s.nets[p]; ok && now.Before(d.Until) {
			return d, true
		}
	}
	return Decision{}, false
}

// List returns the bans in force at now, for the "bans list" command (as
// Source): sorted by address (IPv4 first), a longer prefix before a shorter
// one at the same address.
func (b *Bouncer) List(now time.Time) []Decision {
	s := b.snap.Load()
	if s == nil {
		return nil
	}
	out := make([]Decision, 0, s.n)
	for _, d := range s.addrs {
		if now.Before(d.Until) {
			out = append(out, d)
		}
	}
	for _, d := range s.nets {
		if now.Before(d.Until) {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(x, y Decision) int {
		if c := x.Prefix.Addr().Compare(y.Prefix.Addr()); c != 0 {
			return c
		}
		return y.Prefix.Bits() - x.Prefix.Bits()
	})
	return out
}

// Stats returns the Bouncer's counters.
func (b *Bouncer) Stats() BouncerStats {
	b.statsMu.Lock()
	defer b.statsMu.Unlock()
	return b.stats
}
