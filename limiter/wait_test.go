package limiter

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// wop is what one step of a waiting table does.
type wop int

const (
	wBegin  wop = iota // Begin guess id from addr
	wRetry             // Retry guess id (after its Wait fired, or a poll)
	wSettle            // Settle guess id with out (a waiting one: gives up its place)
	wReload            // Reload with cfg
	wBan               // BanKey key for an hour
)

// wstep is one step of a waiting table. After it, exactly the guesses in
// fired have a signal pending on their Wait (each is drained), and
// waiting guesses are queued.
type wstep struct {
	op   wop
	id   int
	addr string
	out  Outcome
	cfg  Config
	key  string

	ok      bool // Begin, Retry: Verdict.OK()
	busy    bool // Begin, Retry: Verdict.Busy
	queued  bool // Begin, Retry: Verdict.Wait != nil
	banned  bool // Begin, Retry: refused under a ban
	fired   []int
	waiting int
}

func TestWaitForPlace(t *testing.T) {
	a1, a2 := "192.0.2.7", "198.51.100.1"
	tests := []struct {
		name  string
		cfg   Config
		steps []wstep
	}{
		{"FIFO: a success frees a place for the first waiter", Config{Failures: 2}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, ok: true},
			{op: wBegin, id: 3, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 4, addr: a1, busy: true, queued: true, waiting: 2},
			{op: wBegin, id: 5, addr: a1, busy: true, queued: true, waiting: 3},
			{op: wSettle, id: 1, out: OutcomeSuccess, fired: []int{3}, waiting: 3},
			// A place is free, but three guesses wait: a new one queues
			// behind them rather than take it.
			{op: wBegin, id: 6, addr: a1, busy: true, queued: true, waiting: 4},
			{op: wRetry, id: 4, busy: true, queued: true, waiting: 4}, // not the first
			{op: wRetry, id: 3, ok: true, fired: []int{4}, waiting: 3},
			{op: wRetry, id: 4, busy: true, queued: true, waiting: 3}, // 2 and 3 hold both places
			{op: wSettle, id: 2, out: OutcomeRelease, fired: []int{4}, waiting: 3},
			{op: wRetry, id: 4, ok: true, fired: []int{5}, waiting: 2},
			{op: wRetry, id: 5, busy: true, queued: true, waiting: 2},
			{op: wSettle, id: 3, out: OutcomeSuccess, fired: []int{5}, waiting: 2},
			{op: wRetry, id: 5, ok: true, fired: []int{6}, waiting: 1},
			{op: wSettle, id: 4, out: OutcomeSuccess, fired: []int{6}, waiting: 1},
			{op: wRetry, id: 6, ok: true, waiting: 0},
		}},
		{"the queue is bounded", Config{Failures: 1, MaxLoginWaiters: 2}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 3, addr: a1, busy: true, queued: true, waiting: 2},
			{op: wBegin, id: 4, addr: a1, busy: true, waiting: 2}, // refused by the caller
			{op: wSettle, id: 4, out: OutcomeRelease, waiting: 2},
			// Another key has a queue of its own.
			{op: wBegin, id: 5, addr: a2, ok: true, waiting: 2},
			{op: wBegin, id: 6, addr: a2, busy: true, queued: true, waiting: 3},
		}},
		{"a failure that bans wakes every waiter to find the ban", Config{Failures: 2}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, ok: true},
			{op: wBegin, id: 3, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 4, addr: a1, busy: true, queued: true, waiting: 2},
			{op: wSettle, id: 1, out: OutcomeFailure, fired: []int{3}, waiting: 2},
			{op: wRetry, id: 3, busy: true, queued: true, waiting: 2}, // one token, held by 2
			{op: wSettle, id: 2, out: OutcomeFailure, fired: []int{3, 4}, waiting: 2},
			{op: wRetry, id: 3, banned: true, fired: []int{4}, waiting: 1},
			{op: wRetry, id: 4, banned: true, waiting: 0},
			// Nothing more reaches the daemon: a new guess is refused, not queued.
			{op: wBegin, id: 5, addr: a1, banned: true, waiting: 0},
		}},
		{"a ban of a wider prefix wakes the waiters it covers", Config{Failures: 1}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 3, addr: a2, ok: true, waiting: 1},
			{op: wBegin, id: 4, addr: a2, busy: true, queued: true, waiting: 2},
			{op: wBan, key: "192.0.2.0/24", fired: []int{2}, waiting: 2},
			{op: wRetry, id: 2, banned: true, waiting: 1},
		}},
		{"a reload wakes the waiters", Config{Failures: 1}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 3, addr: a1, busy: true, queued: true, waiting: 2},
			// A larger budget keeps its tokens (the one left is held): still busy.
			{op: wReload, cfg: Config{Failures: 2}, fired: []int{2, 3}, waiting: 2},
			{op: wRetry, id: 3, busy: true, queued: true, waiting: 2},
			{op: wRetry, id: 2, busy: true, queued: true, waiting: 2},
			// New prefixes: the guesses go to the budget of their new key.
			{op: wReload, cfg: Config{Failures: 2, IPv4Prefix: 24}, fired: []int{2, 3}, waiting: 2},
			{op: wRetry, id: 2, ok: true, fired: []int{3}, waiting: 1},
			{op: wRetry, id: 3, ok: true, waiting: 0},
		}},
		{"an evicted budget wakes its waiters", Config{Failures: 1, MaxTracked: 1}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 3, addr: a2, ok: true, fired: []int{2}, waiting: 1}, // a1's budget is forgotten
			{op: wRetry, id: 2, ok: true, waiting: 0},
		}},
		{"a guess that gives up leaves no waiter", Config{Failures: 1}, []wstep{
			{op: wBegin, id: 1, addr: a1, ok: true},
			{op: wBegin, id: 2, addr: a1, busy: true, queued: true, waiting: 1},
			{op: wBegin, id: 3, addr: a1, busy: true, queued: true, waiting: 2},
			{op: wBegin, id: 4, addr: a1, busy: true, queued: true, waiting: 3},
			{op: wSettle, id: 3, out: OutcomeRelease, waiting: 2},                  // not the first: nobody moves up
			{op: wSettle, id: 2, out: OutcomeRelease, fired: []int{4}, waiting: 1}, // the first: the next is told
			{op: wSettle, id: 4, out: OutcomeRelease, waiting: 0},
			{op: wSettle, id: 1, out: OutcomeSuccess, waiting: 0},
			{op: wBegin, id: 5, addr: a1, ok: true, waiting: 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, tt.cfg, nil)
			attempts := map[int]*Attempt{}
			waits := map[int]<-chan struct{}{}
			for i, st := range tt.steps {
				now := t0.Add(time.Duration(i) * time.Millisecond)
				name := fmt.Sprintf("step %d (op %d, guess %d)", i, st.op, st.id)
				var v Verdict
				check := false
				switch st.op {
				case wBegin:
					attempts[st.id], v = l.Begin(now, netip.MustParseAddr(st.addr), "", nil)
					check = true
				case wRetry:
					attempts[st.id], v = attempts[st.id].Retry(now)
					check = true
				case wSettle:
					attempts[st.id].Settle(now, st.out)
					delete(waits, st.id)
				case wReload:
					if err := l.Reload(st.cfg); err != nil {
						t.Fatal(err)
					}
				case wBan:
					if _, err := l.BanKey(now, netip.MustParsePrefix(st.key), time.Hour, "admin"); err != nil {
						t.Fatal(err)
					}
				}
				if check {
					if v.OK() != st.ok || v.Busy != st.busy || (v.Wait != nil) != st.queued || (v.Ban.Key.IsValid() && !v.Allowed) != st.banned {
						t.Fatalf("%s: Verdict %+v; want OK %v, Busy %v, queued %v, banned %v", name, v, st.ok, st.busy, st.queued, st.banned)
					}
					if v.Wait != nil {
						if w, ok := waits[st.id]; ok && w != v.Wait {
							t.Fatalf("%s: the guess lost its place in the queue", name)
						}
						waits[st.id] = v.Wait
					} else {
						delete(waits, st.id)
					}
				}
				var fired []int
				for id, w := range waits {
					select {
					case <-w:
						fired = append(fired, id)
					default:
					}
				}
				slices.Sort(fired)
				if !slices.Equal(fired, st.fired) {
					t.Fatalf("%s: signalled %v, want %v", name, fired, st.fired)
				}
				if n, _ := l.waiting(); n != st.waiting {
					t.Fatalf("%s: %d guesses waiting, want %d", name, n, st.waiting)
				}
			}
			for _, a := range attempts {
				a.Settle(t0.Add(time.Hour), OutcomeRelease)
			}
			if n, keys := l.waiting(); n != 0 || keys != 0 || l.nwait.Load() != 0 {
				t.Fatalf("after every guess settled: %d waiting in %d queues (count %d)", n, keys, l.nwait.Load())
			}
		})
	}
}
