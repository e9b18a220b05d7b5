package proxy

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
)

// No panic may take the process down (docs/operating.md, "Failure
// modes"): every goroutine of a connection — the session's relays, its
// data legs, the implicit TLS handshake in handle — recovers a panic, ends
// that connection (the session's attempts still settle as failures, rule
// 1), logs it with its stack and counts it (Observer.Panic,
// ftpguard_panics_total). Other sessions go on. A panic raised while the
// session's lock is held may leave that session's goroutines blocked; they
// end with the session's connections, which are closed.

// maxPanicStack bounds the stack logged with a recovered panic.
const maxPanicStack = 8 << 10

// testHook, set by tests only, is called at fixed points of a session
// ("command" with the verb of each client command, "data" at the start of
// each data relay, "endQueued" at each batch of EndBansSoon) so that a test
// can inject a panic. Nil in production.
var testHook atomic.Pointer[func(where, arg string)]

func callTestHook(where, arg string) {
	if h := testHook.Load(); h != nil {
		(*h)(where, arg)
	}
}

// recovered logs and counts a panic v recovered in where.
func (s *Server) recovered(log *slog.Logger, where string, v any) {
	st := debug.Stack()
	if len(st) > maxPanicStack {
		st = st[:maxPanicStack]
	}
	log.Error("panic recovered; connection closed", "in", where, "panic", logSafe(fmt.Sprint(v)), "stack", string(st))
	s.obs.Panic()
}

// guard runs f; a panic in it is recovered (logged, counted), the session
// aborted, and then, if not nil, after is called (e.g. to report the end
// of a relay half that its waiter counts on).
func (s *session) guard(where string, f func(), after func()) {
	defer func() {
		if v := recover(); v != nil {
			s.srv.recovered(s.log, where, v)
			s.abort()
			if after != nil {
				after()
			}
		}
	}()
	f()
}
