//go:build integration

package crowdsec

// The real-LAPI test: Debian's crowdsec, unpacked by .ci/crowdsec.sh into
// /opt/ftpguard-test-crowdsec (FTPGUARD_CROWDSEC overrides), runs as a Local
// API only (-no-cs), on a free loopback port, with its database in a temp
// dir and no Central API: no traffic leaves 127.0.0.1.
//
//	go test -tags integration -race -count=1 -v -run LAPI ./crowdsec/

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lapi is a running CrowdSec LAPI.
type lapi struct {
	root   string // the unpacked .deb
	config string // its config file
	url    string
	key    string // a bouncer key
	pw     string // machine "ftpguard"'s password

	out  syncBuffer // its output, over restarts
	cmd  *exec.Cmd  // nil when stopped
	done chan error // cmd's Wait
}

func crowdsecRoot(t *testing.T) string {
	root := os.Getenv("FTPGUARD_CROWDSEC")
	if root == "" {
		root = "/opt/ftpguard-test-crowdsec"
	}
	for _, b := range []string{"usr/bin/crowdsec", "usr/bin/cscli"} {
		if _, err := os.Stat(filepath.Join(root, b)); err != nil {
			msg := fmt.Sprintf("no CrowdSec in %s (%v): run .ci/crowdsec.sh as root", root, err)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return root
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects the LAPI's output for the test log.
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

// startLAPI writes a config, registers a machine and a bouncer, starts the
// LAPI and waits until it answers. Cleanup stops it.
func startLAPI(t *testing.T) *lapi {
	root := crowdsecRoot(t)
	dir := t.TempDir()
	for _, d := range []string{"data", "hub", "cfg", "plugins"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	l := &lapi{root: root, config: filepath.Join(dir, "config.yaml"),
		url: fmt.Sprintf("http://127.0.0.1:%d/", port), pw: "ftpguard-test-pw"}
	etc := filepath.Join(root, "etc/crowdsec")
	cfg := fmt.Sprintf(`common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: %[1]s
config_paths:
  config_dir: %[1]s/cfg/
  data_dir: %[1]s/data/
  simulation_path: %[2]s/simulation.yaml
  hub_dir: %[1]s/hub/
  index_path: %[1]s/hub/.index.json
  notification_dir: %[1]s/cfg/notifications/
  plugin_dir: %[1]s/plugins/
crowdsec_service:
  acquisition_path: %[2]s/acquis.yaml
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  use_wal: false
  db_path: %[1]s/data/crowdsec.db
  flush:
    max_items: 5000
    max_age: 7d
api:
  client:
    credentials_path: %[1]s/creds.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:%[3]d
    profiles_path: %[2]s/profiles.yaml
    console_path: %[1]s/cfg/console.yaml
    trusted_ips:
      - 127.0.0.1
      - "::1"
prometheus:
  enabled: false
`, dir, etc, port)
	if err := os.WriteFile(l.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	l.cscli(t, "machines", "add", "ftpguard", "--password", l.pw, "-f", filepath.Join(dir, "creds.yaml"), "--url", strings.TrimSuffix(l.url, "/"))
	l.key = strings.TrimSpace(l.cscli(t, "bouncers", "add", "ftpguard-gate", "-o", "raw"))
	if l.key == "" {
		t.Fatal("cscli bouncers add printed no key")
	}

	l.start(t)
	t.Cleanup(func() {
		l.stop(t)
		if t.Failed() {
			t.Logf("LAPI output:\n%s", l.out.String())
		}
	})
	return l
}

// start runs the LAPI and waits until it answers.
func (l *lapi) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(filepath.Join(l.root, "usr/bin/crowdsec"), "-c", l.config, "-no-cs")
	cmd.Dir = filepath.Dir(l.config)
	cmd.Stdout, cmd.Stderr = &l.out, &l.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	l.cmd, l.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(l.url + "v1/decisions") // any HTTP answer (403 here) means it serves
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case err := <-done:
			l.cmd = nil
			t.Fatalf("LAPI exited: %v\n%s", err, l.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("LAPI did not answer within 30s: %v\n%s", err, l.out.String())
		}
	}
}

// stop ends the LAPI if it runs: SIGTERM, then SIGKILL after 10s.
func (l *lapi) stop(t *testing.T) {
	if l.cmd == nil {
		return
	}
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Log("LAPI ignored SIGTERM for 10s; killing it")
		_ = l.cmd.Process.Kill()
		<-l.done
	}
	l.cmd = nil
}

// cscli runs cscli on the LAPI's config and returns its standard output.
func (l *lapi) cscli(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(l.root, "usr/bin/cscli"), append([]string{"-c", l.config}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cscli %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// waitFor polls cond every 5ms until it holds or timeout passes, and
// returns how long it took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func TestLAPI(t *testing.T) {
	l := startLAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	const interval = time.Second
	b := NewBouncer(&Client{URL: l.url, APIKey: l.key}, BouncerConfig{Interval: interval})
	wg.Add(1)
	go func() { defer wg.Done(); b.Run(ctx) }()
	waitFor(t, 10*time.Second, "first poll", func() bool { return b.Stats().PollsOK > 0 })

	lookup := func(s string) (Decision, bool) {
		return b.Lookup(netip.MustParseAddr(s), time.Now())
	}
	bound := interval + 2*time.Second // one interval, and slack for a loaded machine

	t.Run("bouncer", func(t *testing.T) {
		l.cscli(t, "decisions", "add", "--ip", "127.0.0.77", "--duration", "10m")
		lat := waitFor(t, bound, "ip ban seen", func() bool { _, ok := lookup("127.0.0.77"); return ok })
		t.Logf("cscli decisions add --ip 127.0.0.77 → Lookup reports it after %v (poll interval %v)", lat.Round(time.Millisecond), interval)
		d, _ := lookup("::ffff:127.0.0.77")
		if want := netip.MustParsePrefix("127.0.0.77/32"); d.Prefix != want || d.Origin != "cscli" || d.Scope != "Ip" {
			t.Errorf("IPv4-mapped lookup = %+v, want %v from cscli", d, want)
		}
		if left := time.Until(d.Until); left < 9*time.Minute || left > 10*time.Minute {
			t.Errorf("ban has %v left, want ≈ 10m", left)
		}

		l.cscli(t, "decisions", "add", "--range", "10.9.0.0/16", "--duration", "10m")
		l.cscli(t, "decisions", "add", "--ip", "2001:db8::7", "--duration", "10m")
		lat = waitFor(t, bound, "range and IPv6 bans seen", func() bool {
			_, ok1 := lookup("10.9.200.3")
			_, ok2 := lookup("2001:db8::7")
			return ok1 && ok2
		})
		t.Logf("range 10.9.0.0/16 and 2001:db8::7 seen after %v", lat.Round(time.Millisecond))
		if d, _ := lookup("10.9.200.3"); d.Prefix != netip.MustParsePrefix("10.9.0.0/16") || d.Scope != "Range" {
			t.Errorf("range lookup = %+v", d)
		}
		for _, a := range []string{"10.10.0.1", "2001:db8::8", "127.0.0.78"} {
			if d, ok := lookup(a); ok {
				t.Errorf("Lookup(%s) = %+v, want no ban", a, d)
			}
		}
		if n := len(b.List(time.Now())); n != 3 {
			t.Errorf("List has %d bans, want 3: %+v", n, b.List(time.Now()))
		}

		l.cscli(t, "decisions", "delete", "--ip", "127.0.0.77")
		lat = waitFor(t, bound, "ban lifted", func() bool { _, ok := lookup("127.0.0.77"); return !ok })
		t.Logf("cscli decisions delete --ip 127.0.0.77 → lifted after %v", lat.Round(time.Millisecond))
		if _, ok := lookup("10.9.0.1"); !ok {
			t.Error("deleting 127.0.0.77 lifted the range too")
		}
	})

	t.Run("watcher", func(t *testing.T) {
		c := &Client{URL: l.url, MachineID: "ftpguard", Password: l.pw}
		w := NewWatcher(c, WatcherConfig{})
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()

		type listed struct {
			Decisions []struct {
				Duration, Origin, Scenario, Scope, Type, Value string
			}
			Message string
		}
		find := func(value string) (d struct{ Duration, Scope, Scenario, Message string }, ok bool) {
			var alerts []listed
			if err := json.Unmarshal([]byte(l.cscli(t, "decisions", "list", "-o", "json")), &alerts); err != nil {
				t.Fatalf("decisions list -o json: %v", err)
			}
			for _, a := range alerts {
				for _, x := range a.Decisions {
					if x.Value == value && x.Type == "ban" {
						return struct{ Duration, Scope, Scenario, Message string }{x.Duration, x.Scope, x.Scenario, a.Message}, true
					}
				}
			}
			return d, false
		}

		start := time.Now()
		w.Push(Ban{Key: netip.MustParsePrefix("127.0.0.66/32"), Until: start.Add(2 * time.Hour), Count: 3, Reason: "budget"})
		w.Push(Ban{Key: netip.MustParsePrefix("10.66.0.0/16"), Until: start.Add(time.Hour), Count: 1, Reason: "budget"})
		lat := waitFor(t, 10*time.Second, "alert pushed", func() bool { return w.Stats().Pushed == 2 })
		t.Logf("Watcher.Push(127.0.0.66 for 2h, count 3) → LAPI accepted the alert after %v (logins %d)", lat.Round(time.Millisecond), c.Logins())
		d, ok := find("127.0.0.66")
		t.Logf("ban → visible in cscli decisions list after %v", time.Since(start).Round(time.Millisecond))
		if !ok {
			t.Fatal("127.0.0.66 not in cscli decisions list")
		}
		dur, err := ParseDuration(d.Duration)
		if err != nil || dur < 2*time.Hour-time.Minute || dur > 2*time.Hour {
			t.Errorf("duration %q, want ≈ 2h", d.Duration)
		}
		if d.Scope != "Ip" || d.Scenario != Scenario || !strings.Contains(d.Message, "offence 3") {
			t.Errorf("listed %+v", d)
		}
		t.Logf("listed: duration %s, scope %s, scenario %s, message %q", d.Duration, d.Scope, d.Scenario, d.Message)
		if d, ok := find("10.66.0.0/16"); !ok || d.Scope != "Range" {
			t.Errorf("range ban listed %v as %+v", ok, d)
		}
		// ftpguard's own bouncer learns the pushed bans too (origin crowdsec).
		lat = waitFor(t, bound, "pushed ban seen by the bouncer", func() bool { _, ok := lookup("10.66.1.1"); return ok })
		t.Logf("pushed range seen by the Bouncer after a further %v", lat.Round(time.Millisecond))
		if s := w.Stats(); s.PushFailed != 0 || s.Dropped != 0 {
			t.Errorf("watcher stats %+v", s)
		}
	})

	if s := b.Stats(); s.PollsFailed != 0 || s.LastError != nil {
		t.Errorf("bouncer stats %+v", s)
	}

	t.Run("outage", func(t *testing.T) {
		l.stop(t)
		failed := b.Stats().PollsFailed
		waitFor(t, bound, "a failed poll", func() bool { return b.Stats().PollsFailed > failed })
		t.Logf("LAPI down: poll failed with %v", b.Stats().LastError)
		if _, ok := lookup("10.9.1.1"); !ok {
			t.Error("the range was forgotten while the LAPI is down")
		}
		l.start(t)
		ok := b.Stats().PollsOK
		lat := waitFor(t, bound+time.Second, "a poll after restart", func() bool { return b.Stats().PollsOK > ok })
		t.Logf("LAPI back: a poll succeeded %v after it answered", lat.Round(time.Millisecond))
		l.cscli(t, "decisions", "add", "--ip", "127.0.0.88", "--duration", "10m")
		waitFor(t, bound, "a ban after the outage", func() bool { _, ok := lookup("127.0.0.88"); return ok })
		if _, ok := lookup("10.9.1.1"); !ok {
			t.Error("the range is gone after the outage")
		}
	})
}
