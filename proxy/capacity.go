package proxy

// The session table's capacity: sessions counted per address key (the
// limiter's [limits] prefixes, not the exact address), and fair shedding
// when the table is full. docs/design.md rule 5.
//
// A full table does not refuse the newcomer while someone merely holds a
// slot: it ends a pre-login session of the key holding the most of them
// (that key's oldest first), so that a few addresses holding idle
// connections cannot lock everybody else out. Logged-in sessions are never
// shed; only when no pre-login session is left to shed is the newcomer
// refused.
//
// Bookkeeping is O(log n) per connect, login and end: per key, a count of its
// sessions and a list of its pre-login ones, oldest first; keys are kept in
// buckets by their count of pre-login sessions (a key moves between
// neighbouring buckets, so the highest non-empty bucket is found in O(1));
// in a bucket, keys are a heap by their oldest session (O(log n)).

import (
	"container/heap"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/limiter"
)

// capSlot is one admitted connection's place in the table. A slot is
// pre-login (sheddable) from its admission, while the backend is still
// being dialed too: a flood of connections can hold every slot in that
// state for seconds when the daemon's accept queue overflows.
type capSlot struct {
	k          *capKey
	ss         *session // set once the session exists (after the backend is dialed)
	seq        uint64   // admission order
	ctx        context.Context
	cancel     context.CancelFunc // sheds the slot while it dials
	prev, next *capSlot           // in k's pre-login list
	pre        bool               // in k's pre-login list
	freed      bool               // its counts were given back (shed, or released)
}

// capKey is one address key's sessions.
type capKey struct {
	key        netip.Prefix
	all        int      // admitted connections (dialing included) not freed
	pre        int      // pre-login sessions in the list
	head, tail *capSlot // pre-login list, oldest first
	idx        int      // in bucket pre (a heap)
}

// capTable is the session table's counts. Not safe for concurrent use:
// Server.mu guards it.
type capTable struct {
	keys    map[netip.Prefix]*capKey
	buckets []capBucket // by pre; [0] unused
	seq     uint64      // admissions so far: the age order of slots
	top     int         // highest non-empty bucket; 0: no pre-login session
	conns   int         // admitted connections not freed
}

func newCapTable() capTable {
	return capTable{keys: make(map[netip.Prefix]*capKey), buckets: make([]capBucket, 1)}
}

// count returns the connections of key not freed.
func (t *capTable) count(key netip.Prefix) int {
	if k := t.keys[key]; k != nil {
		return k.all
	}
	return 0
}

// admit counts a new, pre-login connection of key and returns its slot;
// ctx is the slot's, cancelled when it is shed (it ends a dial or a TLS
// handshake, implicit or after AUTH TLS, in progress) or released.
func (t *capTable) admit(ctx context.Context, key netip.Prefix) *capSlot {
	k := t.keys[key]
	if k == nil {
		k = &capKey{key: key}
		t.keys[key] = k
	}
	k.all++
	t.conns++
	t.seq++
	sl := &capSlot{k: k, seq: t.seq}
	sl.ctx, sl.cancel = context.WithCancel(ctx)
	t.enterPre(sl)
	return sl
}

// attach gives sl its session (once the backend is dialed).
func (t *capTable) attach(sl *capSlot, ss *session) { sl.ss = ss }

// enterPre appends sl to its key's pre-login list.
func (t *capTable) enterPre(sl *capSlot) {
	k := sl.k
	sl.pre = true
	sl.prev, sl.next = k.tail, nil
	if k.tail != nil {
		k.tail.next = sl
	} else {
		k.head = sl
	}
	k.tail = sl
	t.move(k, k.pre, k.pre+1)
	k.pre++
}

// leavePre takes sl out of its key's pre-login list (a login, the end, a
// shed). Idempotent.
func (t *capTable) leavePre(sl *capSlot) {
	if !sl.pre {
		return
	}
	k := sl.k
	sl.pre = false
	if sl.prev != nil {
		sl.prev.next = sl.next
	} else {
		k.head = sl.next
	}
	if sl.next != nil {
		sl.next.prev = sl.prev
	} else {
		k.tail = sl.prev
	}
	sl.prev, sl.next = nil, nil
	t.move(k, k.pre, k.pre-1)
	k.pre--
}

// guessing takes sl out of its key's pre-login list while a guess of its
// session awaits the daemon's reply (on), and puts it back, as the key's
// youngest, once the guess failed (off): a session whose password is in
// flight is not shed, since ending it would settle that guess as a
// failure the client never saw answered. A freed or logged-in slot is
// left alone.
func (t *capTable) guessing(sl *capSlot, on bool) {
	switch {
	case sl.freed || sl.ss != nil && sl.ss.loggedIn.Load():
	case on:
		t.leavePre(sl)
	case !sl.pre:
		t.enterPre(sl)
	}
}

// free gives back sl's counts. Idempotent.
func (t *capTable) free(sl *capSlot) {
	t.leavePre(sl)
	if sl.freed {
		return
	}
	sl.freed = true
	t.conns--
	k := sl.k
	if k.all--; k.all <= 0 && k.pre == 0 {
		delete(t.keys, k.key)
	}
}

// victim picks the pre-login slot to shed: the oldest of the key with the
// most pre-login slots (of those keys, the one holding the oldest slot). It frees the slot at once, so the newcomer takes its place, and
// returns it; nil when no pre-login slot is left.
func (t *capTable) victim() *capSlot {
	if t.top == 0 {
		return nil
	}
	sl := t.buckets[t.top][0].head
	t.free(sl)
	return sl
}

// move takes k from bucket from to bucket to (0: none), keeping top. Each
// bucket is a min-heap of its keys by their oldest pre-login slot, so that
// of keys holding as many, the one holding the oldest slot is shed first.
// Every change of a key's oldest slot comes with a move: O(log n).
func (t *capTable) move(k *capKey, from, to int) {
	if from > 0 {
		heap.Remove(&t.buckets[from], k.idx)
	}
	if to > 0 {
		for len(t.buckets) <= to {
			t.buckets = append(t.buckets, nil)
		}
		heap.Push(&t.buckets[to], k)
		t.top = max(t.top, to)
	}
	for t.top > 0 && len(t.buckets[t.top]) == 0 {
		t.top--
	}
}

// capBucket is the keys holding a given count of pre-login slots, a
// min-heap by their oldest slot's admission (container/heap drives it).
type capBucket []*capKey

func (b capBucket) Len() int           { return len(b) }
func (b capBucket) Less(i, j int) bool { return b[i].head.seq < b[j].head.seq }
func (b capBucket) Swap(i, j int) {
	b[i], b[j] = b[j], b[i]
	b[i].idx, b[j].idx = i, j
}
func (b *capBucket) Push(x any) {
	k := x.(*capKey)
	k.idx = len(*b)
	*b = append(*b, k)
}
func (b *capBucket) Pop() any {
	old := *b
	k := old[len(old)-1]
	old[len(old)-1] = nil
	*b = old[:len(old)-1]
	k.idx = -1
	return k
}

// ---- the Server's side: the gate, shedding, the end of a session ----

// Reasons of refusals and closes of this file, as logged and counted.
const (
	reasonNoAuth   = "noauth penalty"
	reasonConnRate = "conn_rate"
	reasonShed     = "shed"
)

// Why a session ended without a login attempt: what counts towards a
// no-auth penalty (session.endWhy).
var (
	whyLoginTimeout = "login timeout"
	whyPreauth      = "max_preauth_commands"
	whyShed         = "shed"
)

// gateKey refuses, before the backend is dialed, a key under a no-auth
// penalty or over its connection rate (an allowlisted one never), and
// reports whether c goes on. d is the limiter's Check of addr. In observe
// mode both are only logged.
func (s *Server) gateKey(c net.Conn, log *slog.Logger, now time.Time, addr netip.Addr, d limiter.Decision) bool {
	if d.Allowlisted {
		return true
	}
	cfg := s.config()
	if b, ok := s.lim.Penalized(now, addr); ok &&
		s.enforce(log, reasonNoAuth, "key", b.Key.String(), "until", b.Until.Format(time.RFC3339)) {
		refuse(c, "421 Too many connections from your address ended without a login; try again later.")
		return false
	}
	if cfg.ConnRate > 0 && !s.rates.allow(now, d.Key, cfg.ConnRate, cfg.ConnBurst, cfg.ConnRateKeys) &&
		s.enforce(log, reasonConnRate, "key", d.Key.String(), "rate", cfg.ConnRate, "burst", cfg.ConnBurst) {
		refuse(c, "421 Too many connections per second from your address; slow down.")
		return false
	}
	return true
}

// acquire counts a new connection of key against MaxConnsPerIP (per key)
// and MaxConns. It returns the connection's slot, or a refusal reason. A
// full table sheds a pre-login session (victim, for the caller to close
// outside the lock) rather than refuse; "max_conns" only when none is
// left. In observe mode a connection over MaxConnsPerIP is admitted, and
// would says so ("max_conns_per_ip"); MaxConns, which protects the proxy
// itself, is kept in every mode.
func (s *Server) acquire(key netip.Prefix) (sl *capSlot, victim *capSlot, reason, would string) {
	cfg := s.config()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.shutdown.Load():
		return nil, nil, "shutting down", ""
	case s.caps.count(key) >= cfg.MaxConnsPerIP:
		if !cfg.Observe {
			return nil, nil, "max_conns_per_ip", ""
		}
		would = "max_conns_per_ip"
	}
	if s.caps.conns >= cfg.MaxConns {
		if victim = s.caps.victim(); victim == nil {
			return nil, nil, "max_conns", ""
		}
	}
	return s.caps.admit(s.ctx, key), victim, "", would
}

// release gives back sl's place (a no-op for a shed session's, given back
// when it was shed) and wakes Shutdown.
func (s *Server) release(sl *capSlot) {
	sl.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.caps.free(sl)
	close(s.sessDone)
	s.sessDone = make(chan struct{})
}

// shed ends sl, a pre-login slot, to make room: its dial is cancelled
// (handle then refuses it, see shedWhileDialing), or its session gets 421
// with the reason, then the close. Its place was given to the newcomer
// already. Called without s.mu.
func (s *Server) shed(sl *capSlot) {
	sl.cancel()
	s.mu.Lock()
	ss := sl.ss
	s.mu.Unlock()
	if ss == nil {
		return // handle refuses it once its dial is cancelled
	}
	s.reject(ss.log, reasonShed, "key", sl.k.key.String(), "age", time.Since(ss.start).Round(time.Millisecond))
	ss.endWhy.Store(&whyShed)
	ss.mu.Lock()
	if !ss.closing.Load() {
		ss.wbuf = ftpproto.NewReply(421, "Server busy: closing idle connections that have not logged in.").AppendWire(ss.wbuf[:0])
		ss.client.SetWriteDeadline(time.Now().Add(time.Second))
		ss.client.Write(ss.wbuf)
		ss.closing.Store(true)
	}
	ss.mu.Unlock()
	ss.backend.Close()
	ss.setClientDeadline(time.Now()) // relayCommands lingers, then ends it
}

// loginDone takes ss out of the sheddable sessions (it logged in), and
// makes its key known-good: it is never given a no-auth penalty.
func (s *Server) loginDone(ss *session) {
	s.mu.Lock()
	if ss.slot != nil {
		s.caps.leavePre(ss.slot)
	}
	s.mu.Unlock()
	s.lim.LoggedIn(time.Now(), ss.peer.Addr(), s.config().NoAuth)
}

// guessing marks ss's guess in flight (on) or failed (off) in the session
// table (capTable.guessing).
func (s *Server) guessing(ss *session, on bool) {
	s.mu.Lock()
	if ss.slot != nil {
		s.caps.guessing(ss.slot, on)
	}
	s.mu.Unlock()
}

// noAuthEnd counts, as ss ends, a connection that ended without a login
// attempt (login timeout, pre-login command limit, shed) towards its key's
// no-auth penalty. A session that sent a PASS to the daemon is not one:
// the budgets deal with guesses.
func (s *Server) noAuthEnd(ss *session) {
	why := ss.endWhy.Load()
	if why == nil || ss.loggedIn.Load() || ss.attempted.Load() {
		return
	}
	b, made := s.lim.NoAuth(time.Now(), ss.peer.Addr(), s.config().NoAuth)
	if made {
		ss.log.Warn("penalty", "key", b.Key.String(), "reason", limiter.ReasonNoAuth, "why", *why,
			"until", b.Until.Format(time.RFC3339), "for", time.Until(b.Until).Round(time.Second), "count", b.Count)
	}
}

// shedWhileDialing refuses c, whose slot was shed before its session
// existed (log, key: the connection's), and counts it towards the key's
// no-auth penalty like a shed session.
func (s *Server) shedWhileDialing(c net.Conn, log *slog.Logger, peer netip.Addr, key netip.Prefix) {
	s.reject(log, reasonShed, "key", key.String(), "while", "dialing the backend")
	refuse(c, "421 Server busy: closing idle connections that have not logged in.")
	b, made := s.lim.NoAuth(time.Now(), peer, s.config().NoAuth)
	if made {
		log.Warn("penalty", "key", b.Key.String(), "reason", limiter.ReasonNoAuth, "why", whyShed,
			"until", b.Until.Format(time.RFC3339), "for", time.Until(b.Until).Round(time.Second), "count", b.Count)
	}
}
