package admin

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// TestRingHandler: the ring keeps the events of interest whatever the log
// level, with the attributes of With; the log keeps its own level.
func TestRingHandler(t *testing.T) {
	var logs syncBuffer
	ring := new(EventRing)
	log := slog.New(&ringHandler{inner: slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}), ring: ring})
	sess := log.With("session", 3, "peer", "198.51.100.4")
	sess.Info("connect")                                    // not an event, not logged
	sess.Info("login ok", "user", "alice")                  // an event, not logged (level warn)
	sess.Warn("ban", "key", "198.51.100.4/32", "count", 2)  // both
	log.WithGroup("g").Info("reject", "reason", "banned")   // an event
	sess.Info("login ok", "user", strings.Repeat("é", 100)) // bounded
	got := ring.List()
	if len(got) != 4 {
		t.Fatalf("ring holds %d events: %+v", len(got), got)
	}
	if e := got[2]; e.Msg != "ban" || e.Peer != "198.51.100.4" || e.Key != "198.51.100.4/32" || e.Detail != "session=3 count=2" || e.Level != "WARN" {
		t.Errorf("ban event %+v", e)
	}
	if e := got[3]; e.Msg != "login ok" || e.User != "alice" {
		t.Errorf("login event %+v", e)
	}
	if u := got[0].User; len(u) > eventValueMax+len("…") || !strings.HasSuffix(u, "…") {
		t.Errorf("long user kept as %q", u)
	}
	if l := logs.String(); strings.Contains(l, "login ok") || strings.Contains(l, "connect") || !strings.Contains(l, "msg=ban") {
		t.Errorf("log at warn wrote:\n%s", l)
	}
	// Repeats within the last few events are merged and counted.
	for i := range 5 {
		log.Info("reject", "reason", "banned", "peer", "203.0.113.1", "session", i)
		log.Info("reject", "reason", "banned", "peer", "203.0.113.2", "session", i)
	}
	got = ring.List()
	if len(got) != 6 || got[0].Count != 5 || got[0].Peer != "203.0.113.2" || got[0].Detail != "session=4" || got[1].Count != 5 {
		t.Errorf("merged events: %+v", got[:2])
	}
	for i := range eventRingSize + 5 {
		log.Warn("x", "n", i)
	}
	if got := ring.List(); len(got) != 7 || got[0].Msg != "x" || got[0].Count != eventRingSize+5 {
		t.Errorf("ring holds %d events (newest %+v), want 7, the repeats of x merged", len(got), got[0])
	}
	for i := range eventRingSize + 5 {
		log.Warn("y", "n", i, "peer", fmt.Sprint(i))
	}
	if got := ring.List(); len(got) != eventRingSize || got[0].Peer != fmt.Sprint(eventRingSize+4) {
		t.Errorf("ring holds %d events, want %d", len(got), eventRingSize)
	}
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
