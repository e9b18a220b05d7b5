package limiter

import (
	"net/netip"
	"testing"
	"time"
)

// TestTrap: a trap name, in any spelling of its canonical form, is a trap
// for every key but one that logged in to it; other names never are.
func TestTrap(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	owner := netip.MustParsePrefix("192.0.2.1/32")
	other := netip.MustParsePrefix("192.0.2.2/32")
	for _, failures := range []int{0, 20} { // username budgets off, on
		u, err := NewUsers(UserConfig{Failures: failures, TrapUsernames: []string{"root", "Admin"}})
		if err != nil {
			t.Fatal(err)
		}
		u.Success(now, "ADMIN", owner) // the one real admin, known-good from owner
		steps := []struct {
			user string
			key  netip.Prefix
			want bool
		}{
			{"root", other, true},
			{"ROOT", other, true},
			{"ｒｏｏｔ", other, true}, // fullwidth: one account
			{"admin", other, true},
			{"admin", owner, false}, // known-good pair
			{"root", owner, true},   // known-good for admin only
			{"alice", other, false},
			{"rootx", other, false},
		}
		for _, st := range steps {
			if got := u.Trap(now, st.user, st.key); got != st.want {
				t.Errorf("failures %d: Trap(%q, %v) = %v, want %v", failures, st.user, st.key, got, st.want)
			}
		}
		if u.Trap(now.Add(DefaultKnownGoodTTL+time.Second), "admin", owner) != true {
			t.Errorf("failures %d: an expired known-good pair still spares the trap", failures)
		}
	}
	var nilUsers *Users
	if nilUsers.Trap(now, "root", other) {
		t.Error("nil Users traps")
	}
	if u, _ := NewUsers(UserConfig{Failures: 5}); u.Trap(now, "root", other) {
		t.Error("no trap names configured, yet trapped")
	}
}
