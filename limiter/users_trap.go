package limiter

// Trap usernames: names no legitimate user of the server logs in with
// (root, admin, oracle, …). Guessing one is an offence in itself.

import (
	"net/netip"
	"strings"
	"time"
)

// ReasonTrap is the Reason of a ban made for a PASS naming a trap username
// (UserConfig.TrapUsernames).
const ReasonTrap = "trap"

// maxTrapNames bounds UserConfig.TrapUsernames.
const maxTrapNames = 1000

// trapNameError says what is wrong with a configured trap name, or "".
func trapNameError(n string) string {
	switch {
	case strings.TrimSpace(n) == "":
		return "is empty"
	case strings.TrimSpace(n) != n:
		return "has leading or trailing spaces"
	case strings.ContainsFunc(n, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "has control characters"
	case len(n) > MaxUserName:
		return "is longer than 64 bytes"
	}
	return ""
}

// trapSet returns the canonical forms of names, or nil for none.
func trapSet(names []string) map[string]bool {
	if len(names) == 0 {
		return nil
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[CanonicalUser(n)] = true
	}
	return m
}

// Trap reports whether a PASS for user from the address key key (a
// Limiter.Key) springs a trap: user, in its canonical form (CanonicalUser,
// as the username budgets count it; the caller trims spaces), is one of
// UserConfig.TrapUsernames, and key is not known-good for it (a pair that
// logged in within KnownGoodTTL, in its known-good neighbourhood, is never
// trapped). The caller then never forwards the guess and bans the key
// (ReasonTrap). Known-good pairs are recorded by Success while trap names
// are configured, even with per-username budgets off. It takes no token
// and records nothing. Safe for concurrent use; false on a nil Users.
func (u *Users) Trap(now time.Time, user string, key netip.Prefix) bool {
	if u == nil {
		return false
	}
	cu := CanonicalUser(user)
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.cfg
	if !s.traps[cu] {
		return false
	}
	name, _ := u.canon(cu)
	return !u.knownGoodLocked(now, s, name, key)
}
