package admin

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// eventRingSize is how many recent events the status page shows.
const eventRingSize = 64

// eventMergeWindow is how many of the latest events an event may be merged
// into: a repeat (same message, peer, user, key and reason, e.g. a banned
// address knocking again) counts up the earlier one instead of pushing
// the other events out.
const eventMergeWindow = 8

// eventValueMax bounds each value kept in the ring (usernames and other
// client-chosen strings are attacker-controlled).
const eventValueMax = 64

// Event is one recent event of the status page: a log record of interest,
// reduced to a few attributes. It never holds a password (the proxy never
// logs one).
type Event struct {
	Time   time.Time `json:"time"` // of the latest repeat
	Level  string    `json:"level"`
	Msg    string    `json:"msg"`
	Peer   string    `json:"peer,omitempty"`
	User   string    `json:"user,omitempty"`
	Key    string    `json:"key,omitempty"`
	Reason string    `json:"reason,omitempty"`
	Detail string    `json:"detail,omitempty"` // the other attributes kept, "k=v k=v", of the latest repeat
	Count  int       `json:"count"`            // repeats merged into this event, itself included
}

// same reports whether e repeats o.
func (e *Event) same(o *Event) bool {
	return e.Msg == o.Msg && e.Peer == o.Peer && e.User == o.User && e.Key == o.Key && e.Reason == o.Reason &&
		e.Level == o.Level
}

// EventRing keeps the latest eventRingSize events, oldest first. The zero
// value is empty and ready to use; safe for concurrent use.
type EventRing struct {
	mu  sync.Mutex
	buf []Event
}

func (r *EventRing) add(e Event) {
	e.Count = 1
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.buf) - 1; i >= max(0, len(r.buf)-eventMergeWindow); i-- {
		if r.buf[i].same(&e) {
			e.Count = r.buf[i].Count + 1
			r.buf = append(r.buf[:i], r.buf[i+1:]...)
			break
		}
	}
	if len(r.buf) == eventRingSize {
		r.buf = append(r.buf[:0], r.buf[1:]...)
	}
	r.buf = append(r.buf, e)
}

// List returns the events held, newest first.
func (r *EventRing) List() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Event, len(r.buf))
	for i, e := range r.buf {
		out[len(out)-1-i] = e
	}
	return out
}

// ringMsgs are the info-level messages kept as events; every warning and
// error is kept too.
var ringMsgs = map[string]bool{
	"login ok": true, "ban": true, "unban": true, "reject": true, "reloaded": true,
	"listening": true, "draining": true, "stopped": true,
}

// ringAttrs are the attributes kept in an event's Detail, in this order
// (besides peer, user, key and reason, which have columns).
var ringAttrs = []string{"session", "count", "until", "for", "code", "cmd", "why", "origin", "action", "signal", "err"}

// NewLogHandler returns a slog.Handler that passes records to inner (at
// inner's level) and keeps the events of interest (info and above, whatever
// the log level) in ring, for the status page.
func NewLogHandler(inner slog.Handler, ring *EventRing) slog.Handler {
	return &ringHandler{inner: inner, ring: ring}
}

// ringHandler is a slog.Handler that passes records to inner (at inner's
// level) and keeps the events of interest (info and above, whatever the
// log level) in a ring for the status page.
type ringHandler struct {
	inner slog.Handler
	ring  *EventRing
	attrs []slog.Attr // from WithAttrs
}

func (h *ringHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.inner.Enabled(ctx, l)
}

func (h *ringHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn || r.Level >= slog.LevelInfo && ringMsgs[r.Message] {
		h.ring.add(h.event(r))
	}
	if h.inner.Enabled(ctx, r.Level) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

func (h *ringHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &ringHandler{inner: h.inner.WithAttrs(attrs), ring: h.ring,
		attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

func (h *ringHandler) WithGroup(name string) slog.Handler {
	return &ringHandler{inner: h.inner.WithGroup(name), ring: h.ring, attrs: h.attrs}
}

// event reduces r to an Event.
func (h *ringHandler) event(r slog.Record) Event {
	e := Event{Time: r.Time, Level: r.Level.String(), Msg: r.Message}
	other := make(map[string]string)
	take := func(a slog.Attr) bool {
		v := bound(a.Value.Resolve().String())
		switch a.Key {
		case "peer":
			e.Peer = v
		case "user":
			e.User = v
		case "key":
			e.Key = v
		case "reason":
			e.Reason = v
		default:
			other[a.Key] = v
		}
		return true
	}
	for _, a := range h.attrs {
		take(a)
	}
	r.Attrs(take)
	var d []string
	for _, k := range ringAttrs {
		if v, ok := other[k]; ok && v != "" {
			d = append(d, k+"="+v)
		}
	}
	e.Detail = strings.Join(d, " ")
	return e
}

// bound cuts v to eventValueMax bytes (on a rune boundary).
func bound(v string) string {
	if len(v) <= eventValueMax {
		return v
	}
	cut := eventValueMax
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut] + "…"
}
