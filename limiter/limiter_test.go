package limiter

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// t0 is the start of every step table.
var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type event int

const (
	evCheck    event = iota
	evAttempt        // Attempt
	evFailure        // Failure (settles an earlier Attempt)
	evGuess          // Attempt, then Failure if allowed: a failed PASS; want is the last decision
	evSuccess        // Success
	evRelease        // Release
	evBan            // BanKey(prefix in addr, d, "")
	evUnban          // Unban(prefix in addr); want.allowed is its bool
	evPenalize       // Penalize (a failure with no Attempt before it)
)

func (e event) String() string {
	return [...]string{"check", "attempt", "failure", "guess", "success", "release", "ban", "unban", "penalize"}[e]
}

// want is what a step's Decision (or Ban) must be. count and until are only
// checked when non-zero; until is an offset from t0.
type want struct {
	busy        bool
	allowed     bool
	newBan      bool
	remaining   int
	allowlisted bool
	count       int
	until       time.Duration
}

type step struct {
	at   time.Duration // offset from t0
	ev   event
	addr string // an address, or a prefix for evBan/evUnban
	d    time.Duration
	want want
}

// guesses returns n failed-guess steps at time at for addr, wanting the
// budget to count down from first remaining token (the last one bans when it
// reaches 0).
func guesses(at time.Duration, addr string, n, first int) []step {
	var out []step
	for i := range n {
		rem := first - 1 - i
		w := want{allowed: rem > 0, remaining: max(rem, 0), newBan: rem == 0}
		if rem < 0 {
			w = want{}
		}
		out = append(out, step{at: at, ev: evGuess, addr: addr, want: w})
	}
	return out
}

func join(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// run plays steps against l.
func run(t *testing.T, l *Limiter, steps []step) {
	t.Helper()
	for i, st := range steps {
		now := t0.Add(st.at)
		name := fmt.Sprintf("step %d (%v %s %s)", i, st.at, st.ev, st.addr)
		var d Decision
		switch st.ev {
		case evCheck:
			d = l.Check(now, netip.MustParseAddr(st.addr))
		case evAttempt:
			d = l.Attempt(now, netip.MustParseAddr(st.addr))
		case evFailure:
			d = l.Failure(now, netip.MustParseAddr(st.addr))
		case evPenalize:
			d = l.Penalize(now, netip.MustParseAddr(st.addr))
		case evGuess:
			a := netip.MustParseAddr(st.addr)
			if d = l.Attempt(now, a); d.Allowed {
				d = l.Failure(now, a)
			}
		case evSuccess:
			l.Success(now, netip.MustParseAddr(st.addr))
			continue
		case evRelease:
			l.Release(now, netip.MustParseAddr(st.addr))
			continue
		case evBan:
			b, err := l.BanKey(now, netip.MustParsePrefix(st.addr), st.d, "")
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			checkBan(t, name, b, st.want)
			continue
		case evUnban:
			ok, err := l.Unban(netip.MustParsePrefix(st.addr))
			if err != nil || ok != st.want.allowed {
				t.Fatalf("%s: Unban = %v, %v; want %v, nil", name, ok, err, st.want.allowed)
			}
			continue
		}
		w := st.want
		if d.Allowed != w.allowed || d.NewBan != w.newBan || d.Remaining != w.remaining || d.Allowlisted != w.allowlisted {
			t.Fatalf("%s: got Allowed=%v NewBan=%v Remaining=%d Allowlisted=%v; want %v %v %d %v (ban %+v)",
				name, d.Allowed, d.NewBan, d.Remaining, d.Allowlisted, w.allowed, w.newBan, w.remaining, w.allowlisted, d.Ban)
		}
		if d.Allowed == d.Ban.Active(now) && !d.Busy {
			t.Fatalf("%s: Allowed=%v but Ban=%+v", name, d.Allowed, d.Ban)
		}
		if d.Busy != w.busy {
			t.Fatalf("%s: Busy=%v; want %v", name, d.Busy, w.busy)
		}
		if want := l.Key(netip.MustParseAddr(st.addr)); d.Key != want {
			t.Fatalf("%s: Key = %v, want %v", name, d.Key, want)
		}
		checkBan(t, name, d.Ban, w)
	}
}

func checkBan(t *testing.T, name string, b Ban, w want) {
	t.Helper()
	if w.count != 0 && b.Count != w.count {
		t.Fatalf("%s: Ban.Count = %d, want %d (%+v)", name, b.Count, w.count, b)
	}
	if w.until != 0 && !b.Until.Equal(t0.Add(w.until)) {
		t.Fatalf("%s: Ban.Until = t0+%v, want t0+%v", name, b.Until.Sub(t0), w.until)
	}
}

func newLimiter(t testing.TB, cfg Config, store Store) *Limiter {
	t.Helper()
	l, err := New(cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var (
	allowed   = want{allowed: true}
	refused   = want{}
	busy      = want{busy: true}
	allowlist = want{allowed: true, allowlisted: true, remaining: DefaultFailures}
)

func rem(n int) want { return want{allowed: true, remaining: n} }

func TestSteps(t *testing.T) {
	const a, b = "192.0.2.1", "192.0.2.2"
	h := time.Hour
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"fifth failure bans, sixth attempt refused", Config{}, join(
			guesses(0, a, 4, 5),
			[]step{
				{at: 4 * time.Second, ev: evGuess, addr: a, want: want{newBan: true, count: 1, until: h + 4*time.Second}},
				{at: 5 * time.Second, ev: evAttempt, addr: a, want: want{count: 1, until: h + 4*time.Second}},
				{at: 5 * time.Second, ev: evFailure, addr: a, want: refused},
				{at: 5 * time.Second, ev: evCheck, addr: a, want: refused},
				{at: 5 * time.Second, ev: evCheck, addr: b, want: allowed},
				{at: 5 * time.Second, ev: evAttempt, addr: b, want: rem(4)},
			},
		)},
		{"refill: one token per window/failures", Config{}, join(
			guesses(0, a, 4, 5),
			[]step{
				{at: 2*time.Minute - time.Second, ev: evAttempt, addr: a, want: rem(0)},
				{at: 2*time.Minute - time.Second, ev: evRelease, addr: a},
				{at: 2 * time.Minute, ev: evAttempt, addr: a, want: rem(1)},
				{at: 2 * time.Minute, ev: evRelease, addr: a},
				{at: 6 * time.Minute, ev: evAttempt, addr: a, want: rem(3)},
				{at: 6 * time.Minute, ev: evRelease, addr: a},
				{at: 48 * time.Hour, ev: evAttempt, addr: a, want: rem(4)}, // capped at the burst
			},
		)},
		{"ban ends at exactly Until with a full budget", Config{}, join(
			guesses(0, a, 5, 5),
			[]step{
				{at: h - 1, ev: evCheck, addr: a, want: want{until: h}},
				{at: h - 1, ev: evAttempt, addr: a, want: want{until: h}},
				{at: h, ev: evCheck, addr: a, want: allowed},
				{at: h, ev: evAttempt, addr: a, want: rem(4)},
			},
		)},
		{"escalation doubles up to max_ban_time", Config{MaxBanTime: 5 * h}, join(
			guesses(0, a, 5, 5), // ban 1: [0, 1h)
			[]step{{at: h - 1, ev: evCheck, addr: a, want: want{count: 1, until: h}}},
			guesses(h, a, 5, 5), // ban 2: [1h, 3h)
			[]step{{at: h, ev: evCheck, addr: a, want: want{count: 2, until: 3 * h}}},
			guesses(3*h, a, 5, 5), // ban 3: [3h, 7h)
			[]step{{at: 3 * h, ev: evCheck, addr: a, want: want{count: 3, until: 7 * h}}},
			guesses(7*h, a, 5, 5), // ban 4: 8h capped at 5h: [7h, 12h)
			[]step{{at: 7 * h, ev: evCheck, addr: a, want: want{count: 4, until: 12 * h}}},
			guesses(12*h, a, 5, 5), // ban 5: still 5h
			[]step{{at: 12 * h, ev: evCheck, addr: a, want: want{count: 5, until: 17 * h}}},
		)},
		{"escalation is remembered until max_ban_time after Until", Config{}, join(
			guesses(0, a, 5, 5), // ban 1 ends at 1h, remembered until 169h
			guesses(169*h-1, a, 5, 5),
			[]step{{at: 169*h - 1, ev: evCheck, addr: a, want: want{count: 2, until: 171*h - 1}}},
		)},
		{"escalation is forgotten max_ban_time after Until", Config{}, join(
			guesses(0, a, 5, 5),
			guesses(169*h, a, 5, 5),
			[]step{{at: 169 * h, ev: evCheck, addr: a, want: want{count: 1, until: 170 * h}}},
		)},
		{"success refunds its place but refills nothing", Config{}, join(
			guesses(0, a, 2, 5),
			[]step{
				{at: time.Second, ev: evAttempt, addr: a, want: rem(2)},
				{at: time.Second, ev: evSuccess, addr: a},
				{at: time.Second, ev: evAttempt, addr: a, want: rem(2)},
			},
		)},
		{"success_resets refills", Config{SuccessResets: true}, join(
			guesses(0, a, 2, 5),
			[]step{
				{at: time.Second, ev: evAttempt, addr: a, want: rem(2)},
				{at: time.Second, ev: evSuccess, addr: a},
				{at: time.Second, ev: evAttempt, addr: a, want: rem(4)},
			},
		)},
		{"release frees the place", Config{}, []step{
			{at: 0, ev: evAttempt, addr: a, want: rem(4)},
			{at: 0, ev: evAttempt, addr: a, want: rem(3)},
			{at: 0, ev: evRelease, addr: a},
			{at: 0, ev: evRelease, addr: a},
			{at: 0, ev: evRelease, addr: a}, // one too many: harmless
			{at: 0, ev: evAttempt, addr: a, want: rem(4)},
		}},
		{"attempts in flight hold the budget", Config{}, []step{
			{at: 0, ev: evAttempt, addr: a, want: rem(4)},
			{at: 0, ev: evAttempt, addr: a, want: rem(3)},
			{at: 0, ev: evAttempt, addr: a, want: rem(2)},
			{at: 0, ev: evAttempt, addr: a, want: rem(1)},
			{at: 0, ev: evAttempt, addr: a, want: rem(0)},
			// All five tokens are held, none spent: refused (Busy), not banned.
			{at: 0, ev: evAttempt, addr: a, want: busy},
			{at: 0, ev: evCheck, addr: a, want: want{allowed: true}},
			// One succeeds and frees its place; the next attempt takes it.
			{at: 0, ev: evSuccess, addr: a},
			{at: 0, ev: evAttempt, addr: a, want: rem(0)},
			// All five fail: the fifth spends the budget and bans.
			{at: time.Second, ev: evFailure, addr: a, want: rem(0)},
			{at: time.Second, ev: evFailure, addr: a, want: rem(0)},
			{at: time.Second, ev: evFailure, addr: a, want: rem(0)},
			{at: time.Second, ev: evFailure, addr: a, want: rem(0)},
			{at: time.Second, ev: evFailure, addr: a, want: want{newBan: true, count: 1, until: time.Second + h}},
			{at: time.Second, ev: evCheck, addr: a, want: refused},
			{at: time.Second + h, ev: evAttempt, addr: a, want: rem(4)},
		}},
		{"a penalty takes a token without settling an attempt", Config{Failures: 2}, []step{
			{at: 0, ev: evAttempt, addr: a, want: rem(1)},
			{at: 0, ev: evPenalize, addr: a, want: rem(0)},
			{at: 0, ev: evAttempt, addr: a, want: busy}, // the first attempt still holds the last token
			{at: 0, ev: evFailure, addr: a, want: want{newBan: true, count: 1, until: h}},
		}},
		{"allowlist", Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:1::/48")}}, join(
			[]step{
				{at: 0, ev: evGuess, addr: "10.1.2.3", want: allowlist},
				{at: 0, ev: evGuess, addr: "10.1.2.3", want: allowlist},
				{at: 0, ev: evGuess, addr: "10.1.2.3", want: allowlist},
				{at: 0, ev: evGuess, addr: "10.1.2.3", want: allowlist},
				{at: 0, ev: evGuess, addr: "10.1.2.3", want: allowlist},
				{at: 0, ev: evGuess, addr: "::ffff:10.1.2.3", want: allowlist},
				{at: 0, ev: evCheck, addr: "10.1.2.3", want: want{allowed: true, allowlisted: true}},
				{at: 0, ev: evCheck, addr: "2001:db8:1:2::3", want: want{allowed: true, allowlisted: true}},
				{at: 0, ev: evAttempt, addr: "2001:db8:1:2::3", want: allowlist},
			},
			guesses(0, "2001:db8:2::3", 5, 5),
			[]step{
				// A ban of a network that holds allowlisted addresses spares them.
				{at: 0, ev: evBan, addr: "0.0.0.0/0", want: want{count: 1, until: h}},
				{at: 0, ev: evCheck, addr: "10.9.9.9", want: want{allowed: true, allowlisted: true}},
				{at: 0, ev: evCheck, addr: "192.0.2.7", want: want{until: h}},
			},
		)},
		{"keys: IPv6 /64, IPv4-mapped is IPv4", Config{}, []step{
			{at: 0, ev: evGuess, addr: "2001:db8::1", want: rem(4)},
			{at: 0, ev: evGuess, addr: "2001:db8::2", want: rem(3)},
			{at: 0, ev: evGuess, addr: "2001:db8::ffff:1", want: rem(2)},
			{at: 0, ev: evGuess, addr: "2001:db8:0:1::1", want: rem(4)},
			{at: 0, ev: evGuess, addr: "192.0.2.9", want: rem(4)},
			{at: 0, ev: evGuess, addr: "::ffff:192.0.2.9", want: rem(3)},
			{at: 0, ev: evGuess, addr: "192.0.2.10", want: rem(4)},
			{at: 0, ev: evGuess, addr: "2001:db8::3", want: rem(1)},
			{at: 0, ev: evGuess, addr: "fe80::1%eth0", want: rem(4)},
			{at: 0, ev: evGuess, addr: "2001:db8::4", want: want{newBan: true, until: h}},
			{at: 0, ev: evCheck, addr: "2001:db8::99", want: refused},
			{at: 0, ev: evCheck, addr: "2001:db8:0:1::99", want: allowed},
		}},
		{"keys: configured prefixes", Config{IPv4Prefix: 24, IPv6Prefix: 48}, []step{
			{at: 0, ev: evGuess, addr: "192.0.2.1", want: rem(4)},
			{at: 0, ev: evGuess, addr: "::ffff:192.0.2.200", want: rem(3)},
			{at: 0, ev: evGuess, addr: "192.0.3.1", want: rem(4)},
			{at: 0, ev: evGuess, addr: "2001:db8:0:1::1", want: rem(4)},
			{at: 0, ev: evGuess, addr: "2001:db8:0:2::1", want: rem(3)},
		}},
		{"admin ban and unban", Config{}, []step{
			{at: 0, ev: evBan, addr: a + "/32", want: want{count: 1, until: h}},
			{at: 0, ev: evCheck, addr: a, want: want{count: 1, until: h}},
			{at: 0, ev: evAttempt, addr: a, want: want{count: 1}},
			{at: time.Minute, ev: evBan, addr: a + "/32", d: 10 * time.Minute, want: want{count: 2, until: 11 * time.Minute}},
			{at: time.Minute, ev: evCheck, addr: a, want: want{count: 2, until: 11 * time.Minute}},
			{at: 2 * time.Minute, ev: evUnban, addr: a + "/32", want: want{allowed: true}},
			{at: 2 * time.Minute, ev: evCheck, addr: a, want: allowed},
			{at: 2 * time.Minute, ev: evUnban, addr: a + "/32", want: want{allowed: false}},
			// Unban forgot the count: the next ban is a first one.
			{at: 3 * time.Minute, ev: evBan, addr: "::ffff:" + a + "/128", want: want{count: 1, until: h + 3*time.Minute}},
			{at: 3 * time.Minute, ev: evCheck, addr: a, want: want{count: 1}},
			// A network ban covers other keys, and ends.
			{at: 3 * time.Minute, ev: evBan, addr: "198.51.100.0/24", d: time.Minute, want: want{count: 1, until: 4 * time.Minute}},
			{at: 3 * time.Minute, ev: evCheck, addr: "198.51.100.7", want: want{until: 4 * time.Minute}},
			{at: 3 * time.Minute, ev: evAttempt, addr: "198.51.100.8", want: want{until: 4 * time.Minute}},
			{at: 4 * time.Minute, ev: evCheck, addr: "198.51.100.7", want: allowed},
		}},
		{"a network ban over attempts in flight", Config{}, []step{
			{at: 0, ev: evAttempt, addr: a, want: rem(4)},
			{at: 0, ev: evAttempt, addr: a, want: rem(3)},
			{at: 0, ev: evAttempt, addr: a, want: rem(2)},
			{at: 0, ev: evBan, addr: "192.0.2.0/24", d: 2 * time.Second, want: want{until: 2 * time.Second}},
			{at: time.Second, ev: evFailure, addr: a, want: want{until: 2 * time.Second}}, // counted
			{at: time.Second, ev: evFailure, addr: a, want: want{until: 2 * time.Second}},
			{at: time.Second, ev: evRelease, addr: a},
			{at: time.Second, ev: evFailure, addr: b, want: want{until: 2 * time.Second}}, // no Attempt, no budget: nothing to count
			// 3 tokens left, no place still taken.
			{at: 2 * time.Second, ev: evAttempt, addr: a, want: rem(2)},
			{at: 2 * time.Second, ev: evAttempt, addr: a, want: rem(1)},
			{at: 2 * time.Second, ev: evAttempt, addr: a, want: rem(0)},
			{at: 2 * time.Second, ev: evBan, addr: "192.0.2.0/24", d: time.Hour, want: want{count: 2}},
			{at: 3 * time.Second, ev: evFailure, addr: a, want: want{count: 2}},
			{at: 3 * time.Second, ev: evFailure, addr: a, want: want{count: 2}},
			// The key's own budget runs out: the key gets its own ban.
			{at: 3 * time.Second, ev: evFailure, addr: a, want: want{newBan: true, count: 1, until: time.Hour + 3*time.Second}},
		}},
		{"admin ban counts for escalation", Config{}, join(
			guesses(0, a, 5, 5),
			[]step{{at: 2 * h, ev: evBan, addr: a + "/32", want: want{count: 2, until: 4 * h}}},
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run(t, newLimiter(t, tt.cfg, nil), tt.steps)
		})
	}
}

func TestBanKeyErrors(t *testing.T) {
	l := newLimiter(t, Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::ffff:172.16.0.0/108")}}, nil)
	for _, p := range []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "::ffff:10.1.2.3/128", "172.16.0.1/32"} {
		if _, err := l.BanKey(t0, netip.MustParsePrefix(p), 0, ""); !errors.Is(err, ErrAllowlisted) {
			t.Errorf("BanKey(%s) = %v, want ErrAllowlisted", p, err)
		}
	}
	for _, p := range []netip.Prefix{{}, netip.MustParsePrefix("::ffff:0:0/90")} {
		if _, err := l.BanKey(t0, p, 0, ""); !errors.Is(err, ErrInvalidPrefix) {
			t.Errorf("BanKey(%v) = %v, want ErrInvalidPrefix", p, err)
		}
		if _, err := l.Unban(p); !errors.Is(err, ErrInvalidPrefix) {
			t.Errorf("Unban(%v) = %v, want ErrInvalidPrefix", p, err)
		}
	}
	if b, err := l.BanKey(t0, netip.MustParsePrefix("192.0.2.77/24"), 0, "abuse"); err != nil ||
		b.Key != netip.MustParsePrefix("192.0.2.0/24") || b.Reason != "abuse" || !b.Since.Equal(t0) || !b.Forget.Equal(t0.Add(169*time.Hour)) {
		t.Errorf("BanKey = %+v, %v", b, err)
	}
	if got := l.Bans(t0); len(got) != 1 {
		t.Errorf("Bans = %v", got)
	}
}

func TestInvalidAddr(t *testing.T) {
	l := newLimiter(t, Config{}, nil)
	var zero netip.Addr
	for _, d := range []Decision{l.Check(t0, zero), l.Attempt(t0, zero), l.Failure(t0, zero)} {
		if d != (Decision{}) {
			t.Errorf("decision for the zero Addr = %+v, want the zero Decision", d)
		}
	}
	l.Success(t0, zero)
	l.Release(t0, zero)
	if k := l.Key(zero); k.IsValid() {
		t.Errorf("Key(zero) = %v", k)
	}
	if s := l.Stats(); s.Tracked != 0 || s.Banned != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestBansSortedAndExpire(t *testing.T) {
	l := newLimiter(t, Config{}, nil)
	for i, d := range []time.Duration{3 * time.Hour, time.Hour, 2 * time.Hour} {
		if _, err := l.BanKey(t0, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), d, ""); err != nil {
			t.Fatal(err)
		}
	}
	got := l.Bans(t0)
	if len(got) != 3 || got[0].Key.Addr().As4()[3] != 1 || got[1].Key.Addr().As4()[3] != 2 || got[2].Key.Addr().As4()[3] != 0 {
		t.Fatalf("Bans = %v", got)
	}
	if got := l.Bans(t0.Add(2 * time.Hour)); len(got) != 1 {
		t.Fatalf("Bans after 2h = %v", got)
	}
	if s := l.Stats(); s.Banned != 1 || s.Remembered != 2 || s.BansCreated != 3 {
		t.Fatalf("Stats = %+v", s)
	}
	// Remembered until 168h after each Until; then forgotten by the sweep.
	l.Check(t0.Add(200*time.Hour), netip.MustParseAddr("192.0.2.0"))
	l.Bans(t0.Add(200 * time.Hour))
	if s := l.Stats(); s.Banned != 0 || s.Remembered != 0 {
		t.Fatalf("Stats after 200h = %+v", s)
	}
}

func TestCheckDropsExpiredBan(t *testing.T) {
	l := newLimiter(t, Config{}, nil)
	a := netip.MustParseAddr("192.0.2.1")
	if _, err := l.BanKey(t0, l.Key(a), time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	if l.nactive.Load() != 1 {
		t.Fatal("no active ban")
	}
	if d := l.Check(t0.Add(time.Minute), a); !d.Allowed {
		t.Fatalf("Check at Until = %+v", d)
	}
	if n := l.nactive.Load(); n != 0 {
		t.Fatalf("active bans after Check past Until = %d, want 0", n)
	}
}

func TestReload(t *testing.T) {
	const a, b = "192.0.2.1", "192.0.2.2"
	l := newLimiter(t, Config{}, nil)
	run(t, l, join(
		guesses(0, a, 3, 5),
		guesses(0, b, 5, 5),
	))
	if err := l.Reload(Config{Failures: 3, Allow: []netip.Prefix{netip.MustParsePrefix(b + "/32")}, IPv4Prefix: 24}); err != nil {
		t.Fatal(err)
	}
	run(t, l, []step{
		// b is banned, but allowlisted now.
		{at: time.Second, ev: evCheck, addr: b, want: want{allowed: true, allowlisted: true}},
		// a's /32 budget is kept, but a's key is now 192.0.2.0/24: a new, smaller budget.
		{at: time.Second, ev: evGuess, addr: a, want: rem(2)},
	})
	if err := l.Reload(Config{Failures: 3}); err != nil {
		t.Fatal(err)
	}
	run(t, l, []step{
		// Without the allowlist, b's ban (a /32 under the old prefix) applies again.
		{at: 2 * time.Second, ev: evCheck, addr: b, want: want{count: 1, until: time.Hour}},
	})
	run(t, l, guesses(2*time.Second, "192.0.2.9", 3, 3))
	if err := l.Reload(Config{}); err != nil {
		t.Fatal(err)
	}
	run(t, l, []step{
		// Back at /32 and 5: a's old budget (2 of 5 left) is used again.
		{at: 3 * time.Second, ev: evGuess, addr: a, want: rem(1)},
	})
	// An invalid config is refused and changes nothing.
	err := l.Reload(Config{Failures: -1, BanFactor: 0.5})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "failures" {
		t.Fatalf("Reload(invalid) = %v", err)
	}
	run(t, l, []step{{at: 4 * time.Second, ev: evGuess, addr: a, want: want{newBan: true}}})
}

func TestReloadShrinksBudget(t *testing.T) {
	const a = "192.0.2.1"
	l := newLimiter(t, Config{Failures: 10}, nil)
	run(t, l, []step{
		{at: 0, ev: evAttempt, addr: a, want: rem(9)},
		{at: 0, ev: evAttempt, addr: a, want: rem(8)},
		{at: 0, ev: evAttempt, addr: a, want: rem(7)},
	})
	if err := l.Reload(Config{Failures: 2}); err != nil {
		t.Fatal(err)
	}
	run(t, l, []step{
		// Three attempts in flight, two tokens: every failure still counts.
		{at: 0, ev: evFailure, addr: a, want: want{allowed: true, remaining: 0}},
		{at: 0, ev: evFailure, addr: a, want: want{newBan: true, count: 1}},
		{at: 0, ev: evFailure, addr: a, want: want{count: 1}},
	})
}

func TestEviction(t *testing.T) {
	l := newLimiter(t, Config{MaxTracked: 3}, nil)
	run(t, l, join(
		guesses(0, "192.0.2.1", 2, 5),
		guesses(0, "192.0.2.2", 1, 5),
		guesses(0, "192.0.2.3", 1, 5),
		guesses(0, "192.0.2.2", 1, 4), // .2 most recently used; .1 least
		guesses(0, "192.0.2.4", 1, 5), // evicts .1
		guesses(0, "192.0.2.1", 1, 5), // .1 starts over; evicts .3
		guesses(0, "192.0.2.2", 1, 3), // .2 kept its budget
		guesses(0, "192.0.2.9", 5, 5), // banned; evicts .4, then drops its own budget
	))
	if s := l.Stats(); s.Tracked != 2 || s.Evicted != 3 || s.Banned != 1 {
		t.Fatalf("Stats = %+v", s)
	}
	// Churn through many keys: the ban stays.
	for i := range 100 {
		l.Attempt(t0, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
	}
	run(t, l, []step{{at: time.Second, ev: evCheck, addr: "192.0.2.9", want: want{count: 1}}})
	if s := l.Stats(); s.Tracked != 3 {
		t.Fatalf("Stats = %+v", s)
	}
	// Keys with attempts in flight are passed over when there are others.
	l2 := newLimiter(t, Config{MaxTracked: 2}, nil)
	run(t, l2, []step{
		{at: 0, ev: evAttempt, addr: "192.0.2.1", want: rem(4)}, // in flight, least recently used
		{at: 0, ev: evGuess, addr: "192.0.2.2", want: rem(4)},   // settled
		{at: 0, ev: evGuess, addr: "192.0.2.3", want: rem(4)},   // evicts .2, not .1
		{at: 0, ev: evAttempt, addr: "192.0.2.1", want: rem(3)}, // .1 kept its place
		{at: 0, ev: evAttempt, addr: "192.0.2.3", want: rem(3)},
	})
}

func TestBanTableBounded(t *testing.T) {
	l := newLimiter(t, Config{MaxTracked: 2}, nil)
	for i, d := range []time.Duration{2 * time.Hour, time.Hour, 3 * time.Hour} {
		if _, err := l.BanKey(t0, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), d, ""); err != nil {
			t.Fatal(err)
		}
	}
	// The third ban dropped the one due first (192.0.2.1, 1h).
	run(t, l, []step{
		{at: 0, ev: evCheck, addr: "192.0.2.0", want: want{until: 2 * time.Hour}},
		{at: 0, ev: evCheck, addr: "192.0.2.1", want: allowed},
		{at: 0, ev: evCheck, addr: "192.0.2.2", want: want{until: 3 * time.Hour}},
	})
	if s := l.Stats(); s.BansEvicted != 1 || s.Banned != 2 {
		t.Fatalf("Stats = %+v", s)
	}
	if err := l.Reload(Config{MaxTracked: 1}); err != nil {
		t.Fatal(err)
	}
	if s := l.Stats(); s.BansEvicted != 2 || s.Banned != 1 {
		t.Fatalf("Stats after shrinking = %+v", s)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string // "" = valid
	}{
		{Config{}, ""},
		{Config{Failures: 1, Window: time.Second, BanTime: time.Second, BanFactor: 1, MaxBanTime: time.Second, IPv4Prefix: 1, IPv6Prefix: 128, MaxTracked: 1}, ""},
		{Config{Failures: -1}, "limiter: failures must be ≥ 1"},
		{Config{Failures: 1 << 31}, "limiter: failures must be ≤ 2147483647"},
		{Config{Window: -time.Second}, "limiter: window must be > 0"},
		{Config{BanTime: -1}, "limiter: ban_time must be > 0"},
		{Config{BanFactor: 0.5}, "limiter: ban_factor must be ≥ 1"},
		{Config{BanFactor: -2}, "limiter: ban_factor must be ≥ 1"},
		{Config{BanFactor: nan()}, "limiter: ban_factor must be ≥ 1"},
		{Config{BanFactor: inf()}, "limiter: ban_factor must be finite"},
		{Config{MaxBanTime: -1}, "limiter: max_ban_time must be > 0"},
		{Config{MaxBanTime: 30 * time.Minute}, "limiter: max_ban_time must be ≥ ban_time (1h0m0s)"},
		{Config{IPv4Prefix: 33}, "limiter: ipv4_prefix must be in 1..32"},
		{Config{IPv4Prefix: -1}, "limiter: ipv4_prefix must be in 1..32"},
		{Config{IPv6Prefix: 129}, "limiter: ipv6_prefix must be in 1..128"},
		{Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), {}}}, "limiter: allow entry 2 is not a valid CIDR prefix"},
		{Config{MaxTracked: -5}, "limiter: max_tracked must be ≥ 1"},
		{Config{Failures: -1, BanFactor: 0.9}, "limiter: failures must be ≥ 1\nlimiter: ban_factor must be ≥ 1"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if got := errString(err); got != tt.want {
			t.Errorf("Validate(%+v) = %q, want %q", tt.cfg, got, tt.want)
		}
		if _, nerr := New(tt.cfg, nil); errString(nerr) != tt.want {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, nerr, tt.want)
		}
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.HasPrefix(tt.want, "limiter: "+ce.Key+" ") {
				t.Errorf("Validate(%+v): no *ConfigError for the key (%v)", tt.cfg, err)
			}
		}
	}
}

func nan() float64 { return math.NaN() }
func inf() float64 { return math.Inf(1) }

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
