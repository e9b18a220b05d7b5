package limiter

// Ban changes that a (non-shared) store failed to write — a full disk, an
// I/O error — are retried with backoff until they land. The shared store
// has its own queue (circuit.go).

import (
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Backoff of the retries of unsaved ban changes: the first retry after
// retryMin, doubled after each failed round, at most retryMax apart.
const (
	retryMin = 250 * time.Millisecond
	retryMax = 30 * time.Second
)

// retrier keeps the keys whose ban change (a ban, or an unban) a store
// failed to write, and a goroutine that writes them again with backoff
// until every one has landed. The goroutine runs only while keys are
// pending, so a limiter whose store never fails has none. The zero value
// is ready; close stops it (a final round is tried first).
type retrier struct {
	mu      sync.Mutex
	pending map[bkey]netip.Prefix // at most MaxTracked keys
	running bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

// add queues p after a failed write and starts the goroutine if needed.
// Called with l.storeMu held.
func (t *retrier) add(l *Limiter, p netip.Prefix) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		t.pending = make(map[bkey]netip.Prefix)
	}
	k := keyOf(p)
	if _, ok := t.pending[k]; !ok && len(t.pending) >= l.cfg.Load().MaxTracked {
		return // beyond the bound the change stays local (counted as a store error)
	}
	t.pending[k] = p
	if !t.running && !t.closed {
		t.running = true
		t.stop, t.done = make(chan struct{}), make(chan struct{})
		go t.run(l, t.stop, t.done)
	}
}

// len is the number of ban changes not yet written.
func (t *retrier) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

// close stops the goroutine, after one last round, and waits for it.
func (t *retrier) close() {
	t.mu.Lock()
	t.closed = true
	stop, done, running := t.stop, t.done, t.running
	t.mu.Unlock()
	if running {
		close(stop)
		<-done
	}
}

func (t *retrier) run(l *Limiter, stop, done chan struct{}) {
	defer close(done)
	wait := retryMin
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-stop:
			t.round(l)
			return
		case <-timer.C:
		}
		if t.round(l) {
			t.mu.Lock()
			if len(t.pending) == 0 { // else keys came meanwhile: go on
				t.running = false
				t.mu.Unlock()
				return
			}
			t.mu.Unlock()
			wait = retryMin
		} else {
			wait = min(2*wait, retryMax)
		}
		timer.Reset(wait)
	}
}

// round writes every pending change once; it reports whether all landed.
func (t *retrier) round(l *Limiter) bool {
	t.mu.Lock()
	todo := make(map[bkey]netip.Prefix, len(t.pending))
	for k, p := range t.pending {
		todo[k] = p
	}
	t.mu.Unlock()
	ok := true
	for k, p := range todo {
		saved, err := l.rewrite(k, p)
		if err != nil {
			l.storeFailed(fmt.Errorf("%w: retry of the ban change of %v: %w", ErrStore, p, err))
			ok = false
			continue
		}
		t.mu.Lock()
		delete(t.pending, k)
		t.mu.Unlock()
		if saved != nil {
			l.notify(BanChange{Ban: *saved, Saved: true})
		}
	}
	return ok
}

// rewrite writes the current state of key k (prefix p) to the store: its
// ban if the table holds one not yet saved (returned once saved, for the
// hook), its deletion if the table holds none and k was unbanned (a record
// evicted or forgotten leaves the store as it is: pendingUnbanLocked).
func (l *Limiter) rewrite(k bkey, p netip.Prefix) (*Ban, error) {
	l.storeMu.Lock()
	defer l.storeMu.Unlock()
	l.mu.RLock()
	r := l.bans.recs[k]
	var (
		ban    Ban
		seq    uint64
		synced bool
	)
	if r != nil {
		ban, seq, synced = r.ban, r.seq, r.synced
	}
	useq, unban := l.unbans[k]
	l.mu.RUnlock()
	switch {
	case r == nil && unban:
		return nil, l.writeUnban(k, p, useq)
	case r == nil, synced:
		return nil, nil
	}
	if err := l.store.SaveBan(ban); err != nil {
		return nil, err
	}
	if l.markSynced(k, seq) {
		return &ban, nil
	}
	return nil, nil
}

// unsaved reports whether b is its key's ban in the table and not (yet)
// in the store; if so, the record remembers that the hook was told, so
// that it is told again once the ban is saved.
func (l *Limiter) unsaved(b Ban) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.bans.recs[keyOf(b.Key)]
	if r != nil && !r.synced && r.ban.Since.Equal(b.Since) && r.ban.Count == b.Count {
		r.toldUnsaved = true
		return true
	}
	return false
}
