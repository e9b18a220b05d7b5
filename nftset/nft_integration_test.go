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
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

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

// With drop_rule false an admin's chain in the table, using banned4,
// survives a restart (Open + Sync) without the table being re-created;
// turning drop_rule on and off adds and removes only our chain and set.
func TestAdminChainKept(t *testing.T) {
	l, port := listen(t, "127.0.0.1:0")
	cfg := testConfig(t, port)
	cfg.DropRule = false
	now := time.Now()
	bans := []limiter.Ban{{Key: pfx("127.0.97.1/32"), Until: now.Add(time.Hour)}}
	s := open(t, cfg)
	if err := s.Sync(bans, now); err != nil {
		t.Fatal(err)
	}
	if !connects(t, "127.0.97.1", l) {
		t.Fatal("drop_rule false, yet 127.0.97.1 cannot connect")
	}
	for _, args := range [][]string{
		{"add", "chain", "inet", cfg.Table, "mine", "{ type filter hook input priority 0; policy accept; }"},
		{"add", "rule", "inet", cfg.Table, "mine", "tcp", "dport", strconv.Itoa(port), "ip", "saddr", "@banned4", "drop"},
	} {
		if out, err := exec.Command("nft", args...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	if connects(t, "127.0.97.1", l) {
		t.Fatal("the admin's rule does not drop 127.0.97.1")
	}
	handle := tableHandle(t, cfg.Table)
	s.Close()

	steps := []struct {
		dropRule bool
		want     []string
	}{
		{false, []string{"chain mine", "set banned4", "set banned6"}},
		{true, []string{"chain input", "chain mine", "set banned4", "set banned6", "set ports"}},
		{false, []string{"chain mine", "set banned4", "set banned6"}},
	}
	for i, st := range steps {
		cfg.DropRule = st.dropRule
		s := open(t, cfg)
		if err := s.Sync(bans, time.Now()); err != nil {
			t.Fatal(err)
		}
		if got := objects(t, cfg.Table); !slices.Equal(got, st.want) {
			t.Errorf("step %d: objects %q, want %q", i, got, st.want)
		}
		if got := tableHandle(t, cfg.Table); got != handle {
			t.Errorf("step %d: table re-created (%s, was %s)", i, got, handle)
		}
		if connects(t, "127.0.97.1", l) {
			t.Errorf("step %d: 127.0.97.1 connected", i)
		}
		s.Close()
	}
	s = open(t, cfg)
	defer s.Close()
	if err := s.Sync(nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !connects(t, "127.0.97.1", l) {
		t.Error("127.0.97.1 cannot connect after its ban is gone")
	}
}

// A table of another layout under the name (a set of another type) is
// replaced by Sync.
func TestOtherLayoutReplaced(t *testing.T) {
	cfg := testConfig(t, 21)
	for _, args := range [][]string{
		{"add", "table", "inet", cfg.Table},
		{"add", "set", "inet", cfg.Table, SetBanned4, "{ type ipv4_addr; }"},
		{"add", "chain", "inet", cfg.Table, Chain, "{ type filter hook input priority 5; }"},
	} {
		if out, err := exec.Command("nft", args...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	s := open(t, cfg)
	defer s.Close()
	now := time.Now()
	if err := s.Sync([]limiter.Ban{{Key: pfx("127.0.98.0/24"), Until: now.Add(time.Hour)}}, now); err != nil {
		t.Fatal(err)
	}
	if got := vals(listSet(t, cfg.Table, SetBanned4)); !slices.Equal(got, []string{"127.0.98.0/24"}) {
		t.Errorf("banned4 = %q", got)
	}
	if txt := tableText(t, cfg.Table); !strings.Contains(txt, "priority filter - 10") {
		t.Errorf("chain input not replaced:\n%s", txt)
	}
}
