package limiter

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestMemoryStore(t *testing.T) {
	m := NewMemoryStore()
	k1, k2 := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/64")
	b1 := Ban{Key: k1, Since: t0, Until: t0.Add(2 * time.Hour), Forget: t0.Add(10 * time.Hour), Count: 2, Reason: ReasonBudget}
	b2 := Ban{Key: k2, Since: t0, Until: t0.Add(time.Hour), Count: 1, Reason: ReasonAdmin} // no Forget: kept until Until
	for _, b := range []Ban{b1, b2} {
		if err := m.SaveBan(b); err != nil {
			t.Fatal(err)
		}
	}
	load := func(at time.Duration) []Ban {
		t.Helper()
		got, err := m.LoadBans(t0.Add(at))
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := load(0); len(got) != 2 || got[0] != b2 || got[1] != b1 {
		t.Fatalf("LoadBans(0) = %+v", got)
	}
	if got := load(time.Hour); len(got) != 1 || got[0] != b1 { // b2 over, with nothing to remember
		t.Fatalf("LoadBans(1h) = %+v", got)
	}
	if got := load(3 * time.Hour); len(got) != 1 || got[0] != b1 { // b1 over, but remembered
		t.Fatalf("LoadBans(3h) = %+v", got)
	}
	b1b := b1
	b1b.Count, b1b.Until = 3, t0.Add(5*time.Hour)
	if err := m.SaveBan(b1b); err != nil { // replaces
		t.Fatal(err)
	}
	if got := load(3 * time.Hour); len(got) != 1 || got[0] != b1b {
		t.Fatalf("LoadBans after replace = %+v", got)
	}
	if err := m.DeleteBan(k1); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteBan(k1); err != nil { // absent: fine
		t.Fatal(err)
	}
	if got := load(0); len(got) != 0 {
		t.Fatalf("LoadBans after delete = %+v", got)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.SaveBan(b1); !errors.Is(err, ErrStoreClosed) {
		t.Fatalf("SaveBan after Close = %v", err)
	}
	if _, err := m.LoadBans(t0); !errors.Is(err, ErrStoreClosed) {
		t.Fatalf("LoadBans after Close = %v", err)
	}
	if err := m.DeleteBan(k1); !errors.Is(err, ErrStoreClosed) {
		t.Fatalf("DeleteBan after Close = %v", err)
	}
}

func TestMemoryStorePrunes(t *testing.T) {
	m := NewMemoryStore()
	for i := range 10_000 {
		since := t0.Add(time.Duration(i) * time.Hour)
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if err := m.SaveBan(Ban{Key: netip.PrefixFrom(a, 32), Since: since, Until: since.Add(time.Hour), Forget: since.Add(10 * time.Hour), Count: 1}); err != nil {
			t.Fatal(err)
		}
	}
	m.mu.Lock()
	n := len(m.bans)
	m.mu.Unlock()
	if n > 64 {
		t.Fatalf("MemoryStore holds %d bans, want ≤ 64 (10 relevant)", n)
	}
}

func TestMemoryStoreConcurrent(t *testing.T) {
	m := NewMemoryStore()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i)}), 32)
				_ = m.SaveBan(Ban{Key: k, Since: t0, Until: t0.Add(time.Hour), Count: 1})
				_, _ = m.LoadBans(t0)
				_ = m.DeleteBan(k)
			}
		})
	}
	wg.Wait()
}

// TestLimiterFromStore: a new Limiter enforces the bans of its store and
// continues their escalation counts.
func TestLimiterFromStore(t *testing.T) {
	const a, b = "192.0.2.1", "192.0.2.2"
	store := NewMemoryStore()
	l1 := newLimiter(t, Config{}, store)
	run(t, l1, join(
		guesses(0, a, 5, 5), // a: ban 1 [0, 1h)
		guesses(time.Hour, a, 5, 5),
		[]step{{at: time.Hour, ev: evCheck, addr: a, want: want{count: 2, until: 3 * time.Hour}}},
		guesses(0, b, 5, 5), // b: ban 1 [0, 1h), over by the time l2 starts
		[]step{{at: 0, ev: evBan, addr: "198.51.100.0/24", d: 30 * time.Hour}},
	))

	l2 := newLimiter(t, Config{}, store)
	if s := l2.Stats(); s.Banned != 3 {
		t.Fatalf("l2 Stats = %+v", s)
	}
	run(t, l2, join(
		[]step{
			{at: 2 * time.Hour, ev: evCheck, addr: a, want: want{count: 2, until: 3 * time.Hour}},
			{at: 2 * time.Hour, ev: evAttempt, addr: a, want: want{count: 2}},
			{at: 2 * time.Hour, ev: evCheck, addr: b, want: allowed},
			{at: 2 * time.Hour, ev: evCheck, addr: "198.51.100.200", want: want{until: 30 * time.Hour}},
		},
		guesses(3*time.Hour, a, 5, 5),
		[]step{{at: 3 * time.Hour, ev: evCheck, addr: a, want: want{count: 3, until: 7 * time.Hour}}},
		guesses(3*time.Hour, b, 5, 5),
		[]step{{at: 3 * time.Hour, ev: evCheck, addr: b, want: want{count: 2, until: 5 * time.Hour}}},
	))
	if got := len(l2.Bans(t0.Add(3 * time.Hour))); got != 3 {
		t.Fatalf("l2 has %d bans, want 3", got)
	}

	// Unban reaches the store: a third limiter does not see the ban, nor its count.
	if ok, err := l2.Unban(netip.MustParsePrefix(a + "/32")); !ok || err != nil {
		t.Fatalf("Unban = %v, %v", ok, err)
	}
	l3 := newLimiter(t, Config{}, store)
	run(t, l3, join(
		[]step{{at: 4 * time.Hour, ev: evCheck, addr: a, want: allowed}},
		guesses(4*time.Hour, a, 5, 5),
		[]step{{at: 4 * time.Hour, ev: evCheck, addr: a, want: want{count: 1, until: 5 * time.Hour}}},
	))
}

// flakyStore fails every call while broken.
type flakyStore struct {
	*MemoryStore
	mu     sync.Mutex
	broken bool
}

var errBroken = errors.New("disk on fire")

func (f *flakyStore) fail() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.broken
}

func (f *flakyStore) SaveBan(b Ban) error {
	if f.fail() {
		return errBroken
	}
	return f.MemoryStore.SaveBan(b)
}

func (f *flakyStore) DeleteBan(k netip.Prefix) error {
	if f.fail() {
		return errBroken
	}
	return f.MemoryStore.DeleteBan(k)
}

func (f *flakyStore) LoadBans(now time.Time) ([]Ban, error) {
	if f.fail() {
		return nil, errBroken
	}
	return f.MemoryStore.LoadBans(now)
}

func TestStoreErrors(t *testing.T) {
	const a = "192.0.2.1"
	fs := &flakyStore{MemoryStore: NewMemoryStore(), broken: true}
	l := newLimiter(t, Config{}, fs) // a failed load does not stop New
	if s := l.Stats(); s.StoreErrors != 1 {
		t.Fatalf("Stats = %+v", s)
	}
	if err := l.LastStoreError(); !errors.Is(err, ErrStore) || !errors.Is(err, errBroken) {
		t.Fatalf("LastStoreError = %v", err)
	}
	// Decisions go on: the ban applies in memory.
	run(t, l, join(
		guesses(0, a, 5, 5),
		[]step{{at: time.Second, ev: evCheck, addr: a, want: want{count: 1}}},
	))
	if s := l.Stats(); s.StoreErrors != 2 {
		t.Fatalf("Stats = %+v", s)
	}
	b, err := l.BanKey(t0, netip.MustParsePrefix("198.51.100.0/24"), time.Hour, "")
	if !errors.Is(err, ErrStore) || !errors.Is(err, errBroken) || !b.Key.IsValid() {
		t.Fatalf("BanKey = %+v, %v", b, err)
	}
	if d := l.Check(t0, netip.MustParseAddr("198.51.100.1")); d.Allowed {
		t.Fatal("ban not applied after a store error")
	}
	if ok, err := l.Unban(b.Key); !ok || !errors.Is(err, errBroken) {
		t.Fatalf("Unban = %v, %v", ok, err)
	}
	if s := l.Stats(); s.StoreErrors != 4 {
		t.Fatalf("Stats = %+v", s)
	}
	// Nothing reached the store.
	fs.mu.Lock()
	fs.broken = false
	fs.mu.Unlock()
	if got, _ := fs.LoadBans(t0); len(got) != 0 {
		t.Fatalf("store holds %v", got)
	}
	if got := l.LastStoreError(); got == nil {
		t.Fatal("LastStoreError forgot the error")
	}
}

// TestStoreSeesLatest: however store writes interleave, the store ends
// up with each key's latest ban.
func TestStoreSeesLatest(t *testing.T) {
	store := NewMemoryStore()
	l := newLimiter(t, Config{}, store)
	k := netip.MustParsePrefix("192.0.2.0/24")
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			_, _ = l.BanKey(t0, k, time.Duration(i+1)*time.Minute, "")
		})
	}
	wg.Wait()
	got, err := store.LoadBans(t0)
	if err != nil || len(got) != 1 {
		t.Fatalf("LoadBans = %v, %v", got, err)
	}
	if want := l.Bans(t0); len(want) != 1 || got[0] != want[0] || got[0].Count != 50 {
		t.Fatalf("store has %+v, limiter %+v", got[0], want)
	}
}

func TestMemoryStoreBounded(t *testing.T) {
	m := newMemoryStore(100)
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		// All still relevant; later ones are remembered longer.
		if err := m.SaveBan(Ban{Key: netip.PrefixFrom(a, 32), Since: t0, Until: t0.Add(time.Hour), Forget: t0.Add(time.Duration(1000+i) * time.Hour), Count: 1}); err != nil {
			t.Fatal(err)
		}
		if n := len(m.bans); n > 100 {
			t.Fatalf("after %d saves the store holds %d bans, want ≤ 100", i+1, n)
		}
	}
	got, _ := m.LoadBans(t0)
	if len(got) < 75 {
		t.Fatalf("store holds %d bans, want ≥ 75", len(got))
	}
	for _, b := range got {
		if b.Key.Addr().As4()[3] < 100 && b.Key.Addr().As4()[2] == 0 {
			t.Fatalf("kept %v, one of the first to be forgotten", b.Key)
		}
	}
}

// fixedStore loads a fixed list of bans.
type fixedStore struct {
	*MemoryStore
	bans []Ban
}

func (f fixedStore) LoadBans(time.Time) ([]Ban, error) { return f.bans, nil }

func TestRestoreNormalises(t *testing.T) {
	k := netip.MustParsePrefix("192.0.2.1/32")
	bans := []Ban{
		{Key: netip.MustParsePrefix("::ffff:192.0.2.1/128"), Until: t0.Add(2 * time.Hour), Count: 3}, // no Forget
		{Key: k, Until: t0.Add(time.Hour), Count: 2},                                                 // same key, earlier: dropped
		{Key: netip.MustParsePrefix("192.0.2.99/24"), Until: t0.Add(time.Hour)},                      // masked; Count 0 → 1
		{Key: netip.Prefix{}, Until: t0.Add(time.Hour)},                                              // invalid: skipped
		{Key: netip.MustParsePrefix("198.51.100.1/32")},                                              // no Until: skipped
	}
	l := newLimiter(t, Config{}, fixedStore{NewMemoryStore(), bans})
	got := l.Bans(t0)
	if len(got) != 2 || got[0].Key != netip.MustParsePrefix("192.0.2.0/24") || got[0].Count != 1 ||
		got[1].Key != k || got[1].Count != 3 || !got[1].Forget.Equal(t0.Add(170*time.Hour)) {
		t.Fatalf("Bans = %+v", got)
	}
	// Escalation goes on from the loaded count.
	run(t, l, join(
		guesses(2*time.Hour, "192.0.2.1", 5, 5),
		[]step{{at: 2 * time.Hour, ev: evCheck, addr: "192.0.2.1", want: want{count: 4, until: 10 * time.Hour}}},
	))
	if l.LastStoreError() != nil {
		t.Fatal(l.LastStoreError())
	}
}
