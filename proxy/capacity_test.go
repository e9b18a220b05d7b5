package proxy

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// TestShedChoice: the session table's choice of the session to shed — the
// oldest pre-login session of the key holding the most; of keys holding as
// many, the one holding the oldest session; never a logged-in one —
// with counts per key kept through logins, ends and sheds.
func TestShedChoice(t *testing.T) {
	type op int
	const (
		open  op = iota // admit + attach a session of key, named name
		dial            // admit only (the backend is being dialed: sheddable too)
		login           // name logs in
		end             // name ends
		shed            // victim: want name ("" = none)
		guess           // name's password is in flight
		fail            // name's guess failed
	)
	type st struct {
		op   op
		key  string
		name string
	}
	cases := []struct {
		name  string
		steps []st
		conns int // at the end
	}{
		{"the key with the most, its oldest first", []st{
			{open, "a", "a1"}, {open, "b", "b1"}, {open, "b", "b2"}, {open, "a", "a2"}, {open, "b", "b3"},
			{shed, "", "b1"}, // b: 3, a: 2
			{shed, "", "a1"}, // a: 2 reached first, b: 2
			{shed, "", "b2"}, // b: 2, a: 1
			{shed, "", "a2"},
			{shed, "", "b3"},
			{shed, "", ""},
		}, 0},
		{"logged-in sessions are never shed", []st{
			{open, "a", "a1"}, {open, "a", "a2"}, {open, "a", "a3"}, {open, "b", "b1"},
			{login, "", "a1"}, {login, "", "a2"},
			{shed, "", "a3"}, // a: 1 pre-login, b: 1; a3 is older than b1
			{shed, "", "b1"},
			{shed, "", ""},
		}, 2},
		{"ties: the key holding the oldest", []st{
			{open, "a", "a1"}, {open, "b", "b1"}, {open, "c", "c1"},
			{shed, "", "a1"}, {shed, "", "b1"}, {shed, "", "c1"},
		}, 0},
		{"newcomers are not shed before an older session of a key that came down to their count", []st{
			{open, "a", "a1"}, {open, "a", "a2"}, {open, "a", "a3"},
			{open, "n", "n1"}, {shed, "", "a1"},
			{open, "m", "m1"}, {shed, "", "a2"}, // a: 1 (a3), n: 1, m: 1
			{shed, "", "a3"}, {shed, "", "n1"}, {shed, "", "m1"},
		}, 0},
		{"ended sessions leave; dialing ones are sheddable", []st{
			{open, "a", "a1"}, {open, "a", "a2"}, {open, "b", "b1"}, {dial, "c", "c1"},
			{end, "", "a1"}, {end, "", "a2"},
			{shed, "", "b1"}, {shed, "", "c1"}, {shed, "", ""},
		}, 0},
		{"a session ended after it was shed changes nothing", []st{
			{open, "a", "a1"}, {open, "a", "a2"}, {open, "b", "b1"},
			{shed, "", "a1"}, {end, "", "a1"}, {login, "", "a1"},
			{open, "a", "a3"},
			{shed, "", "a2"}, // a: 2 (a2, a3), b: 1
			{end, "", "b1"},
			{shed, "", "a3"}, {shed, "", ""},
		}, 0},
		{"a password in flight is not shed; after a failure, the key's youngest", []st{
			{open, "a", "a1"}, {open, "a", "a2"}, {open, "b", "b1"},
			{guess, "", "a1"},
			{shed, "", "a2"}, // a: 1 sheddable (a2), b: 1 (b1 younger than a2)
			{fail, "", "a1"}, // a1 sheddable again, as a's youngest
			{open, "b", "b2"},
			{shed, "", "b1"}, // b: 2
			{shed, "", "a1"}, // a1 is now older than b2
			{guess, "", "b2"},
			{shed, "", ""}, // only a guess in flight is left
			{fail, "", "b2"}, {shed, "", "b2"},
		}, 0},
		{"a guess that logged in, or a freed slot, is not put back", []st{
			{open, "a", "a1"}, {open, "a", "a2"},
			{guess, "", "a1"}, {login, "", "a1"}, {fail, "", "a1"},
			{guess, "", "a2"}, {end, "", "a2"}, {fail, "", "a2"},
			{shed, "", ""},
		}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab := newCapTable()
			slots := map[string]*capSlot{}
			names := map[*capSlot]string{}
			for i, s := range tc.steps {
				switch s.op {
				case open, dial:
					k := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, s.key[0]}), 32)
					sl := tab.admit(context.Background(), k)
					slots[s.name] = sl
					names[sl] = s.name
					if s.op == open {
						tab.attach(sl, &session{})
					}
				case login:
					slots[s.name].ss.loggedIn.Store(true)
					tab.leavePre(slots[s.name])
				case end:
					tab.free(slots[s.name])
				case guess:
					tab.guessing(slots[s.name], true)
				case fail:
					tab.guessing(slots[s.name], false)
				case shed:
					got := names[tab.victim()]
					if got != s.name {
						t.Fatalf("step %d: shed %q; want %q", i, got, s.name)
					}
				}
			}
			if tab.conns != tc.conns {
				t.Fatalf("conns %d; want %d", tab.conns, tc.conns)
			}
		})
	}
}

// TestShedCounts: per-key counts stay right through a long mix, and keys
// with no connection left are forgotten (the table is bounded by the
// connections).
func TestShedCounts(t *testing.T) {
	tab := newCapTable()
	var slots []*capSlot
	for i := range 100 {
		k := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i % 7)}), 32)
		sl := tab.admit(context.Background(), k)
		tab.attach(sl, &session{})
		slots = append(slots, sl)
	}
	for i := 0; i < 50; i++ {
		if tab.victim() == nil {
			t.Fatal("no victim")
		}
	}
	for _, sl := range slots {
		tab.free(sl)
	}
	if tab.conns != 0 || len(tab.keys) != 0 || tab.top != 0 {
		t.Fatalf("after every end: conns %d, keys %d, top %d", tab.conns, len(tab.keys), tab.top)
	}
}

// TestConnRateTable: the connection-rate buckets per key, with `now`: a
// burst, then the rate; another key has its own bucket; the table holds at
// most maxKeys keys, forgetting the least recently used (which starts again
// full).
func TestConnRateTable(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	key := func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32) }
	type st struct {
		at   time.Duration
		key  int
		n    int // calls
		want int // of them allowed
	}
	cases := []struct {
		name    string
		maxKeys int
		steps   []st
		tracked int
	}{
		{"burst then rate", 10, []st{
			{0, 1, 5, 3},                       // burst 3
			{0, 2, 3, 3},                       // another key
			{time.Second, 1, 3, 2},             // 2/s
			{1500 * time.Millisecond, 1, 1, 1}, // half a second: one more
			{1500 * time.Millisecond, 1, 1, 0},
		}, 2},
		{"eviction of the least recently used", 2, []st{
			{0, 1, 3, 3},
			{0, 2, 3, 3},
			{0, 1, 1, 0}, // 1 is now the most recently used
			{0, 3, 1, 1}, // evicts 2
			{0, 1, 1, 0}, // 1 kept: still empty
			{0, 2, 3, 3}, // 2 forgotten: full again (evicts 3)
		}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c connRates
			for i, s := range tc.steps {
				got := 0
				for range s.n {
					if c.allow(t0.Add(s.at), key(s.key), 2, 3, tc.maxKeys) {
						got++
					}
				}
				if got != s.want {
					t.Fatalf("step %d: %d of %d allowed; want %d", i, got, s.n, s.want)
				}
			}
			if n := c.len(); n != tc.tracked {
				t.Fatalf("%d keys tracked; want %d", n, tc.tracked)
			}
		})
	}
}
