// Package nftnat hands plain passive FTP data connections to the kernel:
// instead of accepting the client's data connection and relaying it to the
// daemon, ftpguard maps it with nftables NAT, over netlink
// (github.com/google/nftables), and the bytes never enter user space.
//
// A Table owns one table, "table inet <name>" ([passive] nft_table,
// default "ftpguard_data"), and nothing else. Open deletes and re-creates
// it, so whatever a crashed process left is gone at the next start; Close
// deletes it. The table holds two maps per address family and four chains:
//
//	map dnat4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout; }
//	map snat4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; flags timeout; }
//	map dnat6 { type ipv6_addr . ipv6_addr . inet_service : ipv6_addr . inet_service; flags timeout; }
//	map snat6 { type ipv6_addr . ipv6_addr . inet_service : ipv6_addr; flags timeout; }
//	chain prerouting  { type nat hook prerouting priority dstnat; … dnat ip to ip saddr . ip daddr . tcp dport map @dnat4 … }
//	chain output      { type nat hook output priority dstnat; (the same) }
//	chain postrouting { type nat hook postrouting priority srcnat; … snat ip to ip saddr . ip daddr . tcp dport map @snat4 … }
//	chain input       { type nat hook input priority srcnat; (the same) }
//	set cut4 { type ipv4_addr . ipv4_addr . inet_service; flags timeout; }    (and cut6)
//	chain cut_input   { type filter hook input priority filter; … ip saddr . ip daddr . tcp dport @cut4 reject with tcp reset; ip daddr . ip saddr . tcp sport @cut4 reject with tcp reset … }
//	chain cut_output, cut_forward (the same, hooks output and forward)
//
// Cut ends a transfer the kernel carries (a ban under end_sessions_on_ban
// = "all-now"): an element of cut4/cut6 resets its packets either way. The
// cut chains see every packet of the host: the first Cut adds them.
//
// The table counts the bytes of the connections a mapping lets through,
// from Map to Release, as TCP payload: sets up4/down4/up6/down6 with
// counters, maps seq4/seq6 and filter chains count_input, count_output and
// count_forward (count.go).
//
// A Mapping is two elements, added and removed in one transaction: the
// client's address, the proxy's address and passive port → the daemon's
// passive address and port (DNAT: prerouting for a remote client, output
// for one on this host), and the client's address, the daemon's address
// and port → the address the daemon expects (SNAT: input for a daemon on
// this host, postrouting otherwise). A connection from any other address
// matches nothing. Each element carries a timeout, so the kernel drops a
// mapping on its own if ftpguard does not.
//
// NAT rules see only the first packet of a connection; conntrack translates
// the rest. Removing a mapping once the daemon has accepted leaves that
// transfer running and lets no second connection through.
package nftnat

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// DefaultTable is the name of the table unless configured.
const DefaultTable = "ftpguard_data"

// ErrClosed is returned by the methods of a closed Table.
var ErrClosed = errors.New("nftnat: closed")

// ErrFamilies refuses a Mapping whose addresses are not all IPv4 or all
// IPv6: NAT cannot cross families.
var ErrFamilies = errors.New("address families differ")

// Table is ftpguard's NAT table. Make it with Open; the zero value is not
// usable. Safe for concurrent use: Map and Unmap may run at once (each
// is one netlink conversation on a socket of its own), Close waits for
// them.
//
// Each call is a netlink round trip with the kernel (well under a
// millisecond on an idle machine): call it from a goroutine of the
// caller's own, never while holding a lock others wait on.
type Table struct {
	name string

	mu     sync.RWMutex
	closed bool

	// remaking serializes the re-creations of a flushed table; remade
	// counts them, so that the Maps that found the table gone at once
	// re-create it once, not each in turn (a re-creation empties the
	// table: it would take the mappings the others made meanwhile).
	remaking sync.Mutex
	remade   atomic.Uint64

	cutMu     sync.Mutex // orders Cut's chains with recreate
	cutChains bool       // the table holds Cut's filter chains

	counting bool  // the table counts bytes (count.go); set by Open
	countErr error // why not
}

// Open deletes table inet name if it exists and creates it anew, empty, in
// one transaction: the table of a process that crashed is gone (and with it
// whatever connections it still mapped; that process's sessions died with
// it). Two processes on one host must not share a name. An error means
// this machine cannot do it (no nftables, no NAT support, no
// CAP_NET_ADMIN): the caller relays instead.
func Open(name string) (*Table, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("nftnat: invalid table name %q", name)
	}
	t := &Table{name: name, counting: true}
	if err := t.recreate(); err != nil {
		// A kernel that takes the NAT maps but not the counting (set
		// element counters, maps filled from the packet path): map
		// without counting.
		t.counting = false
		if err2 := t.recreate(); err2 != nil {
			return nil, fmt.Errorf("nftnat: create table inet %s: %w", name, err2)
		}
		t.countErr = err
	}
	return t, nil
}

// Counting reports whether t counts the bytes of the connections it maps
// (Release); if not, why: the kernel refused the counting objects.
func (t *Table) Counting() (bool, error) { return t.counting, t.countErr }

// Probe reports whether Open(name) would succeed, without touching table
// name (a running ftpguard may own it): it creates the same layout under
// another name and deletes it, in one transaction, so nothing is left.
// When the kernel takes the NAT table but not its counting objects (Open
// then makes a table that does not count bytes), the error wraps
// ErrNoCounting and says why: the kernel data path works, uncounted.
func Probe(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("nftnat: invalid table name %q", name)
	}
	c, err := conn()
	if err != nil {
		return err
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: fmt.Sprintf("%s-probe-%d", name, os.Getpid())}
	var countErr error
	for _, counting := range []bool{true, false} {
		c.AddTable(tbl)
		c.DelTable(tbl)
		if err := build(c, tbl, true, counting); err != nil { // all that Cut may add too
			return err
		}
		c.DelTable(tbl)
		if err = c.Flush(); err == nil {
			if countErr != nil {
				return fmt.Errorf("%w: %w", ErrNoCounting, countErr)
			}
			return nil
		}
		if counting {
			countErr = err
		}
	}
	return fmt.Errorf("nftnat: a NAT table cannot be created: %w", err)
}

// build adds the table, its maps and sets and its NAT chains to c's batch,
// withCuts the filter chains of Cut too, and counting the objects that
// count bytes (count.go).
func build(c *nftables.Conn, tbl *nftables.Table, withCuts, counting bool) error {
	c.AddTable(tbl)
	type pair struct{ dnat, snat *nftables.Set }
	var maps []pair
	for _, f := range []family{fam4, fam6} {
		dnat, snat := f.maps(tbl)
		for _, m := range []*nftables.Set{dnat, snat} {
			if err := c.AddSet(m, nil); err != nil {
				return fmt.Errorf("nftnat: map %s: %w", m.Name, err)
			}
		}
		maps = append(maps, pair{dnat, snat})
	}
	policy := nftables.ChainPolicyAccept
	var cuts []*nftables.Set
	for _, f := range []family{fam4, fam6} {
		set := f.cutSet(tbl)
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("nftnat: set %s: %w", set.Name, err)
		}
		cuts = append(cuts, set)
	}
	if withCuts {
		addCutChains(c, tbl, cuts)
	}
	for _, cs := range chains {
		ch := c.AddChain(&nftables.Chain{Name: cs.name, Table: tbl, Type: nftables.ChainTypeNAT,
			Hooknum: cs.hook, Priority: cs.priority, Policy: &policy})
		for i, f := range []family{fam4, fam6} {
			m := maps[i].snat
			if cs.dnat {
				m = maps[i].dnat
			}
			c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: f.natExprs(cs.dnat, m)})
		}
	}
	if counting {
		return addCounting(c, tbl)
	}
	return nil
}

// addCutChains adds the filter chains that reset the connections in the
// cut sets (cuts: cut4, cut6) to c's batch. They see every packet of the
// host, unlike the NAT chains (a connection's first only): they are added by
// the first Cut, not before, so that a table nobody cut costs nothing per
// packet.
func addCutChains(c *nftables.Conn, tbl *nftables.Table, cuts []*nftables.Set) {
	policy := nftables.ChainPolicyAccept
	for _, cc := range cutChains {
		ch := c.AddChain(&nftables.Chain{Name: cc.name, Table: tbl, Type: nftables.ChainTypeFilter,
			Hooknum: cc.hook, Priority: nftables.ChainPriorityFilter, Policy: &policy})
		for i, f := range []family{fam4, fam6} {
			for _, reply := range []bool{false, true} {
				c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: f.cutExprs(reply, cuts[i])})
			}
		}
	}
}

// Name returns the name of the table t owns.
func (t *Table) Name() string { return t.name }

// Map adds m's two elements, which the kernel drops after timeout (> 0)
// unless Unmap removes them first. An element left by an earlier mapping
// under the same key (one whose Unmap failed) is replaced; a table that
// has gone (a flushed ruleset) is re-created first.
func (t *Table) Map(m Mapping, timeout time.Duration) error {
	e, err := m.encode()
	if err != nil {
		return err
	}
	if timeout <= 0 {
		return fmt.Errorf("nftnat: mapping %v: timeout %v", m, timeout)
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return ErrClosed
	}
	gen := t.remade.Load()
	err = t.add(e, timeout)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT):
		// The table is gone: someone flushed the ruleset (an nftables
		// service reload does). It is ours to re-create.
		if rerr := t.remake(gen); rerr != nil {
			return fmt.Errorf("nftnat: map %v: %w (and re-creating table inet %s: %w)", m, err, t.name, rerr)
		}
	default:
		// A stale element with other data makes the add fail (EBUSY):
		// remove whatever the keys hold.
		t.del(e)
	}
	if err = t.add(e, timeout); err != nil {
		return fmt.Errorf("nftnat: map %v: %w", m, err)
	}
	return nil
}

// remake re-creates the table found gone by an add begun when remade
// was gen, unless another Map has re-created it since.
func (t *Table) remake(gen uint64) error {
	t.remaking.Lock()
	defer t.remaking.Unlock()
	if t.remade.Load() != gen {
		return nil
	}
	if err := t.recreate(); err != nil {
		return err
	}
	t.remade.Add(1)
	return nil
}

// recreate deletes (if present) and creates the table, empty, in one
// transaction; the mappings it held are gone.
func (t *Table) recreate() error {
	c, err := conn()
	if err != nil {
		return err
	}
	tbl := t.table()
	c.AddTable(tbl) // so that the delete cannot fail for a table that is not there
	c.DelTable(tbl)
	if err := build(c, tbl, false, t.counting); err != nil {
		return err
	}
	t.cutMu.Lock()
	defer t.cutMu.Unlock()
	if err := c.Flush(); err != nil {
		return err
	}
	t.cutChains = false
	return nil
}

func (t *Table) add(e elems, timeout time.Duration) error {
	c, err := conn()
	if err != nil {
		return err
	}
	dnat, snat := e.fam.maps(t.table())
	if err := c.SetAddElements(dnat, []nftables.SetElement{{Key: e.dnatKey, Val: e.dnatVal, Timeout: timeout}}); err != nil {
		return err
	}
	if err := c.SetAddElements(snat, []nftables.SetElement{{Key: e.snatKey, Val: e.snatVal, Timeout: timeout}}); err != nil {
		return err
	}
	if t.counting {
		// The counters start at zero: an element an earlier mapping of
		// the same key left (its Release failed) is removed first, in
		// the same transaction (added first, so that the delete cannot
		// fail).
		up, down := e.fam.countSets(t.table())
		for _, s := range []*nftables.Set{up, down} {
			el := []nftables.SetElement{{Key: e.snatKey}}
			if err := c.SetAddElements(s, el); err != nil {
				return err
			}
			if err := c.SetDeleteElements(s, el); err != nil {
				return err
			}
			if err := c.SetAddElements(s, el); err != nil {
				return err
			}
		}
	}
	return c.Flush()
}

// Cut ends the connection m let through, which the kernel carries (its
// mapping may be gone: conntrack carries an established connection on): for
// timeout (> 0) each packet of it, either way, is answered with a TCP reset,
// so both the client and the daemon see the connection reset at their next
// packet. Another connection of the client's to the daemon's same port in
// that time is reset too.
func (t *Table) Cut(m Mapping, timeout time.Duration) error {
	e, err := m.encode()
	if err != nil {
		return err
	}
	if timeout <= 0 {
		return fmt.Errorf("nftnat: cut %v: timeout %v", m, timeout)
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return ErrClosed
	}
	c, err := conn()
	if err != nil {
		return err
	}
	tbl := t.table()
	if err := c.SetAddElements(e.fam.cutSet(tbl), []nftables.SetElement{{Key: e.snatKey, Timeout: timeout}}); err != nil {
		return fmt.Errorf("nftnat: cut %v: %w", m, err)
	}
	t.cutMu.Lock()
	defer t.cutMu.Unlock()
	if !t.cutChains {
		addCutChains(c, tbl, []*nftables.Set{fam4.cutSet(tbl), fam6.cutSet(tbl)})
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("nftnat: cut %v: %w", m, err)
	}
	t.cutChains = true
	return nil
}

// Unmap removes m's elements. Elements the kernel has already dropped
// (their timeout passed) are not an error.
func (t *Table) Unmap(m Mapping) error {
	e, err := m.encode()
	if err != nil {
		return err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return ErrClosed
	}
	if err := t.del(e); err != nil {
		return fmt.Errorf("nftnat: unmap %v: %w", m, err)
	}
	return nil
}

// del removes e's map elements (delPresent).
func (t *Table) del(e elems) error {
	dnat, snat := e.fam.maps(t.table())
	return delPresent(elemRef{dnat, e.dnatKey}, elemRef{snat, e.snatKey})
}

// delPresent deletes the elements of refs that exist: all in one
// transaction, or, if one of them is gone already (ENOENT fails the whole
// transaction), each on its own.
func delPresent(refs ...elemRef) error {
	err := delElems(refs...)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return err
	}
	var errs []error
	for _, r := range refs {
		if err := delElems(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// elemRef is one element of a map, by its key.
type elemRef struct {
	m   *nftables.Set
	key []byte
}

// delElems deletes elements in one transaction.
func delElems(refs ...elemRef) error {
	c, err := conn()
	if err != nil {
		return err
	}
	for _, r := range refs {
		if err := c.SetDeleteElements(r.m, []nftables.SetElement{{Key: r.key}}); err != nil {
			return err
		}
	}
	return c.Flush()
}

// Close deletes the table. Connections it mapped that are still open end
// with it (without a NAT chain the kernel no longer translates them; checked
// on Linux 6.18): close it once the sessions have ended. Idempotent; later
// calls of the other methods return ErrClosed.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	c, err := conn()
	if err != nil {
		return err
	}
	tbl := t.table()
	c.AddTable(tbl) // so that the delete cannot fail for a table already gone
	c.DelTable(tbl)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftnat: delete table inet %s: %w", t.name, err)
	}
	return nil
}

func (t *Table) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: t.name}
}

// conn returns a netlink connection for one conversation (a socket per
// Flush: an error can never leave stale replies for the next one).
func conn() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftnat: netlink: %w", err)
	}
	return c, nil
}
