package main

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// threadSlacks returns the timer slack of each thread of this process
// (other threads' need CAP_SYS_NICE).
func threadSlacks(t *testing.T) map[string]time.Duration {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Duration{}
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc", task.Name(), "timerslack_ns"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread ended
		}
		if err != nil {
			t.Fatal(err)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		got[task.Name()] = time.Duration(ns)
	}
	return got
}

// blockThreads parks n goroutines in a blocking read(2), each holding a
// thread, so that the runtime starts threads of its own; the returned
// function releases them and returns each one's thread's slack then.
func blockThreads(t *testing.T, n int) func() []time.Duration {
	t.Helper()
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil { // blocking descriptors
		t.Fatal(err)
	}
	slacks := make(chan time.Duration, n)
	for range n {
		go func() {
			runtime.LockOSThread()
			var b [1]byte
			syscall.Read(p[0], b[:])
			slacks <- currentTimerSlack()
		}()
	}
	time.Sleep(50 * time.Millisecond) // let them reach read(2)
	return func() []time.Duration {
		syscall.Write(p[1], make([]byte, n))
		var got []time.Duration
		for range n {
			got = append(got, <-slacks)
		}
		syscall.Close(p[0])
		syscall.Close(p[1])
		return got
	}
}

// TestSetTimerSlack sets the slack of every thread, those that exist and
// those started after, and puts the old one back. Without root a build
// with cgo (-race) cannot set other threads: then it must say so.
func TestSetTimerSlack(t *testing.T) {
	initial := currentTimerSlack()
	if initial <= 0 {
		t.Fatalf("PR_GET_TIMERSLACK gave %v", initial)
	}
	t.Cleanup(func() { setTimerSlack(initial) })
	before := blockThreads(t, 3) // threads that exist when it is set
	const want = 3 * time.Millisecond
	missed, err := setTimerSlack(want)
	if missed > 0 || err != nil {
		before()
		if os.Geteuid() == 0 || !errors.Is(err, fs.ErrPermission) || missed == 0 {
			t.Fatalf("setTimerSlack: %d threads missed, err %v", missed, err)
		}
		t.Logf("not root, a cgo build: %d threads missed (%v), as documented", missed, err)
		return
	}
	after := blockThreads(t, 2) // threads started after: they inherit it
	got := append(before(), after()...)
	if os.Geteuid() == 0 {
		// Root (CAP_SYS_NICE) may read every thread's, the runtime's too.
		for tid, d := range threadSlacks(t) {
			if d != want {
				t.Errorf("thread %s: slack %v, want %v", tid, d, want)
			}
		}
	}
	for i, d := range got {
		if d != want {
			t.Errorf("blocked thread %d: slack %v, want %v", i, d, want)
		}
	}
	if _, err := setTimerSlack(initial); err != nil {
		t.Fatal(err)
	}
	if d := currentTimerSlack(); d != initial {
		t.Errorf("slack %v after putting back %v", d, initial)
	}
}

// TestTimerSlackApply: timer_slack at start and at each reload; "0s" is
// the slack the process started with.
func TestTimerSlackApply(t *testing.T) {
	runtime.LockOSThread() // the thread read is the one apply runs on: set even without root
	defer runtime.UnlockOSThread()
	initial := currentTimerSlack()
	t.Cleanup(func() { setTimerSlack(initial) })
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s := newTimerSlack()
	steps := []struct {
		set, want time.Duration
		logged    string // "" = nothing
	}{
		{0, initial, ""},
		{2 * time.Millisecond, 2 * time.Millisecond, "timer_slack=2ms"},
		{2 * time.Millisecond, 2 * time.Millisecond, ""},
		{time.Millisecond, time.Millisecond, "timer_slack=1ms"},
		{0, initial, "timer_slack=" + initial.String()},
	}
	for i, st := range steps {
		buf.Reset()
		s.apply(st.set, log)
		if got := currentTimerSlack(); got != st.want {
			t.Errorf("step %d: apply(%v): slack %v, want %v", i, st.set, got, st.want)
		}
		out := buf.String()
		if st.logged == "" && out != "" || st.logged != "" && (!strings.Contains(out, "timer slack set") || !strings.Contains(out, st.logged)) {
			if os.Geteuid() != 0 && strings.Contains(out, "not set on every thread") {
				continue // not root, a cgo build: the calling thread is set, others not
			}
			t.Errorf("step %d: apply(%v) logged %q, want %q", i, st.set, out, st.logged)
		}
	}
}
