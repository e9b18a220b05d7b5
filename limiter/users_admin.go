package limiter

// What an operator sees of the username budgets and does to them:
// the throttled usernames (ftpguard users list) and lifting a throttle
// (ftpguard users reset).

import (
	"context"
	"slices"
	"strings"
	"time"
)

// Throttled lists the usernames whose budget is spent on this instance
// (including the places held by guesses in flight): guesses for them from
// keys that are not known-good are refused. At most MaxThrottledList,
// sorted by name. With a shared store, a name spent only by other
// instances' failures is not listed (Check still refuses it). It costs a
// pass over the budgets (at most MaxTracked), under the lock.
func (u *Users) Throttled(now time.Time) []UserState {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.cfg
	if s.off() {
		return nil
	}
	var out []UserState
	for name, e := range u.budgets.m {
		uadapt(&e.val, s, now)
		t := e.val.TokensAt(now)
		rem := max(0, whole(t))
		held := u.held[name]
		if rem-held >= 1 {
			continue
		}
		st := UserState{Remaining: rem, Held: held, Failures: s.Failures, RetryIn: u.retryLocked(now, s, name)}
		if full := float64(s.Failures) - t; full > tokenSlack {
			st.FullIn = refillTime(full, s)
		}
		st.Name, st.Hashed = name.String(), name.n == uHashed
		out = append(out, st)
	}
	// Names whose places are all held by guesses in flight, with no
	// failure yet (bounded by the sessions).
	for name, held := range u.held {
		if u.budgets.get(name) == nil && s.Failures-held < 1 {
			out = append(out, UserState{Name: name.String(), Hashed: name.n == uHashed, Remaining: s.Failures,
				Held: held, Failures: s.Failures, RetryIn: u.retryLocked(now, s, name)})
		}
	}
	slices.SortFunc(out, func(a, b UserState) int { return strings.Compare(a.Name, b.Name) })
	if len(out) > MaxThrottledList {
		out = out[:MaxThrottledList]
	}
	return out
}

// SharedUserReset is implemented by a SharedUserBudgets that can forget a
// username's budget (redisstore.Store): Users.Reset clears it there too.
type SharedUserReset interface {
	// UserReset deletes user's shared budget (user as for UserFailure) and
	// reports whether there was one.
	UserReset(ctx context.Context, user string) (bool, error)
}

// Reset lifts the throttle of a username: its budget (under its canonical
// form, so any spelling will do) is full again, here and in the shared
// store if there is one. Known-good pairs, the names keys tried and the
// places of guesses in flight are kept. It reports whether a budget was
// found spent or partly spent; err is the shared store's (the local budget
// is reset anyway).
func (u *Users) Reset(user string) (found bool, err error) {
	cu := CanonicalUser(user)
	name, _ := u.canon(cu)
	u.mu.Lock()
	if e := u.budgets.get(name); e != nil {
		u.budgets.remove(e)
		found = true
	}
	shared := u.shared
	u.mu.Unlock()
	if r, ok := shared.(SharedUserReset); ok {
		var there bool
		there, err = r.UserReset(context.Background(), cu)
		found = found || there
	}
	return found, err
}
