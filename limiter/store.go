package limiter

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Store persists bans and their escalation counts, so that they survive a
// restart (a file store) or are shared by several proxies (Redis). The
// limiter keeps budgets itself, unless the Store also implements
// SharedBudgets; a Store as such only ever sees bans, at most one per key:
// the key's latest. Implementations must be safe for concurrent use.
type Store interface {
	// SaveBan records b as the ban of b.Key, replacing any earlier one. It
	// is durable when it returns (for persistent stores). The store keeps b
	// until b.Forget (or b.Until if Forget is zero), expired or not: its
	// Count makes the key's next ban escalate.
	SaveBan(b Ban) error
	// DeleteBan removes the ban of key and keeps nothing of it (an admin
	// unban: the key's escalation starts over). Deleting a key that has no
	// ban is not an error.
	DeleteBan(key netip.Prefix) error
	// LoadBans returns the bans still relevant at now: active ones and
	// expired ones whose Forget time is after now. The zero now returns every
	// ban the store holds.
	LoadBans(now time.Time) ([]Ban, error)
	// Close releases the store. Later calls may fail with ErrStoreClosed.
	Close() error
}

// MemoryStore is a Store that keeps bans in memory: bans survive a Limiter
// (a new one can load them) but not the process. It forgets bans after their
// Forget time, pruning as it grows (to about twice the bans still relevant),
// and holds at most DefaultMaxTracked bans (the store New makes for a nil
// Store: Config.MaxTracked); when full it drops the quarter due to be
// forgotten first. Safe for concurrent use; use NewMemoryStore (the zero
// value is not usable).
type MemoryStore struct {
	mu      sync.Mutex
	bans    map[netip.Prefix]Ban
	latest  time.Time // latest Since saved: a lower bound on the current time
	pruneAt int       // prune when the map grows to this size
	max     int
	closed  bool
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore that holds at most
// DefaultMaxTracked bans.
func NewMemoryStore() *MemoryStore { return newMemoryStore(DefaultMaxTracked) }

func newMemoryStore(max int) *MemoryStore {
	return &MemoryStore{bans: make(map[netip.Prefix]Ban), pruneAt: min(64, max+1), max: max}
}

// SaveBan records b as the ban of b.Key.
func (m *MemoryStore) SaveBan(b Ban) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrStoreClosed
	}
	m.bans[b.Key] = b
	if b.Since.After(m.latest) {
		m.latest = b.Since
	}
	if len(m.bans) >= m.pruneAt {
		m.pruneLocked(m.latest)
		if len(m.bans) > m.max {
			m.trimLocked(m.max - m.max/4)
		}
		m.pruneAt = min(max(64, 2*len(m.bans)), m.max+1)
	}
	return nil
}

// DeleteBan removes the ban of key, if any.
func (m *MemoryStore) DeleteBan(key netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrStoreClosed
	}
	delete(m.bans, key)
	return nil
}

// LoadBans returns the bans whose Forget time is after now, sorted by Until.
func (m *MemoryStore) LoadBans(now time.Time) ([]Ban, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrStoreClosed
	}
	m.pruneLocked(now)
	out := make([]Ban, 0, len(m.bans))
	for _, b := range m.bans {
		out = append(out, b)
	}
	slices.SortFunc(out, compareBans)
	return out, nil
}

// Close empties the store; later calls return ErrStoreClosed.
func (m *MemoryStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed, m.bans = true, nil
	return nil
}

func (m *MemoryStore) pruneLocked(now time.Time) {
	for k, b := range m.bans {
		if !now.Before(b.forget()) {
			delete(m.bans, k)
		}
	}
}

// trimLocked drops the bans due to be forgotten first, down to n.
func (m *MemoryStore) trimLocked(n int) {
	all := make([]Ban, 0, len(m.bans))
	for _, b := range m.bans {
		all = append(all, b)
	}
	slices.SortFunc(all, func(a, b Ban) int { return a.forget().Compare(b.forget()) })
	for _, b := range all[:len(all)-n] {
		delete(m.bans, b.Key)
	}
}

// compareBans orders bans by Until, then by key.
func compareBans(a, b Ban) int {
	if c := a.Until.Compare(b.Until); c != 0 {
		return c
	}
	if c := a.Key.Addr().Compare(b.Key.Addr()); c != 0 {
		return c
	}
	return a.Key.Bits() - b.Key.Bits()
}
