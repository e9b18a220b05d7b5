//go:build integration

// Tests on the machine's real nftables (root or CAP_NET_ADMIN). Each test
// owns a table "ftpguard-test-<pid>-<n>", deleted in cleanup even when the
// test fails; traffic goes to 127.0.0.0/8 and ::1 only, to ports of the
// test's own listeners. Without nftables support a test skips, unless CI is
// set: then it fails.
//
//	go test -tags integration -run . ./nftset/
package nftset

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ftpguard/ftpguard/limiter"
)

var tableSeq atomic.Int32

// need skips t (fails it in CI) when nft or kernel nftables is missing.
func need(t *testing.T) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if _, err := exec.LookPath("nft"); err != nil {
		fail("nft CLI missing (apt-get install nftables): %v", err)
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	if err != nil {
		fail("no nftables support: %v", err)
	}
}

// testConfig returns a config for a table of t's own, deleted in cleanup.
func testConfig(t *testing.T, ports ...int) Config {
	t.Helper()
	need(t)
	cfg := DefaultConfig()
	cfg.Table = fmt.Sprintf("ftpguard-test-%d-%d", os.Getpid(), tableSeq.Add(1))
	for _, p := range ports {
		cfg.Ports = append(cfg.Ports, strconv.Itoa(p))
	}
	t.Cleanup(func() { deleteTable(t, cfg.Table) })
	return cfg
}

// deleteTable deletes table inet name if present, and nothing else.
func deleteTable(t *testing.T, name string) {
	c, err := nftables.New()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(tb)
	c.DelTable(tb)
	if err := c.Flush(); err != nil {
		t.Errorf("cleanup: delete table inet %s: %v", name, err)
	}
}

func open(t *testing.T, cfg Config) *Set {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// listen returns a TCP listener on addr that accepts and closes.
func listen(t *testing.T, addr string) (net.Listener, int) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, l.Addr().(*net.TCPAddr).Port
}

// connects reports whether from can connect to l within ~1 s.
func connects(t *testing.T, from string, l net.Listener) bool {
	t.Helper()
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", l.Addr().String())
	if err == nil {
		c.Close()
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	t.Fatalf("dial %s from %s: %v", l.Addr(), from, err)
	return false
}

// nftJSON runs nft -j with args and decodes its output.
func nftJSON(t *testing.T, args ...string) []map[string]json.RawMessage {
	t.Helper()
	out, err := exec.Command("nft", append([]string{"-j"}, args...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("nft -j %v: %v: %s", args, err, ee.Stderr)
		}
		t.Fatalf("nft -j %v: %v", args, err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j %v: %v: %s", args, err, out)
	}
	return doc.Nftables
}

// elem is one element of a listed set.
type elem struct {
	Val     string // "127.0.0.2", "10.0.0.0/24" or "10.0.0.1-10.0.0.4"
	Timeout int    // seconds, 0 for none
	Expires int
}

// listSet returns the elements of set name of table, as nft lists them.
func listSet(t *testing.T, table, name string) []elem {
	t.Helper()
	var out []elem
	for _, o := range nftJSON(t, "list", "set", "inet", table, name) {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var set struct {
			Elem []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &set); err != nil {
			t.Fatal(err)
		}
		for _, r := range set.Elem {
			var e struct {
				Elem *struct {
					Val     json.RawMessage `json:"val"`
					Timeout int             `json:"timeout"`
					Expires int             `json:"expires"`
				} `json:"elem"`
			}
			if err := json.Unmarshal(r, &e); err != nil {
				t.Fatal(err)
			}
			if e.Elem == nil { // a bare value: no timeout
				out = append(out, elem{Val: val(t, r)})
				continue
			}
			out = append(out, elem{Val: val(t, e.Elem.Val), Timeout: e.Elem.Timeout, Expires: e.Elem.Expires})
		}
	}
	return out
}

// val formats an nft JSON value: an address, {"prefix": …} or {"range": …}.
func val(t *testing.T, r json.RawMessage) string {
	var s string
	if json.Unmarshal(r, &s) == nil {
		return s
	}
	var v struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
	}
	if err := json.Unmarshal(r, &v); err != nil {
		t.Fatalf("element value %s: %v", r, err)
	}
	switch {
	case v.Prefix != nil:
		return v.Prefix.Addr + "/" + strconv.Itoa(v.Prefix.Len)
	case len(v.Range) == 2:
		return v.Range[0] + "-" + v.Range[1]
	}
	t.Fatalf("element value %s: unknown shape", r)
	return ""
}

func vals(es []elem) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Val)
	}
	slices.Sort(out)
	return out
}

// tables returns "family name handle" of every table.
func tables(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, o := range nftJSON(t, "list", "tables") {
		raw, ok := o["table"]
		if !ok {
			continue
		}
		var tb struct {
			Family string `json:"family"`
			Name   string `json:"name"`
			Handle int    `json:"handle"`
		}
		if err := json.Unmarshal(raw, &tb); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s %d", tb.Family, tb.Name, tb.Handle))
	}
	slices.Sort(out)
	return out
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// (a) + (c): a banned address gets no SYN-ACK on a configured port, another
// address does, an unconfigured port is not affected; Remove lifts it.
func TestDropAndRemove(t *testing.T) {
	l, port := listen(t, "127.0.0.1:0")
	other, _ := listen(t, "127.0.0.1:0")
	cfg := testConfig(t, port)
	s := open(t, cfg)
	defer s.Close()
	now := time.Now()
	if err := s.Sync(nil, now); err != nil {
		t.Fatal(err)
	}
	if !connects(t, "127.0.88.2", l) {
		t.Fatal("127.0.88.2 cannot connect before any ban")
	}
	if err := s.Add(pfx("127.0.88.2/32"), now.Add(5*time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if connects(t, "127.0.88.2", l) {
		t.Error("banned 127.0.88.2 connected to the guarded port")
	}
	if !connects(t, "127.0.88.3", l) {
		t.Error("127.0.88.3 (not banned) cannot connect")
	}
	if !connects(t, "127.0.88.2", other) {
		t.Error("banned 127.0.88.2 cannot connect to a port outside ports")
	}
	if err := s.Remove(pfx("127.0.88.2/32"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if !connects(t, "127.0.88.2", l) {
		t.Error("127.0.88.2 cannot connect after Remove")
	}
	if got := listSet(t, cfg.Table, SetBanned4); len(got) != 0 {
		t.Errorf("banned4 after Remove = %v, want empty", got)
	}
}

// (b): the element's timeout is the ban's remaining time; a renewed ban
// updates it.
func TestTimeout(t *testing.T) {
	cfg := testConfig(t, 21)
	s := open(t, cfg)
	defer s.Close()
	now := time.Now()
	if err := s.Sync([]limiter.Ban{{Key: pfx("127.0.88.9/32"), Until: now.Add(300 * time.Second)}}, now); err != nil {
		t.Fatal(err)
	}
	check := func(want int) {
		t.Helper()
		es := listSet(t, cfg.Table, SetBanned4)
		if len(es) != 1 || es[0].Val != "127.0.88.9" {
			t.Fatalf("banned4 = %+v, want 127.0.88.9 alone", es)
		}
		if d := es[0].Timeout - want; d < -3 || d > 3 {
			t.Errorf("timeout = %ds, want %d ± 3", es[0].Timeout, want)
		}
		if d := es[0].Expires - want; d < -3 || d > 3 {
			t.Errorf("expires = %ds, want %d ± 3", es[0].Expires, want)
		}
	}
	check(300)
	now = time.Now()
	if err := s.Add(pfx("127.0.88.9/32"), now.Add(7200*time.Second), now); err != nil {
		t.Fatal(err)
	}
	check(7200)
	if err := s.Add(pfx("127.0.88.9/32"), now.Add(60*time.Second), now); err != nil {
		t.Fatal(err)
	}
	check(60)
}

// Nested bans: a /24 over a banned /32 and the other way round never fail
// the batch; each address is banned until the latest end covering it.
func TestOverlap(t *testing.T) {
	l, port := listen(t, "127.0.0.1:0")
	cfg := testConfig(t, port)
	s := open(t, cfg)
	defer s.Close()
	now := time.Now()
	if err := s.Sync(nil, now); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		key   string
		until time.Duration
		want  []string
	}{
		{"127.0.89.5/32", time.Hour, []string{"127.0.89.5"}},
		{"127.0.89.0/24", 30 * time.Minute, []string{"127.0.89.0-127.0.89.4", "127.0.89.5", "127.0.89.6-127.0.89.255"}},
		{"127.0.89.0/24", 2 * time.Hour, []string{"127.0.89.0/24"}},
		{"127.0.89.7/32", 3 * time.Hour, []string{"127.0.89.0-127.0.89.6", "127.0.89.7", "127.0.89.8-127.0.89.255"}},
		{"127.0.89.0/24", 0, []string{"127.0.89.5", "127.0.89.7"}}, // lifted: the /32s stay
	}
	for _, st := range steps {
		if err := s.Add(pfx(st.key), now.Add(st.until), now); err != nil {
			t.Fatalf("Add(%s, +%v): %v", st.key, st.until, err)
		}
		if got := vals(listSet(t, cfg.Table, SetBanned4)); !slices.Equal(got, st.want) {
			t.Errorf("after Add(%s, +%v): banned4 = %q, want %q", st.key, st.until, got, st.want)
		}
	}
	if connects(t, "127.0.89.5", l) || !connects(t, "127.0.89.6", l) {
		t.Error("after the /24 is lifted, .5 must stay banned and .6 free")
	}
}

// (d): a restart (new Open + Sync on the same table) keeps the bans while
// the new process starts and re-creates the table and its elements; doing
// it twice gives the same table.
func TestRestart(t *testing.T) {
	l, port := listen(t, "127.0.0.1:0")
	cfg := testConfig(t, port, 50000)
	cfg.Ports = append(cfg.Ports, "50010-50020")
	now := time.Now()
	bans := []limiter.Ban{
		{Key: pfx("127.0.90.1/32"), Until: now.Add(time.Hour)},
		{Key: pfx("127.0.91.0/24"), Until: now.Add(time.Hour)},
		{Key: pfx("127.0.92.1/32"), Until: now.Add(-time.Second)}, // over
		{Key: pfx("2001:db8:7::/48"), Until: now.Add(time.Hour)},
	}
	want4 := []string{"127.0.90.1", "127.0.91.0/24"}
	var prev string
	for round := range 3 {
		s := open(t, cfg)
		if round > 0 { // the previous process's bans are in force until Sync
			if got := vals(listSet(t, cfg.Table, SetBanned4)); !slices.Equal(got, want4) {
				t.Errorf("round %d after Open: banned4 = %q, want %q", round, got, want4)
			}
			if connects(t, "127.0.90.1", l) {
				t.Errorf("round %d: 127.0.90.1 connected between Open and Sync", round)
			}
		}
		if err := s.Sync(bans, time.Now()); err != nil {
			t.Fatal(err)
		}
		if got := vals(listSet(t, cfg.Table, SetBanned4)); !slices.Equal(got, want4) {
			t.Errorf("round %d: banned4 = %q, want %q", round, got, want4)
		}
		if got := vals(listSet(t, cfg.Table, SetBanned6)); !slices.Equal(got, []string{"2001:db8:7::/48"}) {
			t.Errorf("round %d: banned6 = %q", round, got)
		}
		if connects(t, "127.0.90.1", l) || connects(t, "127.0.91.77", l) || !connects(t, "127.0.92.1", l) {
			t.Errorf("round %d: drops do not match the bans", round)
		}
		cur := tableText(t, cfg.Table)
		if round > 0 && cur != prev {
			t.Errorf("round %d: table differs from the previous round's:\n%s\n---\n%s", round, prev, cur)
		}
		prev = cur
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// tableText returns nft list table with handles, timeouts and counters cut.
func tableText(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("nft", "-s", "list", "table", "inet", name).Output()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v", name, err)
	}
	return volatile.ReplaceAllString(string(out), "$1 …")
}

// volatile matches what changes between two listings of the same bans.
var volatile = regexp.MustCompile(`(timeout|expires|packets|bytes) [0-9a-z.]+`)

// (e): a /64 ban is one interval of banned6; ::1 traffic is dropped.
func TestIPv6(t *testing.T) {
	l, port := listen(t, "[::1]:0")
	cfg := testConfig(t, port)
	s := open(t, cfg)
	defer s.Close()
	now := time.Now()
	if err := s.Sync(nil, now); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(pfx("2001:db8:1:2::/64"), now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if got := vals(listSet(t, cfg.Table, SetBanned6)); !slices.Equal(got, []string{"2001:db8:1:2::/64"}) {
		t.Errorf("banned6 = %q, want the /64 as one interval", got)
	}
	if !connects(t, "::1", l) {
		t.Fatal("::1 cannot connect before its ban")
	}
	if err := s.Add(pfx("::1/128"), now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if connects(t, "::1", l) {
		t.Error("banned ::1 connected")
	}
	if got := listSet(t, cfg.Table, SetBanned4); len(got) != 0 {
		t.Errorf("banned4 = %v, want empty", got)
	}
}

// (f): no other table is touched; drop_rule false keeps only the sets;
// remove_on_exit deletes the table on Close.
func TestOtherTablesUntouched(t *testing.T) {
	before := tables(t)
	cfg := testConfig(t)
	cfg.DropRule = false
	cfg.RemoveOnExit = true
	s := open(t, cfg)
	now := time.Now()
	if err := s.Sync([]limiter.Ban{{Key: pfx("127.0.93.0/24"), Until: now.Add(time.Hour)}}, now); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(pfx("127.0.93.4/32"), now.Add(2*time.Hour), now); err != nil {
		t.Fatal(err)
	}
	for _, o := range nftJSON(t, "list", "table", "inet", cfg.Table) {
		if _, ok := o["chain"]; ok {
			t.Errorf("drop_rule false, yet the table has a chain: %s", o["chain"])
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	after := tables(t)
	for _, tb := range before {
		if !slices.Contains(after, tb) {
			t.Errorf("table %q (family name handle) is gone or was re-created", tb)
		}
	}
	for _, tb := range after {
		if strings.HasPrefix(tb, "inet "+cfg.Table+" ") {
			t.Errorf("remove_on_exit: table %s still there", cfg.Table)
		}
	}
	if err := s.Add(pfx("127.0.93.4/32"), now.Add(time.Hour), now); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close = %v, want ErrClosed", err)
	}
}

// A ban the kernel expired is added again as a change, not a rewrite; a
// table deleted behind the Set's back is rebuilt by the next change.
func TestExpiredAndLostTable(t *testing.T) {
	cfg := testConfig(t, 21)
	s := open(t, cfg)
	defer s.Close()
	now := time.Now()
	if err := s.Sync(nil, now); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(pfx("127.0.94.1/32"), now.Add(1500*time.Millisecond), now); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if got := listSet(t, cfg.Table, SetBanned4); len(got) != 0 {
		t.Errorf("banned4 after the timeout = %v, want empty", got)
	}
	rewrites := s.rewrites
	now = time.Now()
	if err := s.Add(pfx("127.0.94.0/24"), now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if s.rewrites != rewrites {
		t.Errorf("re-adding over an expired element rewrote the table")
	}
	if got := vals(listSet(t, cfg.Table, SetBanned4)); !slices.Equal(got, []string{"127.0.94.0/24"}) {
		t.Errorf("banned4 = %q", got)
	}

	deleteTable(t, cfg.Table)
	if err := s.Add(pfx("127.0.95.1/32"), now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if s.rewrites != rewrites+1 {
		t.Errorf("rewrites = %d, want %d after the table was lost", s.rewrites, rewrites+1)
	}
	if got := vals(listSet(t, cfg.Table, SetBanned4)); !slices.Equal(got, []string{"127.0.94.0/24", "127.0.95.1"}) {
		t.Errorf("banned4 after the rebuild = %q", got)
	}
}

// Concurrent Adds and Removes from many goroutines end in the state of
// their last calls (run with -race).
func TestConcurrent(t *testing.T) {
	cfg := testConfig(t, 21)
	s := open(t, cfg)
	defer s.Close()
	if err := s.Sync(nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16*20)
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				key := netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 0, 96, byte(g*16 + i%16)}), 32)
				now := time.Now()
				var err error
				if i < 16 {
					err = s.Add(key, now.Add(time.Hour), now)
				} else {
					err = s.Remove(key, now) // the first 4 of the goroutine's 16
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	es := listSet(t, cfg.Table, SetBanned4)
	n := 0
	for _, e := range es {
		switch {
		case strings.Contains(e.Val, "-"):
			a, b, _ := strings.Cut(e.Val, "-")
			n += int(netip.MustParseAddr(b).As4()[3]) - int(netip.MustParseAddr(a).As4()[3]) + 1
		case strings.Contains(e.Val, "/"):
			n += 1 << (32 - pfx(e.Val).Bits())
		default:
			n++
		}
	}
	if n != 16*12 {
		t.Errorf("banned4 holds %d addresses, want %d: %q", n, 16*12, vals(es))
	}
	if s.rewrites != 2 {
		t.Errorf("rewrites = %d, want 2 (Open's and Sync's)", s.rewrites)
	}
}
