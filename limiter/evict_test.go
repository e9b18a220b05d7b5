package limiter

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestBanTableEvictsEndedFirst: a full ban table makes room by forgetting
// ended records (kept only to escalate the next ban of their key), the
// one to be forgotten first, before it lifts a ban in force; only a table
// of bans in force loses one, the one ending first. Otherwise whoever can
// make many records (IPv6 /64 keys are cheap) could lift bans in force,
// its own or others', as the bans' Until comes before the ended records'
// Forget (Until + max_ban_time).
func TestBanTableEvictsEndedFirst(t *testing.T) {
	h := time.Hour
	type ban struct {
		at   time.Duration // offset from t0
		addr string        // a /32
		d    time.Duration
	}
	tests := []struct {
		name   string
		max    int
		bans   []ban
		reload int // > 0: Reload with this MaxTracked after the bans, at the last ban's time
		// at the last ban's time: keys whose ban is in force, and keys
		// with no ban in force
		banned, free []string
		// keys whose ended ban is remembered (the next ban escalates), and
		// keys with no record left (evicted or forgotten)
		remembered, gone []string
		// Stats: bans in force and ended records evicted
		bansEvicted, rememberedEvicted uint64
	}{
		{
			name: "new ban evicts the ended record forgotten first",
			max:  4,
			bans: []ban{
				{0, "10.0.0.1", h}, {0, "10.0.0.2", 2 * h}, // ended at 3h, forgotten at 169h and 170h
				{3 * h, "10.0.0.3", h}, {3 * h, "10.0.0.4", 2 * h}, // in force until 4h and 5h
				{3 * h, "10.0.0.5", h}, // the table is full
			},
			banned:            []string{"10.0.0.3", "10.0.0.4", "10.0.0.5"},
			free:              []string{"10.0.0.1", "10.0.0.2"},
			remembered:        []string{"10.0.0.2"},
			gone:              []string{"10.0.0.1"},
			rememberedEvicted: 1,
		},
		{
			name: "ended records go first, then the ban ending first",
			max:  3,
			bans: []ban{
				{0, "10.0.0.1", h},
				{3 * h, "10.0.0.3", h}, {3 * h, "10.0.0.4", 2 * h},
				{3 * h, "10.0.0.5", 7 * h}, // evicts the ended 10.0.0.1
				{3 * h, "10.0.0.6", 8 * h}, // evicts 10.0.0.3, in force until 4h
			},
			banned:            []string{"10.0.0.4", "10.0.0.5", "10.0.0.6"},
			free:              []string{"10.0.0.1", "10.0.0.3"},
			gone:              []string{"10.0.0.1", "10.0.0.3"},
			bansEvicted:       1,
			rememberedEvicted: 1,
		},
		{
			name:   "only bans in force: the one ending first is evicted",
			max:    2,
			bans:   []ban{{0, "10.0.0.1", 2 * h}, {0, "10.0.0.2", h}, {0, "10.0.0.3", 3 * h}},
			banned: []string{"10.0.0.1", "10.0.0.3"}, free: []string{"10.0.0.2"},
			bansEvicted: 1,
		},
		{
			name: "a reload lowering max_tracked drops ended records first",
			max:  5,
			bans: []ban{
				{0, "10.0.0.1", h}, {0, "10.0.0.2", 2 * h},
				{3 * h, "10.0.0.3", h}, {3 * h, "10.0.0.4", 2 * h}, {3 * h, "10.0.0.5", 3 * h},
			},
			reload:            2,
			banned:            []string{"10.0.0.4", "10.0.0.5"},
			free:              []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"},
			gone:              []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"},
			bansEvicted:       1,
			rememberedEvicted: 2,
		},
		{
			name: "records past their forget time are forgotten, not evicted",
			max:  3,
			bans: []ban{
				{0, "10.0.0.1", h}, {0, "10.0.0.2", h}, // forgotten at 169h
				{170 * h, "10.0.0.3", h}, {170 * h, "10.0.0.4", h}, {170 * h, "10.0.0.5", h},
			},
			banned: []string{"10.0.0.3", "10.0.0.4", "10.0.0.5"},
			free:   []string{"10.0.0.1", "10.0.0.2"},
			gone:   []string{"10.0.0.1", "10.0.0.2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, Config{MaxTracked: tt.max}, nil)
			var at time.Duration
			for _, b := range tt.bans {
				at = b.at
				if _, err := l.BanKey(t0.Add(at), netip.MustParsePrefix(b.addr+"/32"), b.d, ""); err != nil {
					t.Fatal(err)
				}
			}
			if tt.reload > 0 {
				if err := l.Reload(Config{MaxTracked: tt.reload}); err != nil {
					t.Fatal(err)
				}
			}
			now := t0.Add(at)
			for _, a := range tt.banned {
				if d := l.Check(now, netip.MustParseAddr(a)); d.Allowed {
					t.Errorf("%s: allowed, want its ban in force", a)
				}
			}
			for _, a := range tt.free {
				if d := l.Check(now, netip.MustParseAddr(a)); !d.Allowed {
					t.Errorf("%s: refused by %+v, want allowed", a, d.Ban)
				}
			}
			if s := l.Stats(); s.BansEvicted != tt.bansEvicted || s.RememberedEvicted != tt.rememberedEvicted ||
				s.Banned != len(tt.banned) {
				t.Errorf("Stats = %+v; want BansEvicted %d, RememberedEvicted %d, Banned %d",
					s, tt.bansEvicted, tt.rememberedEvicted, len(tt.banned))
			}
			if got := len(l.Bans(now)); got != len(tt.banned) {
				t.Errorf("Bans lists %d, want %d", got, len(tt.banned))
			}
			l.mu.RLock()
			defer l.mu.RUnlock()
			for _, a := range tt.remembered {
				if r := l.bans.recs[keyOf(netip.MustParsePrefix(a+"/32"))]; r == nil || r.active {
					t.Errorf("%s: record %+v, want its ended ban remembered", a, r)
				}
			}
			for _, a := range tt.gone {
				if r := l.bans.recs[keyOf(netip.MustParsePrefix(a+"/32"))]; r != nil {
					t.Errorf("%s: record %+v kept, want none", a, r.ban)
				}
			}
		})
	}
}

// TestBansPageListsActiveOnce: paging through a table that also holds
// ended records lists every ban in force exactly once, and only those.
func TestBansPageListsActiveOnce(t *testing.T) {
	l := newLimiter(t, Config{MaxTracked: 1000}, nil)
	key := func(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.0.%d.%d/32", i/256, i%256)) }
	for i := range 300 { // ended at 3h
		if _, err := l.BanKey(t0, key(i), time.Hour, ""); err != nil {
			t.Fatal(err)
		}
	}
	now := t0.Add(3 * time.Hour)
	for i := 300; i < 550; i++ {
		if _, err := l.BanKey(now, key(i), time.Duration(i)*time.Minute, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, limit := range []int{1, 7, 100, 1000} {
		seen := map[netip.Prefix]bool{}
		pages := 0
		for cursor := 0; ; {
			page, next := l.BansPage(now, cursor, limit)
			pages++
			if len(page) > limit {
				t.Fatalf("limit %d: a page of %d", limit, len(page))
			}
			for _, b := range page {
				if seen[b.Key] || !b.Active(now) {
					t.Fatalf("limit %d: %+v listed twice or not in force", limit, b)
				}
				seen[b.Key] = true
			}
			if next == 0 {
				break
			}
			cursor = next
		}
		if len(seen) != 250 {
			t.Errorf("limit %d: pages listed %d bans, want 250", limit, len(seen))
		}
		if want := (250 + limit - 1) / limit; pages != want {
			t.Errorf("limit %d: %d pages, want %d (ended records are not paged)", limit, pages, want)
		}
	}
}

// TestInstallRanksTheIncomingBan: a ban from the shared store or another
// limiter (installLocked: a resync loads every ban the store holds, ended
// ones too) takes a place in a full table only from a record it outranks:
// an ended ban never evicts a ban in force, and evicts an ended record
// only if it is forgotten later.
func TestInstallRanksTheIncomingBan(t *testing.T) {
	h := time.Hour
	p := func(a string) netip.Prefix { return netip.MustParsePrefix(a + "/32") }
	ban := func(a string, since, d time.Duration) Ban {
		until := t0.Add(since + d)
		return Ban{Key: p(a), Since: t0.Add(since), Until: until, Forget: until.Add(DefaultMaxBanTime), Count: 1}
	}
	l := newLimiter(t, Config{MaxTracked: 2}, nil)
	for i, a := range []string{"10.0.0.1", "10.0.0.2"} { // in force until 5h and 6h
		if _, err := l.BanKey(t0.Add(3*h), p(a), time.Duration(2+i)*h, ""); err != nil {
			t.Fatal(err)
		}
	}
	install := func(b Ban) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.installLocked(l.cfg.Load(), b)
	}
	// Full of bans in force: an ended ban from the store is not installed.
	if install(ban("10.0.0.9", 0, h)) {
		t.Error("an ended ban took the place of a ban in force")
	}
	// A ban in force ending later takes the place of the one ending first.
	if !install(ban("10.0.0.3", 3*h, 4*h)) {
		t.Error("a ban in force ending later was not installed")
	}
	for a, want := range map[string]bool{"10.0.0.1": true, "10.0.0.2": false, "10.0.0.3": false, "10.0.0.9": true} {
		if got := l.Check(t0.Add(3*h), netip.MustParseAddr(a)).Allowed; got != want {
			t.Errorf("%s: Allowed = %v, want %v", a, got, want)
		}
	}
	// Both ended at 8h: the record forgotten first (10.0.0.2's) gives way
	// to an ended ban forgotten later, and not to one forgotten sooner.
	l.advance(t0.Add(8 * h))
	if install(ban("10.0.0.8", 0, h)) {
		t.Error("an ended ban forgotten sooner evicted one forgotten later")
	}
	if !install(ban("10.0.0.7", 6*h, time.Minute)) {
		t.Error("an ended ban forgotten later was not installed")
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.bans.recs[keyOf(p("10.0.0.7"))] == nil || l.bans.recs[keyOf(p("10.0.0.8"))] != nil || l.bans.len() != 2 {
		t.Errorf("table holds %d records; want 10.0.0.7's among them, not 10.0.0.8's", l.bans.len())
	}
}

// TestEvictionKeepsTheStore: a ban change the store failed to write is
// written again later from the table (retry.go); if its record was
// evicted meanwhile, the table holds nothing for the key, which must not
// be written as a deletion — an eviction frees memory, it is no unban. The
// store keeps what it had. An explicit Unban still deletes, retried like
// a ban, even when the key's record was evicted before.
func TestEvictionKeepsTheStore(t *testing.T) {
	h := time.Hour
	x, y := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32")
	fs := &flakyStore{MemoryStore: NewMemoryStore()}
	broken := func(b bool) { fs.mu.Lock(); fs.broken = b; fs.mu.Unlock() }
	stored := func(p netip.Prefix) (Ban, bool) {
		bans, err := fs.MemoryStore.LoadBans(time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bans {
			if b.Key == p {
				return b, true
			}
		}
		return Ban{}, false
	}
	l := newLimiter(t, Config{MaxTracked: 2}, fs)
	defer l.Close()
	if _, err := l.BanKey(t0, x, h, ""); err != nil { // saved
		t.Fatal(err)
	}
	broken(true)
	if _, err := l.BanKey(t0.Add(2*h), x, h, ""); err == nil { // count 2: not saved, retried
		t.Fatal("BanKey saved with the store broken")
	}
	if _, err := l.BanKey(t0.Add(2*h), y, 2*h, ""); err == nil {
		t.Fatal("BanKey saved with the store broken")
	}
	if err := l.Reload(Config{MaxTracked: 1}); err != nil { // evicts x's record, ending first
		t.Fatal(err)
	}
	if s := l.Stats(); s.BansEvicted != 1 || s.Unsaved != 2 {
		t.Fatalf("Stats = %+v, want x's ban evicted and two changes to retry", s)
	}
	broken(false)
	waitUnsaved := func() {
		t.Helper()
		for start := time.Now(); l.Stats().Unsaved != 0; time.Sleep(10 * time.Millisecond) {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("retries not done: %+v", l.Stats())
			}
		}
	}
	waitUnsaved()
	if b, ok := stored(x); !ok || b.Count != 1 {
		t.Errorf("store holds %+v (%v) for x, want its first ban kept: an eviction is no unban", b, ok)
	}
	if _, ok := stored(y); !ok {
		t.Error("y's ban not written by the retry")
	}
	// An explicit unban of the evicted x, which fails and is retried,
	// deletes it.
	broken(true)
	if _, err := l.Unban(x); err == nil {
		t.Fatal("Unban wrote to a broken store")
	}
	broken(false)
	waitUnsaved()
	if b, ok := stored(x); ok {
		t.Errorf("store holds %+v for x after its unban", b)
	}
	if _, ok := stored(y); !ok {
		t.Error("y's ban deleted from the store")
	}
}
