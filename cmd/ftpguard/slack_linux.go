package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	prSetTimerSlack = 29 // PR_SET_TIMERSLACK, <linux/prctl.h>
	prGetTimerSlack = 30 // PR_GET_TIMERSLACK
)

// currentTimerSlack returns the calling thread's timer slack: at start,
// the one the process was given (the kernel's 50 µs, or systemd's
// TimerSlackNSec=).
func currentTimerSlack() time.Duration {
	r, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prGetTimerSlack, 0, 0)
	if e != 0 {
		return 0
	}
	return time.Duration(r)
}

// setTimerSlack sets the timer slack of every thread of the process to d
// (> 0): how late the kernel may end a thread's sleep, to group its
// wake-ups with others'. ftpguard's timers are seconds long (timeouts,
// the tarpit), and the kernel's default of 50 µs costs it CPU: while the
// process is busy, the Go runtime's monitor thread sleeps 20 µs at a time,
// and with 1 ms of slack it wakes far less often (docs/benchmarks.md,
// "Timer slack"). It returns how many threads it could not set.
//
// The slack is a per-thread setting that a new thread takes from the one
// that creates it. syscall.AllThreadsSyscall sets it on every thread of
// the runtime, the monitor thread included, atomically with respect to new
// threads. A build with cgo (the race detector's, or `go build` where a C
// compiler is found: the net package links it) cannot use it; then each
// thread is set through /proc/TID/timerslack_ns, which for the threads
// other than the caller needs CAP_SYS_NICE, and a thread created while
// that runs is set by a second pass.
func setTimerSlack(d time.Duration) (missed int, err error) {
	ns := uintptr(d.Nanoseconds())
	_, _, e := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, prSetTimerSlack, ns, 0)
	if e == 0 {
		return 0, nil
	}
	if e != syscall.ENOTSUP {
		return 0, fmt.Errorf("prctl(PR_SET_TIMERSLACK): %w", e)
	}
	// A thread created during a pass by one not yet set takes the old
	// slack: the next pass sets it.
	val := strconv.FormatUint(uint64(ns), 10)
	for pass := 0; pass < 3; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return 0, err
		}
		var first error
		changed := 0
		missed = 0
		for _, t := range tasks {
			// timerslack_ns is in /proc/TID, not /proc/self/task/TID.
			p := filepath.Join("/proc", t.Name(), "timerslack_ns")
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == val {
				continue
			}
			if err := os.WriteFile(p, []byte(val), 0); err != nil {
				if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
					continue // the thread ended
				}
				missed++
				if first == nil {
					first = err
				}
				continue
			}
			changed++
		}
		if changed == 0 || missed > 0 {
			return missed, first
		}
	}
	return 0, nil
}
