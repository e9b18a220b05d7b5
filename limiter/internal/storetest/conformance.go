package storetest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// Conformance checks the limiter.Store contract on the empty store that
// open returns (it is closed by the suite): a saved ban loads back whole,
// a later ban of a key replaces it, LoadBans leaves out the bans whose
// Forget time has come (a store may drop them then) and sorts by Until, DeleteBan keeps nothing (and
// deleting a key without a ban is no error). Times are wall-clock times at
// millisecond grain, as a shared store keeps them.
func Conformance(t *testing.T, open func(t *testing.T) limiter.Store) {
	st := open(t)
	now := time.Now().Truncate(time.Millisecond)
	p4, p6 := netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8:1::/64")
	b4 := limiter.Ban{Key: p4, Since: now, Until: now.Add(time.Hour), Forget: now.Add(3 * time.Hour), Count: 1, Reason: limiter.ReasonBudget}
	b6 := limiter.Ban{Key: p6, Since: now, Until: now.Add(time.Minute), Forget: now.Add(time.Hour), Count: 2, Reason: "admin|reason"}

	load := func(at time.Time) []limiter.Ban {
		t.Helper()
		bans, err := st.LoadBans(at)
		if err != nil {
			t.Fatalf("LoadBans: %v", err)
		}
		return bans
	}
	same := func(got, want []limiter.Ban) {
		t.Helper()
		ok := len(got) == len(want)
		for i := 0; ok && i < len(got); i++ {
			g, w := got[i], want[i]
			ok = g.Key == w.Key && g.Count == w.Count && g.Reason == w.Reason &&
				g.Since.Equal(w.Since) && g.Until.Equal(w.Until) && g.Forget.Equal(w.Forget)
		}
		if !ok {
			t.Fatalf("LoadBans = %+v\nwant       %+v", got, want)
		}
	}

	same(load(time.Time{}), nil)
	for _, b := range []limiter.Ban{b4, b6} {
		if err := st.SaveBan(b); err != nil {
			t.Fatalf("SaveBan(%v): %v", b.Key, err)
		}
	}
	same(load(time.Time{}), []limiter.Ban{b6, b4}) // by Until
	same(load(now), []limiter.Ban{b6, b4})

	later := b4
	later.Since, later.Until, later.Forget, later.Count = now.Add(time.Second), now.Add(2*time.Hour), now.Add(4*time.Hour), 2
	if err := st.SaveBan(later); err != nil {
		t.Fatal(err)
	}
	same(load(time.Time{}), []limiter.Ban{b6, later})
	same(load(now.Add(90*time.Minute)), []limiter.Ban{later}) // b6 is forgotten (and may be dropped)

	if err := st.DeleteBan(p4); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteBan(netip.MustParsePrefix("198.51.100.0/24")); err != nil {
		t.Fatalf("DeleteBan of a key without a ban: %v", err)
	}
	same(load(now.Add(90*time.Minute)), nil)
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
