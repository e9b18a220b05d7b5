package limiter

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// aop is what one step of an Attempt table does.
type aop int

const (
	opBegin  aop = iota // Begin attempt id from addr (for user, if any)
	opSettle            // Settle attempt id with out
	opReload            // Reload with cfg
)

// astep is one step of an Attempt table. After it, every key in pending
// must hold that many places in flight (a key without a budget holds 0).
type astep struct {
	at   time.Duration
	op   aop
	id   int
	addr string
	user string
	out  Outcome
	cfg  Config

	ok        bool // Begin: Verdict.OK()
	busy      bool // Begin: Verdict.Busy
	refusedBy bool // Begin: Verdict.UserRefused
	remaining int  // Begin and Settle: Decision.Remaining
	zero      bool // Settle: the zero Decision (a second Settle)
	key       string
	pending   map[string]int
}

func TestAttempt(t *testing.T) {
	a1, a2 := "192.0.2.7", "192.0.2.8"
	k32, k24 := "192.0.2.7/32", "192.0.2.0/24"
	tests := []struct {
		name  string
		cfg   Config
		users UserConfig
		steps []astep
	}{
		{"settle is idempotent", Config{Failures: 3}, UserConfig{}, []astep{
			{op: opBegin, id: 1, addr: a1, ok: true, remaining: 2, pending: map[string]int{k32: 1}},
			{op: opSettle, id: 1, out: OutcomeFailure, remaining: 2, key: k32, pending: map[string]int{k32: 0}},
			{op: opSettle, id: 1, out: OutcomeFailure, zero: true, pending: map[string]int{k32: 0}},
			{op: opSettle, id: 1, out: OutcomeSuccess, zero: true},
			{op: opBegin, id: 2, addr: a1, ok: true, remaining: 1}, // one token taken, not two
		}},
		{"success gives the token back", Config{Failures: 3}, UserConfig{}, []astep{
			{op: opBegin, id: 1, addr: a1, ok: true, remaining: 2, pending: map[string]int{k32: 1}},
			{op: opSettle, id: 1, out: OutcomeSuccess, key: k32, pending: map[string]int{k32: 0}},
			{op: opBegin, id: 2, addr: a1, ok: true, remaining: 2},
			{op: opSettle, id: 2, out: OutcomeRelease, key: k32, pending: map[string]int{k32: 0}},
			{op: opBegin, id: 3, addr: a1, ok: true, remaining: 2},
		}},
		{"failure takes one", Config{Failures: 2}, UserConfig{}, []astep{
			{op: opBegin, id: 1, addr: a1, ok: true, remaining: 1},
			{op: opSettle, id: 1, out: OutcomeFailure, remaining: 1, key: k32, pending: map[string]int{k32: 0}},
			{op: opBegin, id: 2, addr: a1, ok: true, remaining: 0},
			{op: opSettle, id: 2, out: OutcomeFailure, remaining: 0, key: k32}, // the last token: a ban
			{op: opBegin, id: 3, addr: a1},
		}},
		// A guess waiting for a place of its key holds no place in its
		// username's budget, not even for a moment: the parallel logins of
		// one address do not make the name look spent to another address.
		// (Before, each try took a username place and gave it back when the
		// address was Busy; 30 concurrent tries of one address made the
		// name look spent: TestWrongPasswordBurstOneAddress got "paused"
		// 530s under load. This step table is the sequential guard.)
		{"a waiting guess holds no username place", Config{Failures: 1}, UserConfig{Failures: 2, Window: time.Hour}, []astep{
			{op: opBegin, id: 1, addr: a1, user: "alice", ok: true, remaining: 0, pending: map[string]int{k32: 1}},
			{op: opBegin, id: 2, addr: a1, user: "alice", busy: true, pending: map[string]int{k32: 1}},
			{op: opBegin, id: 3, addr: a2, user: "alice", ok: true, remaining: 0},
		}},
		{"refused attempt holds nothing", Config{Failures: 1}, UserConfig{}, []astep{
			{op: opBegin, id: 1, addr: a1, ok: true, remaining: 0, pending: map[string]int{k32: 1}},
			{op: opBegin, id: 2, addr: a1, busy: true, pending: map[string]int{k32: 1}},
			{op: opSettle, id: 2, out: OutcomeRelease, key: k32, pending: map[string]int{k32: 1}},
			{op: opSettle, id: 1, out: OutcomeRelease, key: k32, pending: map[string]int{k32: 0}},
			{op: opBegin, id: 3, addr: a1, ok: true, remaining: 0},
		}},
		{"refused for its username", Config{Failures: 3}, UserConfig{Failures: 1}, []astep{
			{op: opBegin, id: 1, addr: a1, user: "alice", ok: true, remaining: 2},
			{op: opSettle, id: 1, out: OutcomeFailure, remaining: 2, key: k32}, // alice's budget is spent
			{op: opBegin, id: 2, addr: a1, user: "alice", refusedBy: true, pending: map[string]int{k32: 0}},
			// Settled as a failure, it still costs the address a token.
			{op: opSettle, id: 2, out: OutcomeFailure, remaining: 1, key: k32, pending: map[string]int{k32: 0}},
		}},
		{"reload between Begin and Settle", Config{Failures: 3}, UserConfig{}, []astep{
			{op: opBegin, id: 1, addr: a1, ok: true, remaining: 2, pending: map[string]int{k32: 1}},
			{op: opReload, cfg: Config{Failures: 3, IPv4Prefix: 24}},
			{op: opBegin, id: 2, addr: a2, ok: true, remaining: 2, pending: map[string]int{k32: 1, k24: 1}},
			// Settled on the /32 it was taken on: the /24's place stays.
			{op: opSettle, id: 1, out: OutcomeRelease, key: k32, pending: map[string]int{k32: 0, k24: 1}},
			{op: opSettle, id: 2, out: OutcomeRelease, key: k24, pending: map[string]int{k32: 0, k24: 0}},
			{op: opBegin, id: 3, addr: a1, ok: true, remaining: 2},
			{op: opReload, cfg: Config{Failures: 3}},
			{op: opSettle, id: 3, out: OutcomeFailure, remaining: 2, key: k24, pending: map[string]int{k32: 0, k24: 0}},
			{op: opBegin, id: 4, addr: a1, ok: true, remaining: 2}, // the /32's budget is untouched
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, tt.cfg, nil)
			var u *Users
			if tt.users.Failures > 0 {
				u = newUsers(t, tt.users)
			}
			attempts := map[int]*Attempt{}
			for i, st := range tt.steps {
				now := t0.Add(st.at)
				name := fmt.Sprintf("step %d (op %d, attempt %d)", i, st.op, st.id)
				switch st.op {
				case opBegin:
					a, v := l.Begin(now, netip.MustParseAddr(st.addr), st.user, u)
					attempts[st.id] = a
					if v.OK() != st.ok || v.Busy != st.busy || v.UserRefused != st.refusedBy || v.Remaining != st.remaining {
						t.Fatalf("%s: Verdict %+v; want OK %v, Busy %v, UserRefused %v, Remaining %d",
							name, v, st.ok, st.busy, st.refusedBy, st.remaining)
					}
					if v.Key != a.Key() || a.Key() != l.Key(netip.MustParseAddr(st.addr)) || a.User() != st.user {
						t.Fatalf("%s: Verdict key %v, Attempt key %v user %q", name, v.Key, a.Key(), a.User())
					}
				case opSettle:
					d := attempts[st.id].Settle(now, st.out)
					if st.zero {
						if d != (Decision{}) {
							t.Fatalf("%s: Settle again = %+v, want the zero Decision", name, d)
						}
						break
					}
					if d.Remaining != st.remaining || d.Key.String() != st.key {
						t.Fatalf("%s: Settle = %+v; want Remaining %d on %s", name, d, st.remaining, st.key)
					}
				case opReload:
					if err := l.Reload(st.cfg); err != nil {
						t.Fatal(err)
					}
				}
				l.mu.Lock()
				for k, want := range st.pending {
					got := 0
					if b := l.budgets.get(keyOf(netip.MustParsePrefix(k))); b != nil {
						got = int(b.pending)
					}
					if got != want {
						l.mu.Unlock()
						t.Fatalf("%s: %s holds %d places, want %d", name, k, got, want)
					}
				}
				l.mu.Unlock()
			}
		})
	}
}
