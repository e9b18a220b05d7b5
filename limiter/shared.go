package limiter

// What a store that shares budgets between limiters implements, and what
// it answers; the limiter's side is in keeper.go and circuit.go.

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// ErrSharedDown is wrapped (with ErrStore) in the error of BanKey and Unban
// when the shared store is known to be unreachable: the change is in force
// locally and queued, and it is written when the store comes back.
var ErrSharedDown = errors.New("limiter: shared store unreachable")

// SharedBudgets is implemented by stores that keep budgets shared between
// limiters (redisstore.Store), so that N limiters together allow a key the
// failures that one would. New detects it on its Store with a type
// assertion; the limiter then asks the store to decide Attempt, Failure,
// Penalize, Success and Release, and keeps its ban table current with
// Subscribe.
//
// Each method decides exactly like a lone Limiter would (see Attempt and
// Failure), atomically on the server, so that no two limiters both take the
// last token or both make ban n of a key. Ban n lasts BanTime ×
// BanFactor^(n−1) (capped at MaxBanTime), n counted from the ban the store
// holds for key, and the store keeps that ban until its Forget time.
// Implementations bound every call in time, whatever ctx says, and must be
// safe for concurrent use. One store value serves one Limiter: it tells its
// own attempts in flight from those of other limiters.
type SharedBudgets interface {
	Store
	// SharedAttempt takes a place in the shared budget of key for an
	// attempt: SharedAllowed (with Remaining), SharedBusy when attempts in
	// flight hold every whole token left, SharedBanned when the store holds
	// an active ban of key itself, or SharedNewBan when the budget is spent.
	// An attempt in flight that is never settled stops counting after a
	// time the store chooses (redisstore.Options.AttemptTTL).
	SharedAttempt(ctx context.Context, key netip.Prefix, now time.Time, p BudgetParams) (SharedResult, error)
	// SharedSettle settles an attempt of this store's limiter (OutcomePenalty:
	// a failure without one). OutcomeFailure and OutcomePenalty take a token
	// and give SharedAllowed, SharedBanned (no token taken) or SharedNewBan;
	// OutcomeSuccess and OutcomeRelease give SharedAllowed and a zero
	// Remaining.
	SharedSettle(ctx context.Context, key netip.Prefix, now time.Time, o Outcome, p BudgetParams) (SharedResult, error)
	// Subscribe delivers to fn, one at a time, the bans and unbans made by
	// other limiters (EventBan, EventUnban), EventResync each time the
	// subscription is (re)established (events may have been missed before),
	// and EventLost when it breaks; it reconnects by itself. It returns when
	// ctx ends.
	Subscribe(ctx context.Context, fn func(BanEvent))
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// UnbanLog is implemented by shared stores that remember the explicit
// unbans (DeleteBan) for a while (redisstore: a week). After a subscription
// gap the limiter lifts a ban the store no longer holds only if the store
// remembers its unban; a ban missing without one was lost by the store (a
// restart from an older snapshot, a promoted replica that lagged, an
// evicted key) and is written back. Without an UnbanLog, missing bans are
// always written back.
type UnbanLog interface {
	// Unbanned returns, for those of keys that were unbanned, the Since of
	// the ban that was lifted (or when the unban was made, if the store held
	// no ban of the key then): the bans of the key made at or before it are
	// lifted. Keys without a remembered unban are absent.
	Unbanned(ctx context.Context, keys []netip.Prefix) (map[netip.Prefix]time.Time, error)
}

// BudgetParams are the limits a shared budget is kept with: those of the
// calling limiter's Config (defaults applied).
type BudgetParams struct {
	Failures      int
	Window        time.Duration
	BanTime       time.Duration
	BanFactor     float64
	MaxBanTime    time.Duration
	SuccessResets bool
}

// Outcome is how an attempt ended, for SharedSettle.
type Outcome int

// Outcomes of an attempt.
const (
	OutcomeRelease Outcome = iota // neither success nor failure: frees the place
	OutcomeSuccess                // a login: frees the place (refills with SuccessResets)
	OutcomeFailure                // frees the place and takes a token
	OutcomePenalty                // takes a token; no place was held
)

// SharedVerdict is the answer of SharedAttempt and SharedSettle.
type SharedVerdict int

// Verdicts of a shared budget.
const (
	SharedAllowed SharedVerdict = iota // go on; Remaining is set
	SharedBusy                         // attempts in flight hold every token left; no ban
	SharedBanned                       // key is under an active ban (Ban), made earlier
	SharedNewBan                       // this very call banned key (Ban)
)

// SharedResult is a shared budget's answer.
type SharedResult struct {
	Verdict   SharedVerdict
	Remaining int // whole tokens left that no attempt in flight holds (SharedAllowed)
	Ban       Ban // for SharedBanned and SharedNewBan
}

// BanEventKind tells what a BanEvent reports.
type BanEventKind int

// Kinds of BanEvent.
const (
	EventBan    BanEventKind = iota // another limiter banned Ban.Key (Ban is the whole ban)
	EventUnban                      // another limiter lifted the ban of Ban.Key
	EventResync                     // the subscription is (re)established; events may have been missed
	EventLost                       // the subscription broke (Err); Subscribe is reconnecting
)

// BanEvent is one message of Subscribe.
type BanEvent struct {
	Kind BanEventKind
	Ban  Ban
	Err  error // for EventLost
	// Fresh (EventResync): the store's state is new since the previous
	// subscription (first use, or it restarted empty): bans the store lacks
	// were lost, not lifted, and the limiter writes its own back.
	Fresh bool
}

// params returns the budget limits of s for a shared store.
func (s *settings) params() BudgetParams {
	return BudgetParams{Failures: s.Failures, Window: s.Window, BanTime: s.BanTime,
		BanFactor: s.BanFactor, MaxBanTime: s.MaxBanTime, SuccessResets: s.SuccessResets}
}
