package main

import (
	"log/slog"
	"sync"
	"time"
)

// maxTimerSlack bounds timer_slack: every timer of ftpguard (timeouts, the
// tarpit, the token buckets' waits) may fire that much late.
const maxTimerSlack = 100 * time.Millisecond

// timerSlack applies the timer_slack setting at start and at each reload.
type timerSlack struct {
	mu      sync.Mutex
	initial time.Duration // the slack the process started with: what 0 means
	inForce time.Duration
}

func newTimerSlack() *timerSlack {
	s := currentTimerSlack()
	return &timerSlack{initial: s, inForce: s}
}

// apply sets every thread's slack to d (0: the one the process started
// with) unless it is in force already, and logs what it did.
func (t *timerSlack) apply(d time.Duration, log *slog.Logger) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d == 0 {
		d = t.initial
	}
	if d == t.inForce || d == 0 {
		return
	}
	missed, err := setTimerSlack(d)
	if err != nil && missed == 0 {
		log.Warn("timer slack not set", "timer_slack", d.String(), "in_force", t.inForce.String(), "err", err)
		return
	}
	t.inForce = d
	if err != nil {
		log.Warn("timer slack not set on every thread (they need CAP_SYS_NICE in a cgo build)",
			"timer_slack", d.String(), "threads_missed", missed, "err", err)
		return
	}
	log.Info("timer slack set", "timer_slack", d.String())
}
