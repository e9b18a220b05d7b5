package limiter

// Bans that widen to the attacker's network: when WidenAfter distinct keys
// inside one wider prefix (WidenIPv6Prefix, WidenIPv4Prefix) have been
// banned for their own offences within Window, the wider prefix is banned
// too, with an escalation count of its own. An attacker who rotates through
// the addresses of one /48 (or /24) meets one ban, not one per address.

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// ReasonWidened begins the Reason of a ban that widened from the bans of
// the keys inside it: "widened: 3 keys banned in 2001:db8:1::/48 (…)".
const ReasonWidened = "widened"

// DefaultWidenAfter is the Config.WidenAfter used when it is zero.
const DefaultWidenAfter = 3

// maxWidenAfter bounds Config.WidenAfter (and so each wider prefix's list).
const maxWidenAfter = 1000

// maxWideTracked bounds the wider prefixes the widener remembers.
const maxWideTracked = 65536

// widener counts the keys banned inside each wider prefix. Its own lock
// (never held with the limiter's); the zero value is ready to use.
type widener struct {
	mu   sync.Mutex
	nets map[bkey][]wideKey // wider prefix → the distinct keys banned in it, oldest first
}

type wideKey struct {
	key netip.Prefix
	at  time.Time
}

// widens reports whether a ban with this reason counts towards widening:
// the key's own offences (a spent budget, a trap name), not an admin's
// choice nor a ban learned elsewhere.
func widens(reason string) bool { return reason == ReasonBudget || reason == ReasonTrap }

// widenBits is the prefix length that a key of a's family widens to (0: off).
func (s *settings) widenBits(a netip.Addr) int {
	if a.Is4() {
		return s.WidenIPv4Prefix
	}
	return s.WidenIPv6Prefix
}

// widen is called with every ban change this limiter reports (notify). A
// key banned for its own offence (widens) is recorded under its wider
// prefix — the bans learned from the shared store too, so that a fleet
// behind one balancer counts the attacker's keys together; when that
// prefix holds WidenAfter distinct keys banned within Window, the prefix
// is banned (BanKey: escalated, Reason ReasonWidened followed by what led
// to it) unless an allowlisted network overlaps it (the narrow bans are
// kept) or a ban of it is already in force. Only the instance whose own
// ban completes the count widens (the others learn the widened ban from
// the store), so a fleet makes one widened ban, not one per instance.
func (l *Limiter) widen(changes []BanChange) {
	s := l.cfg.Load()
	for _, c := range changes {
		b := c.Ban
		if c.Lifted || c.Saved || !widens(b.Reason) || !b.Key.IsValid() {
			continue
		}
		bits := s.widenBits(b.Key.Addr())
		if bits <= 0 || bits >= b.Key.Bits() {
			continue
		}
		wider, _ := b.Key.Addr().Prefix(bits)
		keys := l.wide.record(s, wider, b.Key, b.Since, !c.Remote)
		if keys == nil || s.overlapsAllow(wider) || l.bannedPrefix(b.Since, wider) {
			continue
		}
		names := make([]string, len(keys))
		for i, k := range keys {
			names[i] = k.key.String()
		}
		reason := fmt.Sprintf("%s: %d keys banned in %v (%s)", ReasonWidened, len(keys), wider, strings.Join(names, ", "))
		l.BanKey(b.Since, wider, 0, reason) // notifies, and so ends the sessions it covers
	}
}

// record notes that key, inside wider, was banned at now (own: by this
// instance, else learned from the shared store), and returns the keys
// banned in wider within Window once they are WidenAfter and own
// (forgetting them: the next widening needs as many new bans), else nil.
// A learned ban that completes the count keeps it: the instance that made
// that ban widens, but if it had not learned the others' bans yet (a fleet
// banning keys of one network at the same moment), the next ban of this
// instance's own widens here; were the count spent, such a fleet would
// never widen.
func (w *widener) record(s *settings, wider, key netip.Prefix, now time.Time, own bool) []wideKey {
	after := s.WidenAfter
	if after <= 0 {
		after = DefaultWidenAfter
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.nets == nil {
		w.nets = make(map[bkey][]wideKey)
	}
	k := keyOf(wider)
	list := w.nets[k]
	fresh := list[:0]
	for _, e := range list {
		if e.key != key && now.Sub(e.at) < s.Window {
			fresh = append(fresh, e)
		}
	}
	fresh = append(fresh, wideKey{key, now})
	if len(fresh) > after {
		fresh = fresh[len(fresh)-after:]
	}
	if len(fresh) >= after && own {
		delete(w.nets, k)
		return fresh
	}
	if _, ok := w.nets[k]; !ok && len(w.nets) >= maxWideTracked {
		w.evict(s, now)
	}
	w.nets[k] = fresh
	return nil
}

// evict drops the prefixes whose latest ban is older than Window, or one
// prefix if none is (bounded: a map iteration of at most maxWideTracked).
func (w *widener) evict(s *settings, now time.Time) {
	var victim bkey
	for k, list := range w.nets {
		victim = k
		if now.Sub(list[len(list)-1].at) >= s.Window {
			delete(w.nets, k)
		}
	}
	if len(w.nets) >= maxWideTracked {
		delete(w.nets, victim)
	}
}

// overlapsAllow reports whether some allowlisted network overlaps p: a ban
// of p would cover an address that must never be banned.
func (s *settings) overlapsAllow(p netip.Prefix) bool {
	list := s.allow6
	if p.Addr().Is4() {
		list = s.allow4
	}
	for _, a := range list {
		if a.Overlaps(p) {
			return true
		}
	}
	return false
}

// bannedPrefix reports whether a ban of exactly p is in force at now.
func (l *Limiter) bannedPrefix(now time.Time, p netip.Prefix) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	r := l.bans.recs[keyOf(p)]
	return r != nil && r.active && now.Before(r.ban.Until)
}
