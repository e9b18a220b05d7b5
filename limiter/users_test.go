package limiter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// ut0 is the start of every Users step table.
var ut0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type uev int

const (
	uCheck   uev = iota // Check; want is its decision
	uFailure            // Failure; want is its decision
	uGuess              // Check, then Failure whatever Check said (the proxy counts throttled guesses too); want is Check's
	uSuccess            // Success; no want
)

func (e uev) String() string { return [...]string{"check", "failure", "guess", "success"}[e] }

type ustep struct {
	at   time.Duration // offset from ut0
	ev   uev
	user string
	key  string // a prefix, as Limiter.Key returns
	want UserDecision
}

func newUsers(t testing.TB, cfg UserConfig) *Users {
	t.Helper()
	u, err := NewUsers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func runUsers(t *testing.T, u *Users, steps []ustep) {
	t.Helper()
	for i, st := range steps {
		now, key := ut0.Add(st.at), netip.MustParsePrefix(st.key)
		var d UserDecision
		switch st.ev {
		case uCheck:
			d = u.Check(now, st.user, key)
		case uFailure:
			d = u.Failure(now, st.user, key)
		case uGuess:
			d = u.Check(now, st.user, key)
			u.Failure(now, st.user, key)
		case uSuccess:
			u.Success(now, st.user, key)
			continue
		}
		if d != st.want {
			t.Fatalf("step %d (%v %s %q %s): got %+v, want %+v", i, st.at, st.ev, st.user, st.key, d, st.want)
		}
	}
}

// Decisions, for short tables.
func urem(n int) UserDecision { return UserDecision{Remaining: n} }

var (
	uThrottled = UserDecision{Throttled: true}
	uTooMany   = func(n int) UserDecision { return UserDecision{TooManyNames: true, Remaining: n} }
	uGood      = func(n int) UserDecision { return UserDecision{KnownGood: true, Remaining: n} }
)

const (
	kOwner = "203.0.113.7/32"
	kBot1  = "198.51.100.1/32"
	kBot2  = "198.51.100.2/32"
	kBot3  = "2001:db8:1::/64"
	kBot4  = "198.51.100.4/32"
	kBot5  = "198.51.100.5/32"
)

func TestUsersSteps(t *testing.T) {
	s := time.Second
	m := time.Minute
	tests := []struct {
		name  string
		cfg   UserConfig
		steps []ustep
	}{
		{"off", UserConfig{}, []ustep{
			{0, uGuess, "alice", kBot1, UserDecision{}},
			{0, uGuess, "alice", kBot1, UserDecision{}},
			{0, uFailure, "alice", kBot1, UserDecision{}},
			{0, uSuccess, "alice", kOwner, UserDecision{}},
			{0, uCheck, "alice", kOwner, UserDecision{}},
		}},
		{"spent across keys", UserConfig{Failures: 3, Window: 30 * m}, []ustep{
			{0, uSuccess, "alice", kOwner, UserDecision{}},
			{1 * s, uGuess, "alice", kBot1, urem(3)},
			{2 * s, uGuess, "alice", kBot2, urem(2)},
			{3 * s, uFailure, "alice", kBot3, uThrottled}, // spent by this failure
			{4 * s, uCheck, "alice", kBot4, uThrottled},
			{4 * s, uFailure, "alice", kBot4, uThrottled},
			{5 * s, uCheck, "alice", kOwner, uGood(0)},              // the owner is never locked out
			{5 * s, uFailure, "alice", kOwner, uGood(0)},            // its typos count, but do not throttle it
			{6 * s, uCheck, "bob", kBot4, urem(3)},                  // other names keep their budget
			{6 * s, uCheck, "Alice", kBot4, uThrottled},             // one account under any case (CanonicalUser)
			{6 * s, uCheck, "alice ", kBot4, urem(3)},               // but a space is a character
			{6 * s, uCheck, "alice", "198.51.100.4/24", uThrottled}, // a wider key is another key
		}},
		{"refill", UserConfig{Failures: 3, Window: 30 * m}, []ustep{
			{0, uFailure, "alice", kBot1, urem(2)},
			{0, uFailure, "alice", kBot1, urem(1)},
			{0, uFailure, "alice", kBot1, uThrottled},
			{10*m - s, uCheck, "alice", kBot2, uThrottled},
			{10 * m, uCheck, "alice", kBot2, urem(1)}, // one token per Window/Failures
			{20 * m, uCheck, "alice", kBot2, urem(2)},
			{30 * m, uCheck, "alice", kBot2, urem(3)},
			{90 * m, uCheck, "alice", kBot2, urem(3)}, // capped at Failures
		}},
		{"throttled guesses keep it spent", UserConfig{Failures: 3, Window: 30 * m}, []ustep{
			{0, uGuess, "alice", kBot1, urem(3)},
			{0, uGuess, "alice", kBot1, urem(2)},
			{0, uGuess, "alice", kBot1, urem(1)},
			{9 * m, uGuess, "alice", kBot2, uThrottled}, // 0.9 token lost
			{18 * m, uGuess, "alice", kBot3, uThrottled},
			{27 * m, uGuess, "alice", kBot4, uThrottled},
			{37*m - s, uCheck, "alice", kBot5, uThrottled},
			{37 * m, uCheck, "alice", kBot5, urem(1)}, // Window/Failures after the last guess
			{57 * m, uCheck, "alice", kBot5, urem(3)}, // Window after it: no debt
		}},
		{"known-good ttl", UserConfig{Failures: 1, Window: 10 * time.Hour, KnownGoodTTL: time.Hour}, []ustep{
			{0, uGuess, "alice", kBot1, urem(1)},
			{1 * s, uSuccess, "alice", kOwner, UserDecision{}},
			{2 * s, uCheck, "alice", kBot1, uThrottled},
			{time.Hour, uCheck, "alice", kOwner, uGood(0)},
			{time.Hour + s, uCheck, "alice", kOwner, uThrottled}, // expired
			{2 * time.Hour, uSuccess, "alice", kOwner, UserDecision{}},
			{2*time.Hour + 50*m, uSuccess, "alice", kOwner, UserDecision{}}, // refreshes
			{3*time.Hour + 49*m, uCheck, "alice", kOwner, uGood(0)},
			{3*time.Hour + 49*m, uCheck, "alice", kBot2, uThrottled}, // per key
			{3*time.Hour + 49*m, uCheck, "bob", kOwner, urem(1)},     // and per name
			{3*time.Hour + 50*m, uCheck, "alice", kOwner, uThrottled},
			// A success does not refill the budget.
			{4 * time.Hour, uSuccess, "alice", kBot2, UserDecision{}},
			{4 * time.Hour, uCheck, "alice", kBot1, uThrottled},
		}},
		{"names per key", UserConfig{Failures: 100, Window: 10 * m, MaxNamesPerKey: 2}, []ustep{
			{0, uCheck, "a", kBot1, urem(100)},
			{1 * m, uCheck, "b", kBot1, urem(100)},
			{2 * m, uCheck, "a", kBot1, urem(100)}, // the same name again is fine
			{3 * m, uCheck, "c", kBot1, uTooMany(100)},
			{3 * m, uCheck, "a", kBot2, urem(100)},     // another key
			{4 * m, uCheck, "a", kBot1, uTooMany(100)}, // over the cap, whatever the name
			{4 * m, uFailure, "a", kBot1, UserDecision{TooManyNames: true, Remaining: 99}},
			{11 * m, uCheck, "a", kBot1, urem(100)}, // b (1m) forgotten: {a, c}
			{12 * m, uCheck, "d", kBot1, uTooMany(100)},
			{13 * m, uCheck, "d", kBot1, urem(100)}, // c (3m) forgotten: {a, d}
			// A sprayer stays refused while it sprays (the set keeps the
			// newest MaxNamesPerKey+1 names)...
			{14 * m, uCheck, "e", kBot1, uTooMany(100)}, // {a11 d13 e14}
			{15 * m, uCheck, "f", kBot1, uTooMany(100)}, // {d13 e14 f15}
			{22 * m, uCheck, "g", kBot1, uTooMany(100)}, // {e14 f15 g22}
			{23 * m, uCheck, "a", kBot1, uTooMany(100)}, // {f15 g22 a23}
			// ...and is let through once its names within Window are back
			// to MaxNamesPerKey.
			{25*m - s, uCheck, "a", kBot1, uTooMany(100)},
			{25 * m, uCheck, "a", kBot1, urem(100)}, // f forgotten: {g22 a25}
			{25 * m, uCheck, "b", kBot1, uTooMany(100)},
		}},
		{"known-good names do not count", UserConfig{Failures: 100, Window: 10 * m, MaxNamesPerKey: 1}, []ustep{
			{0, uSuccess, "x", kBot1, UserDecision{}},
			{1 * s, uCheck, "y", kBot1, urem(100)},
			{2 * s, uCheck, "x", kBot1, uGood(100)},
			{3 * s, uCheck, "z", kBot1, uTooMany(100)},
			{4 * s, uCheck, "x", kBot1, uGood(100)}, // never refused
			// A name that logs in leaves the key's set.
			{0, uCheck, "p", kBot2, urem(100)},
			{1 * s, uSuccess, "p", kBot2, UserDecision{}},
			{2 * s, uCheck, "q", kBot2, urem(100)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runUsers(t, newUsers(t, tt.cfg), tt.steps)
		})
	}
}

// TestUsersBotnet spreads guesses for one name over 1000 keys, one each.
func TestUsersBotnet(t *testing.T) {
	const failures = 50
	u := newUsers(t, UserConfig{Failures: failures, Window: time.Hour, MaxNamesPerKey: 10})
	owner := netip.MustParsePrefix(kOwner)
	u.Success(ut0, "root", owner)
	forwarded := 0
	for i := range 1000 {
		now := ut0.Add(time.Duration(i) * time.Millisecond)
		key := netip.PrefixFrom(addrN(0xc6336400+uint32(i)), 32)
		d := u.Check(now, "root", key)
		if d.TooManyNames || d.KnownGood {
			t.Fatalf("guess %d: %+v", i, d)
		}
		if !d.Throttled {
			forwarded++
		}
		u.Failure(now, "root", key)
		if d := u.Check(now, "root", owner); !d.KnownGood || d.Throttled {
			t.Fatalf("owner after guess %d: %+v", i, d)
		}
	}
	if forwarded != failures {
		t.Errorf("forwarded %d guesses, want %d", forwarded, failures)
	}
	if s := u.Stats(); s.Throttled != 1000-failures || s.Users != 1 || s.KnownGood != 1 || s.Keys != 1000 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestUsersReload(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 3, Window: 30 * time.Minute})
	k := netip.MustParsePrefix(kBot1)
	at := func(d time.Duration) time.Time { return ut0.Add(d) }
	want := func(name string, got UserDecision, w UserDecision) {
		t.Helper()
		if got != w {
			t.Fatalf("%s: got %+v, want %+v", name, got, w)
		}
	}
	reload := func(cfg UserConfig) {
		t.Helper()
		if err := u.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	u.Failure(at(0), "alice", k)
	want("two failures", u.Failure(at(0), "alice", k), urem(1))

	reload(UserConfig{Failures: 5, Window: 50 * time.Minute}) // the same rate, a bigger burst
	want("after growing", u.Check(at(0), "alice", k), urem(1))

	err := u.Reload(UserConfig{Failures: -1, MaxTracked: -1})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "user_limits.failures" {
		t.Fatalf("Reload(invalid) = %v", err)
	}
	want("after a bad reload", u.Check(at(0), "alice", k), urem(1))

	reload(UserConfig{}) // off
	want("off", u.Check(at(0), "alice", k), UserDecision{})
	want("off failure", u.Failure(at(0), "alice", k), UserDecision{})
	if s := u.Stats(); s.Users != 1 {
		t.Fatalf("off: Stats = %+v, want the budget kept", s)
	}

	reload(UserConfig{Failures: 5, Window: 50 * time.Minute})
	want("on again", u.Check(at(20*time.Minute), "alice", k), urem(3))
	want("refilled", u.Check(at(40*time.Minute), "alice", k), urem(5))

	reload(UserConfig{Failures: 1, Window: 10 * time.Minute})
	want("after shrinking", u.Check(at(40*time.Minute), "alice", k), urem(1))

	reload(UserConfig{Failures: 5, Window: time.Hour})
	for _, name := range []string{"alice", "bob", "carol"} {
		want(name, u.Failure(at(41*time.Minute), name, k), urem(4))
	}
	reload(UserConfig{Failures: 5, Window: time.Hour, MaxTracked: 1})
	if s := u.Stats(); s.Users != 1 || s.Evicted != 2 {
		t.Fatalf("after shrinking MaxTracked: Stats = %+v", s)
	}
	want("survivor", u.Check(at(41*time.Minute), "carol", k), urem(4))
	want("forgotten", u.Check(at(41*time.Minute), "alice", k), urem(5))
}

func TestUsersEviction(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 2, Window: time.Hour, MaxNamesPerKey: 1, MaxTracked: 3})
	k := netip.MustParsePrefix(kBot1)
	for i := range 5 {
		u.Failure(ut0, fmt.Sprint("u", i), k)
	}
	if s := u.Stats(); s.Users != 3 || s.Evicted != 2 {
		t.Fatalf("budgets: Stats = %+v", s)
	}
	for i, rem := range []int{2, 2, 1, 1, 1} { // u0, u1 forgotten
		if d := u.Check(ut0, fmt.Sprint("u", i), k); d.Remaining != rem {
			t.Errorf("u%d: %+v, want Remaining %d", i, d, rem)
		}
	}

	// Full budgets go before live ones: no more evictions.
	later := ut0.Add(2 * time.Hour)
	for i := range 3 {
		u.Failure(later, fmt.Sprint("v", i), k)
	}
	if s := u.Stats(); s.Users != 3 || s.Evicted != 2 {
		t.Fatalf("budgets after refill: Stats = %+v", s)
	}

	for i := range 5 {
		u.Success(later, "alice", netip.PrefixFrom(addrN(uint32(i)), 32))
	}
	if s := u.Stats(); s.KnownGood != 3 || s.Evicted != 4 {
		t.Fatalf("known-good: Stats = %+v", s)
	}
	for i, good := range []bool{false, false, true, true, true} {
		if d := u.Check(later, "alice", netip.PrefixFrom(addrN(uint32(i)), 32)); d.KnownGood != good {
			t.Errorf("pair %d: %+v, want KnownGood %v", i, d, good)
		}
	}
	// Name sets are bounded: the keys of the checks above (2 not known-good)
	// plus 5 more.
	for i := range 5 {
		u.Check(later, "bob", netip.PrefixFrom(addrN(uint32(100+i)), 32))
	}
	if s := u.Stats(); s.Keys != 3 {
		t.Fatalf("keys: Stats = %+v", s)
	}
	// Each set holds at most MaxNamesPerKey+1 names.
	for i := range 100 {
		u.Check(later, fmt.Sprint("spray", i), k)
	}
	if n := len(u.keys.get(keyOf(k)).val.seen); n != 2 {
		t.Errorf("name set of a sprayer holds %d names, want 2", n)
	}
	// Everything dead is swept.
	u.Check(later.Add(1000*time.Hour), "x", k)
	if s := u.Stats(); s.Users != 0 || s.KnownGood != 0 || s.Keys != 1 {
		t.Errorf("after everything expired: Stats = %+v", s)
	}
}

func TestUsersLongNames(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 1, Window: time.Hour})
	k := netip.MustParsePrefix(kBot1)
	long := strings.Repeat("x", 1<<20)
	names := []string{
		long + "1",
		long + "2",
		strings.Repeat("x", MaxUserName),   // stored as is
		strings.Repeat("x", MaxUserName+1), // hashed
		strings.Repeat("x", MaxUserName-1), // stored as is
		strings.Repeat("x", MaxUserName-8), // the kept prefix of a hashed name
		strings.Repeat("x", MaxUserName) + "\x00",
	}
	for i, name := range names {
		if d := u.Check(ut0, name, k); d.Throttled {
			t.Fatalf("name %d throttled before any failure for it (it shares a budget)", i)
		}
		u.Failure(ut0, name, k)
		if d := u.Check(ut0, name, k); !d.Throttled {
			t.Fatalf("name %d not throttled after its failure", i)
		}
	}
	if s := u.Stats(); s.Users != len(names) {
		t.Errorf("Stats = %+v, want %d names", s, len(names))
	}
	// A stored name has a fixed size and no pointer: the megabyte name is
	// not retained.
	if n := unsafe.Sizeof(uname{}); n != MaxUserName+1 {
		t.Errorf("uname is %d bytes", n)
	}
	if a, _ := u.canon(long + "1"); a.n != uHashed || string(a.b[:MaxUserName-8]) != long[:MaxUserName-8] {
		t.Errorf("canon(long) = %+v", a)
	}
}

func TestUsersInvalidKey(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 1, Window: time.Hour, MaxNamesPerKey: 1})
	var bad netip.Prefix
	u.Success(ut0, "alice", bad)
	u.Failure(ut0, "alice", bad)
	if d := u.Check(ut0, "alice", bad); d != uThrottled {
		t.Errorf("Check with the invalid key = %+v", d)
	}
	if s := u.Stats(); s.KnownGood != 0 {
		t.Errorf("Stats = %+v: the invalid key was remembered", s)
	}
}

func TestUsersValidate(t *testing.T) {
	tests := []struct {
		cfg  UserConfig
		want string // "" = valid
	}{
		{UserConfig{}, ""},
		{UserConfig{Failures: 1, Window: time.Second, KnownGoodTTL: time.Second, MaxNamesPerKey: 1000, MaxTracked: 1}, ""},
		{UserConfig{Failures: -1}, "limiter: user_limits.failures must be ≥ 0"},
		{UserConfig{Failures: 1 << 31}, "limiter: user_limits.failures must be ≤ 2147483647"},
		{UserConfig{Window: -1}, "limiter: user_limits.window must be > 0"},
		{UserConfig{KnownGoodTTL: -time.Hour}, "limiter: user_limits.known_good_ttl must be > 0"},
		{UserConfig{MaxNamesPerKey: -1}, "limiter: user_limits.max_names_per_key must be ≥ 0"},
		{UserConfig{MaxNamesPerKey: 1001}, "limiter: user_limits.max_names_per_key must be ≤ 1000"},
		{UserConfig{MaxTracked: -1}, "limiter: user_limits.max_tracked must be ≥ 1"},
		{UserConfig{MaxTracked: 1 << 31}, "limiter: user_limits.max_tracked must be ≤ 2147483647"},
		{UserConfig{Failures: -1, Window: -1}, "limiter: user_limits.failures must be ≥ 0\nlimiter: user_limits.window must be > 0"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		got := ""
		if err != nil {
			got = err.Error()
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.HasPrefix(tt.want, "limiter: "+ce.Key+" ") {
				t.Errorf("Validate(%+v): no *ConfigError for the key (%v)", tt.cfg, err)
			}
		}
		if got != tt.want {
			t.Errorf("Validate(%+v) = %q, want %q", tt.cfg, got, tt.want)
		}
		if _, err := NewUsers(tt.cfg); (err == nil) != (tt.want == "") {
			t.Errorf("NewUsers(%+v) = %v", tt.cfg, err)
		}
	}
}

// TestUsersNoAllocs: the steady state of a known name and key allocates
// nothing, and neither does a full table that evicts on every failure.
func TestUsersNoAllocs(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 5, Window: time.Hour, MaxNamesPerKey: 10, MaxTracked: 64})
	k := netip.MustParsePrefix(kBot1)
	u.Failure(ut0, "alice", k)
	if n := testing.AllocsPerRun(100, func() {
		u.Check(ut0, "alice", k)
		u.Failure(ut0, "alice", k)
		u.Success(ut0, "alice", k)
	}); n != 0 {
		t.Errorf("known name and key: %v allocs", n)
	}
	names := make([]string, 1024)
	for i := range names {
		names[i] = fmt.Sprint("user", i)
	}
	for _, n := range names[:128] {
		u.Failure(ut0, n, k)
	}
	i := 0
	if n := testing.AllocsPerRun(500, func() {
		u.Failure(ut0, names[i%len(names)], k)
		i++
	}); n != 0 {
		t.Errorf("evicting: %v allocs", n)
	}
}

func TestUsersConcurrent(t *testing.T) {
	const maxTracked = 64
	u := newUsers(t, UserConfig{Failures: 3, Window: time.Minute, MaxNamesPerKey: 4, MaxTracked: maxTracked})
	var clock atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 3000 {
				now := ut0.Add(time.Duration(clock.Add(int64(time.Millisecond))))
				name := fmt.Sprint("u", (i*7+g)%100)
				key := netip.PrefixFrom(addrN(uint32((i*13+g)%300)), 32)
				switch i % 5 {
				case 0, 1:
					u.Check(now, name, key)
				case 2, 3:
					u.Failure(now, name, key)
				case 4:
					u.Success(now, name, key)
				}
				if i%500 == 0 {
					u.Stats()
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			if err := u.Reload(UserConfig{Failures: 1 + i%4, Window: time.Minute, MaxNamesPerKey: i % 3, MaxTracked: maxTracked - i%2}); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if s := u.Stats(); s.Users > maxTracked || s.KnownGood > maxTracked || s.Keys > maxTracked {
		t.Errorf("Stats = %+v, want every table ≤ %d", s, maxTracked)
	}

	// The budget counts every failure, whichever goroutine made it.
	u = newUsers(t, UserConfig{Failures: 100, Window: time.Hour})
	for g := range 10 {
		wg.Go(func() {
			for i := range 10 {
				u.Failure(ut0, "alice", netip.PrefixFrom(addrN(uint32(g*10+i)), 32))
			}
		})
	}
	wg.Wait()
	if d := u.Check(ut0, "alice", netip.MustParsePrefix(kOwner)); d != uThrottled {
		t.Errorf("after 100 concurrent failures: %+v", d)
	}
}

// BenchmarkUsersCheckFailure is a failed guess (Check, then Failure) for
// 4096 names from 65536 keys, in parallel.
func BenchmarkUsersCheckFailure(b *testing.B) {
	u := newUsers(b, UserConfig{Failures: 5, Window: time.Hour, MaxNamesPerKey: 10})
	names := make([]string, 1<<12)
	for i := range names {
		names[i] = fmt.Sprintf("user%04d", i)
	}
	keys := make([]netip.Prefix, 1<<16)
	for i := range keys {
		keys[i] = netip.PrefixFrom(addrN(0xc6330000+uint32(i)), 32)
	}
	var seed atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seed.Add(7919)
		for pb.Next() {
			i++
			now := ut0.Add(time.Duration(i) * time.Millisecond)
			name, key := names[i&(1<<12-1)], keys[(i*31)&(1<<16-1)]
			u.Check(now, name, key)
			u.Failure(now, name, key)
		}
	})
}

// TestUsersAttemptHolds: guesses in flight hold places in the username's
// budget, so that a burst of guesses sent before the daemon answered the
// first cannot all pass; a known-good key holds nothing and is never
// throttled; Release gives the place back whatever the outcome.
func TestUsersAttemptHolds(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 2, Window: time.Hour})
	now := time.Now()
	key := func(i int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 32) }
	owner := netip.MustParsePrefix("192.0.2.1/32")
	u.Success(now, "alice", owner)
	a, b := u.Attempt(now, "alice", key(1)), u.Attempt(now, "alice", key(2))
	if !a.Held || !b.Held || a.Throttled || b.Throttled {
		t.Fatalf("first two guesses: %+v, %+v; want both held", a, b)
	}
	if d := u.Attempt(now, "alice", key(3)); !d.Throttled || !d.Busy || d.Held {
		t.Fatalf("third guess while two are in flight: %+v; want throttled, busy (to wait)", d)
	}
	if d := u.Check(now, "alice", key(4)); !d.Throttled {
		t.Fatalf("Check while two are in flight: %+v; want throttled", d)
	}
	if d := u.Attempt(now, "alice", owner); d.Throttled || d.Held || !d.KnownGood {
		t.Fatalf("the owner: %+v; want known-good, not held", d)
	}
	u.Failure(now, "alice", key(1))
	u.Release("alice")
	if d := u.Attempt(now, "alice", key(5)); !d.Throttled || !d.Busy {
		t.Fatalf("one failed (1 token left), one in flight: %+v; want throttled, busy", d)
	}
	u.Release("alice") // the second ended without an answer counted here
	if d := u.Attempt(now, "alice", key(6)); d.Throttled || !d.Held || d.Remaining != 1 {
		t.Fatalf("one token left, nothing in flight: %+v; want held", d)
	}
	u.Failure(now, "alice", key(6))
	if d := u.Attempt(now, "alice", key(7)); !d.Throttled || d.Busy {
		t.Fatalf("the budget spent: %+v; want throttled, not busy (paused)", d)
	}
	u.Release("alice")
	u.Release("alice") // one too many: harmless
	if d := u.Attempt(now, "bob", key(1)); d.Throttled || !d.Held {
		t.Fatalf("another name: %+v", d)
	}
}
