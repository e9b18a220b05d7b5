package limiter

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// hookLog records the changes a ban hook receives.
type hookLog struct {
	mu  sync.Mutex
	got []BanChange
}

func (h *hookLog) fn(c BanChange) {
	h.mu.Lock()
	h.got = append(h.got, c)
	h.mu.Unlock()
}

func (h *hookLog) changes() []BanChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]BanChange(nil), h.got...)
}

func TestBanHookLocal(t *testing.T) {
	l, err := New(Config{Failures: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var h hookLog
	l.SetBanHook(h.fn)
	addr := netip.MustParseAddr("192.0.2.7")
	key := netip.MustParsePrefix("192.0.2.7/32")
	net24 := netip.MustParsePrefix("198.51.100.0/24")
	guess := func(now time.Time) Decision {
		if d := l.Attempt(now, addr); !d.Allowed {
			return d
		}
		return l.Failure(now, addr)
	}
	guess(t0)
	if d := guess(t0); !d.NewBan {
		t.Fatalf("second guess: %+v, want a new ban", d)
	}
	guess(t0.Add(time.Second)) // refused while banned: no change
	if _, err := l.BanKey(t0, net24, time.Minute, "manual"); err != nil {
		t.Fatal(err)
	}
	if lifted, err := l.Unban(key); !lifted || err != nil {
		t.Fatalf("Unban = %v, %v", lifted, err)
	}
	if lifted, _ := l.Unban(key); lifted { // nothing to lift: no change
		t.Fatal("second Unban lifted a ban")
	}
	want := []BanChange{
		{Ban: Ban{Key: key, Count: 1, Reason: ReasonBudget}},
		{Ban: Ban{Key: net24, Count: 1, Reason: "manual"}},
		{Ban: Ban{Key: key, Count: 1, Reason: ReasonBudget}, Lifted: true},
	}
	got := h.changes()
	if len(got) != len(want) {
		t.Fatalf("hook got %d changes %+v, want %d", len(got), got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Ban.Key != w.Ban.Key || g.Ban.Count != w.Ban.Count || g.Ban.Reason != w.Ban.Reason ||
			g.Lifted != w.Lifted || g.Remote || g.Ban.Until.IsZero() {
			t.Errorf("change %d = %+v, want %+v", i, g, w)
		}
	}
	l.SetBanHook(nil)
	l.BanKey(t0, net24, time.Minute, "")
	if n := len(h.changes()); n != len(want) {
		t.Errorf("hook removed, but got %d changes", n)
	}
}
