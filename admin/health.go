package admin

import (
	"context"
	"net"
	"sync"
	"time"
)

// healthTTL is how long one dial to the daemon answers every /healthz
// (and status page) asking after it.
const healthTTL = time.Second

// backendCheck caches the health dial to the daemon: at most one dial per
// healthTTL, shared by concurrent callers (singleflight). The zero value
// is ready; it is safe for concurrent use.
type backendCheck struct {
	mu   sync.Mutex
	call *backendCall // the dial in flight, or nil
	last backendHealth
	at   time.Time // of last; zero: none yet
}

type backendCall struct {
	done chan struct{}
	res  backendHealth
}

// backend returns the daemon's health: the cached result if younger than
// healthTTL, else the result of the dial in flight, else a new dial. A
// dial is not made while the session table is full (sessions_active ≥
// max_conns): health checks never add a connection to the daemon beyond
// the sessions' capacity; the last known state is reported then, with a
// note. ctx bounds only this caller's wait, never the shared dial.
func (a *Server) backendHealth(ctx context.Context, info Info, limit time.Duration) backendHealth {
	b := &a.health
	b.mu.Lock()
	if !b.at.IsZero() && time.Since(b.at) < healthTTL {
		r := b.last
		b.mu.Unlock()
		return r
	}
	c := b.call
	if c == nil {
		c = &backendCall{done: make(chan struct{})}
		b.call = c
		last, known := b.last, !b.at.IsZero()
		b.mu.Unlock()
		c.res = a.dialBackend(info, limit, last, known)
		b.mu.Lock()
		b.call, b.last, b.at = nil, c.res, time.Now()
		b.mu.Unlock()
		close(c.done)
		return c.res
	}
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.res
	case <-ctx.Done():
		return backendHealth{Address: info.Backend, Error: ctx.Err().Error()}
	}
}

// dialBackend dials the daemon once (within dial_timeout, at most limit),
// unless the session table is full.
func (a *Server) dialBackend(info Info, limit time.Duration, last backendHealth, known bool) backendHealth {
	h := backendHealth{Address: info.Backend}
	if info.MaxConns > 0 && a.m != nil && a.m.sessionsActive.Load() >= int64(info.MaxConns) {
		h.OK = !known || last.OK // the sessions open now reached it
		h.Note = "not dialed: the session table is full (max_conns)"
		return h
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(info.DialTimeout, limit))
	defer cancel()
	start := time.Now()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", info.Backend)
	h.DialMS = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		h.Error = err.Error()
	} else {
		c.Close()
		h.OK = true
	}
	return h
}
