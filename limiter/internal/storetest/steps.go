// Package storetest holds what the tests of the limiter's stores share: the
// step tables that drive a Limiter (the same shape as the limiter's own
// tests) and Conformance, the suite every limiter.Store passes.
package storetest

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// T0 is the start of every step table.
var T0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// Event is what a Step does to the limiter.
type Event int

// Events of a Step.
const (
	EvCheck    Event = iota
	EvAttempt        // Attempt
	EvFailure        // Failure (settles an earlier Attempt)
	EvGuess          // Attempt, then Failure if allowed: a failed PASS; Want is the last decision
	EvSuccess        // Success
	EvRelease        // Release
	EvPenalize       // Penalize (a failure with no Attempt before it)
)

// String names the event, for test failures.
func (e Event) String() string {
	return [...]string{"check", "attempt", "failure", "guess", "success", "release", "penalize"}[e]
}

// Want is what a step's Decision must be. Count and Until are only checked
// when non-zero; Until is an offset from T0.
type Want struct {
	Allowed   bool
	NewBan    bool
	Remaining int
	Count     int
	Until     time.Duration
}

// Step is one call at T0+At.
type Step struct {
	At   time.Duration
	Ev   Event
	Addr string
	Want Want
}

// Guesses returns n failed-guess steps at time at for addr, wanting the
// budget to count down from first remaining token (the last one bans when
// it reaches 0).
func Guesses(at time.Duration, addr string, n, first int) []Step {
	var out []Step
	for i := range n {
		rem := first - 1 - i
		w := Want{Allowed: rem > 0, Remaining: max(rem, 0), NewBan: rem == 0}
		if rem < 0 {
			w = Want{}
		}
		out = append(out, Step{At: at, Ev: EvGuess, Addr: addr, Want: w})
	}
	return out
}

// Join concatenates step lists.
func Join(parts ...[]Step) []Step {
	var out []Step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// NewLimiter returns a Limiter on store, failing t on a bad cfg; it is
// closed at the end of t.
func NewLimiter(t testing.TB, cfg limiter.Config, store limiter.Store) *limiter.Limiter {
	t.Helper()
	l, err := limiter.New(cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Run plays steps against l.
func Run(t *testing.T, l *limiter.Limiter, steps []Step) {
	t.Helper()
	for i, st := range steps {
		now := T0.Add(st.At)
		name := fmt.Sprintf("step %d (%v %s %s)", i, st.At, st.Ev, st.Addr)
		a := netip.MustParseAddr(st.Addr)
		var d limiter.Decision
		switch st.Ev {
		case EvCheck:
			d = l.Check(now, a)
		case EvAttempt:
			d = l.Attempt(now, a)
		case EvFailure:
			d = l.Failure(now, a)
		case EvPenalize:
			d = l.Penalize(now, a)
		case EvGuess:
			if d = l.Attempt(now, a); d.Allowed {
				d = l.Failure(now, a)
			}
		case EvSuccess:
			l.Success(now, a)
			continue
		case EvRelease:
			l.Release(now, a)
			continue
		}
		w := st.Want
		if d.Allowed != w.Allowed || d.NewBan != w.NewBan || d.Remaining != w.Remaining {
			t.Fatalf("%s: got Allowed=%v NewBan=%v Remaining=%d; want %v %v %d (ban %+v)",
				name, d.Allowed, d.NewBan, d.Remaining, w.Allowed, w.NewBan, w.Remaining, d.Ban)
		}
		if w.Count != 0 && d.Ban.Count != w.Count {
			t.Fatalf("%s: Ban.Count = %d, want %d (%+v)", name, d.Ban.Count, w.Count, d.Ban)
		}
		if w.Until != 0 && !d.Ban.Until.Equal(T0.Add(w.Until)) {
			t.Fatalf("%s: Ban.Until = T0+%v, want T0+%v", name, d.Ban.Until.Sub(T0), w.Until)
		}
	}
}
