// Package nftset keeps ftpguard's bans in the kernel's nftables, over
// netlink (github.com/google/nftables), with no nft process per ban.
//
// A Set owns one table, "table inet <name>" (default "ftpguard"), and
// nothing else: it never flushes the ruleset nor touches another table.
// The table holds two sets of banned addresses,
//
//	set banned4 { type ipv4_addr; flags interval, timeout; }
//	set banned6 { type ipv6_addr; flags interval, timeout; }
//
// whose elements are address ranges (a /24 ban is one interval, a single
// address too) carrying the ban's remaining time as their timeout, so the
// kernel lifts a ban on time even if ftpguard is gone. With drop_rule the
// table also holds a set "ports" (inet_service, interval) and
//
//	chain input {
//		type filter hook input priority -10; policy accept;
//		meta l4proto tcp tcp dport @ports ct state new ip saddr @banned4 counter drop
//		meta l4proto tcp tcp dport @ports ct state new ip6 saddr @banned6 counter drop
//	}
//
// Priority -10 runs after conntrack (-200, so ct state is known) and before
// the usual filter chains (0); since a drop in any base chain is final, an
// accept in the admin's own tables cannot re-admit a banned address. Only
// new connections are dropped: sessions already open (and their data
// connections' established flows) go on, as the proxy itself ends them.
//
// Without drop_rule only the sets are kept, for rules of the admin's own.
// A rule can only reference a set of its own table, so such rules go in
// chains the admin adds to this table (say, from an nft -f file applied
// after ftpguard starts): Sync flushes and refills the sets, the ports set
// and the input chain, in one transaction, and keeps every other chain.
// Only when the table has objects of another layout under these names does
// Sync delete and re-create the whole table (also in one transaction).
package nftset

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpguard/ftpguard/limiter"
)

// Names of the objects in the table.
const (
	SetBanned4 = "banned4"
	SetBanned6 = "banned6"
	SetPorts   = "ports"
	Chain      = "input"
	// ChainPriority is the drop chain's priority on the input hook.
	ChainPriority = -10
)

// maxTimeout bounds an element's timeout: a ban that ends later (or never)
// is kept for this long, then lifted by the kernel unless re-synced.
const maxTimeout = 10 * 365 * 24 * time.Hour

// elemsPerMsg bounds the elements put in one netlink message (a big Sync
// is split; the batch stays one transaction).
const elemsPerMsg = 1024

// ErrClosed is returned by the methods of a closed Set.
var ErrClosed = errors.New("nftset: closed")

// Set keeps the bans in force in its nftables table. Create it with Open;
// the zero value is not usable. Safe for concurrent use: one mutex
// serializes the netlink conversations and the Set's own state.
//
// Open, Sync, Add, Remove (and Close with remove_on_exit) do a netlink
// round trip with the kernel (about a millisecond; tens of milliseconds
// for a Sync of thousands of bans or on a busy machine):
// call them from a goroutine of the caller's own (such as the firewall
// queue), never while holding a lock of the caller's (the limiter's, a
// session's), so a slow kernel never holds up the proxy.
type Set struct {
	cfg   Config
	ports []PortRange

	mu     sync.Mutex
	closed bool
	// want is every ban in force: masked prefix → end. Bans may nest.
	want map[netip.Prefix]time.Time
	// have is what the sets hold, per family (0: banned4, 1: banned6):
	// disjoint ranges → end, as spans made them from want. nil: unknown
	// (the next change rewrites the table).
	have [2]map[rangeKey]time.Time
	// rewrites counts the table rewrites (for tests: a change that had to
	// fall back to one).
	rewrites int
}

// rangeKey is an element of banned4 or banned6: an inclusive range.
type rangeKey struct{ lo, hi netip.Addr }

// Open validates cfg and makes sure the table exists: it is created (with
// empty sets) when missing and left as it is when present, so the bans a
// previous process pushed stay in force until Sync replaces the table with
// the bans of the store. Sync should follow Open.
func Open(cfg Config) (*Set, error) {
	if err := cfg.err(); err != nil {
		return nil, err
	}
	ports, err := cfg.portRanges()
	if err != nil {
		return nil, err
	}
	s := &Set{cfg: cfg, ports: ports, want: make(map[netip.Prefix]time.Time)}
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftset: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == cfg.Table {
			return s, nil // have stays unknown: the first change rewrites
		}
	}
	if err := s.rewriteLocked(time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

// Table returns the name of the table s owns.
func (s *Set) Table() string { return s.cfg.Table }

// Sync replaces the table, in one transaction, with one holding the bans
// of bans that are in force at now (and the drop chain), so a restart or a
// resync never leaves a moment without the bans. Bans of the same key keep
// the latest end.
func (s *Set) Sync(bans []limiter.Ban, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	want := make(map[netip.Prefix]time.Time, len(bans))
	for _, b := range bans {
		p, ok := normalize(b.Key)
		if !ok || !b.Until.After(now) {
			continue
		}
		if u, dup := want[p]; !dup || b.Until.After(u) {
			want[p] = b.Until
		}
	}
	s.want = want
	return s.rewriteLocked(now)
}

// Add bans key until until: its addresses' elements get until−now as
// their timeout, replacing an earlier ban of the same key (longer or
// shorter). An until not after now lifts key's ban. Bans may nest: a /24
// added over a banned /32 (or the other way round) is stored as disjoint
// ranges, each address banned until the latest end covering it.
func (s *Set) Add(key netip.Prefix, until, now time.Time) error {
	p, ok := normalize(key)
	if !ok {
		return fmt.Errorf("nftset: add: invalid prefix %v", key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if until.After(now) {
		s.want[p] = until
	} else {
		delete(s.want, p)
	}
	return s.applyLocked(s.regionLocked(p), now)
}

// Remove lifts the ban of key (a ban of a wider or narrower prefix stays
// in force; the ranges they share are re-added with timeouts from now).
// Removing a key that is not banned does nothing.
func (s *Set) Remove(key netip.Prefix, now time.Time) error {
	p, ok := normalize(key)
	if !ok {
		return fmt.Errorf("nftset: remove: invalid prefix %v", key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, banned := s.want[p]; !banned {
		return nil
	}
	region := s.regionLocked(p)
	delete(s.want, p)
	return s.applyLocked(region, now)
}

// Close ends s: with remove_on_exit the table is deleted, otherwise it is
// left in the kernel (bans keep applying, each until its timeout, until
// the next process re-syncs). Close is idempotent; later calls of the
// other methods return ErrClosed.
func (s *Set) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.cfg.RemoveOnExit {
		return nil
	}
	c, err := s.conn()
	if err != nil {
		return err
	}
	t := s.table()
	c.AddTable(t) // so the delete cannot fail for a table already gone
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftset: delete table inet %s: %w", s.cfg.Table, err)
	}
	return nil
}

// conn returns a netlink connection for one conversation (a socket per
// Flush: an error can never leave stale replies for the next one). The
// write buffer fits a Sync of tens of thousands of bans.
func (s *Set) conn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithSockOptions(func(nc *netlink.Conn) error {
		return nc.SetWriteBuffer(4 << 20)
	}))
	if err != nil {
		return nil, fmt.Errorf("nftset: netlink: %w", err)
	}
	return c, nil
}

func (s *Set) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: s.cfg.Table}
}

// pruneLocked forgets the bans that ended by now, and the ranges the
// kernel has expired.
func (s *Set) pruneLocked(now time.Time) {
	for p, u := range s.want {
		if !u.After(now) {
			delete(s.want, p)
		}
	}
	for _, h := range s.have {
		for k, u := range h {
			if !u.After(now) {
				delete(h, k)
			}
		}
	}
}

// wantSpansLocked returns the ranges s.want needs, per family.
func (s *Set) wantSpansLocked() [2][]span {
	var fam [2]map[netip.Prefix]time.Time
	for i := range fam {
		fam[i] = make(map[netip.Prefix]time.Time)
	}
	for p, u := range s.want {
		i := 0
		if p.Addr().Is6() {
			i = 1
		}
		fam[i][p] = u
	}
	return [2][]span{spans(fam[0]), spans(fam[1])}
}

// applyLocked brings the ranges inside region (the widest ban containing
// the key that changed) to what s.want needs, with one transaction that
// deletes the ranges that changed or went and adds the new ones; the rest
// of the sets is not looked at, so a change costs O(bans) cheap checks,
// not a rebuild. If the transaction fails (an element the kernel already
// expired, a table changed behind our back) or the sets' state is unknown
// (since Open), the whole table is rewritten instead.
func (s *Set) applyLocked(region netip.Prefix, now time.Time) error {
	s.pruneLocked(now)
	if s.have[0] == nil || s.have[1] == nil {
		return s.rewriteLocked(now)
	}
	i, name := 0, SetBanned4
	if region.Addr().Is6() {
		i, name = 1, SetBanned6
	}
	next, del, add := plan(s.have[i], s.want, region, now)
	if len(del) == 0 && len(add) == 0 {
		return nil
	}
	c, err := s.conn()
	if err != nil {
		return err
	}
	set := &nftables.Set{Table: s.table(), Name: name, Interval: true, HasTimeout: true}
	if len(del) > 0 {
		if err := c.SetDeleteElements(set, elements(del, now, false)); err != nil {
			return fmt.Errorf("nftset: %w", err)
		}
	}
	for _, chunk := range chunks(elements(add, now, true)) {
		if err := c.SetAddElements(set, chunk); err != nil {
			return fmt.Errorf("nftset: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		if rerr := s.rewriteLocked(now); rerr != nil {
			return fmt.Errorf("nftset: update set %s: %w (and rewriting the table: %w)", name, err, rerr)
		}
		return nil
	}
	for k := range s.have[i] {
		if region.Contains(k.lo) {
			delete(s.have[i], k)
		}
	}
	for _, sp := range next {
		s.have[i][rangeKey{sp.lo, sp.hi}] = sp.until
	}
	return nil
}

// regionLocked returns the widest of p and the bans containing p: the part
// of the address space a change of p's ban can affect.
func (s *Set) regionLocked(p netip.Prefix) netip.Prefix {
	r := p
	for q := range s.want {
		if q.Bits() < r.Bits() && q.Contains(p.Addr()) {
			r = q
		}
	}
	return r
}

// rewriteLocked rewrites the table's sets (and chain) from s.want, in one
// transaction, so the bans never lapse: "add table; add set …; flush set
// …; add element …" keeps chains of the admin's own in this table (the
// only place rules can reference banned4/banned6 from). If that fails
// (objects of an older layout: another key type, hook or priority) the
// table is deleted and created anew, also in one transaction. Only this
// table is touched.
func (s *Set) rewriteLocked(now time.Time) error {
	s.rewrites++
	s.pruneLocked(now)
	want := s.wantSpansLocked()
	err := s.replaceLocked(want, now, false)
	if err != nil {
		if err2 := s.replaceLocked(want, now, true); err2 != nil {
			s.have = [2]map[rangeKey]time.Time{}
			return fmt.Errorf("nftset: replace table inet %s: %w", s.cfg.Table, errors.Join(err, err2))
		}
	}
	for i := range want {
		s.have[i] = make(map[rangeKey]time.Time, len(want[i]))
		for _, sp := range want[i] {
			s.have[i][rangeKey{sp.lo, sp.hi}] = sp.until
		}
	}
	return nil
}

// replaceLocked sends the transaction of rewriteLocked: with recreate the
// table is deleted first ("add table" before makes that safe when it is
// missing), otherwise its sets and chain are flushed and refilled.
func (s *Set) replaceLocked(want [2][]span, now time.Time, recreate bool) error {
	c, err := s.conn()
	if err != nil {
		return err
	}
	t := s.table()
	c.AddTable(t)
	if recreate {
		c.DelTable(t)
		c.AddTable(t)
	}
	var sets [2]*nftables.Set
	for i, def := range [2]struct {
		name string
		typ  nftables.SetDatatype
	}{{SetBanned4, nftables.TypeIPAddr}, {SetBanned6, nftables.TypeIP6Addr}} {
		set := &nftables.Set{Table: t, Name: def.name, KeyType: def.typ, Interval: true, HasTimeout: true}
		sets[i] = set
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("set %s: %w", def.name, err)
		}
		c.FlushSet(set)
		for _, chunk := range chunks(elements(want[i], now, true)) {
			if err := c.SetAddElements(set, chunk); err != nil {
				return fmt.Errorf("set %s: %w", def.name, err)
			}
		}
	}
	ports := &nftables.Set{Table: t, Name: SetPorts, KeyType: nftables.TypeInetService, Interval: true}
	if err := c.AddSet(ports, nil); err != nil {
		return fmt.Errorf("set %s: %w", SetPorts, err)
	}
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityRef(ChainPriority),
		Policy:   &policy,
	})
	if !s.cfg.DropRule {
		// Added just to be deleted: gone whether or not an earlier
		// drop_rule = true left them.
		c.DelChain(ch)
		c.DelSet(ports)
	} else {
		c.FlushSet(ports)
		if err := c.SetAddElements(ports, portElements(s.ports)); err != nil {
			return fmt.Errorf("set %s: %w", SetPorts, err)
		}
		c.FlushChain(ch)
		for _, fam := range []struct {
			nfproto byte
			set     *nftables.Set
			off, n  uint32
		}{{unix.NFPROTO_IPV4, sets[0], 12, 4}, {unix.NFPROTO_IPV6, sets[1], 8, 16}} {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: dropExprs(fam.nfproto, ports, fam.set, fam.off, fam.n)})
		}
	}
	return c.Flush()
}

// dropExprs is "meta nfproto F meta l4proto tcp tcp dport @ports ct state
// new ip(6) saddr @set counter drop".
func dropExprs(nfproto byte, ports, set *nftables.Set, off, n uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// chunks splits elems into groups of at most elemsPerMsg, never between
// the start and the end element of one range.
func chunks(elems []nftables.SetElement) [][]nftables.SetElement {
	var out [][]nftables.SetElement
	for len(elems) > 0 {
		n := min(len(elems), elemsPerMsg)
		if n < len(elems) && elems[n].IntervalEnd {
			n++
		}
		out = append(out, elems[:n])
		elems = elems[n:]
	}
	return out
}
