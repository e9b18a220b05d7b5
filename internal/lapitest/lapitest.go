// Package lapitest runs a real CrowdSec Local API for tests: Debian's
// crowdsec, unpacked by .ci/crowdsec.sh into /opt/ftpguard-test-crowdsec
// ($FTPGUARD_CROWDSEC overrides), as a Local API only (-no-cs), on a free
// loopback port, with its database in a temp dir and no Central API: no
// traffic leaves 127.0.0.1. Used by the crowdsec package's and the
// integration suite's tests.
package lapitest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// LAPI is a running CrowdSec LAPI, started by Start.
type LAPI struct {
	Root     string // the unpacked .deb
	Config   string // its config file
	URL      string // its base URL, "http://127.0.0.1:PORT/"
	Key      string // a bouncer key
	Password string // machine "ftpguard"'s password

	out  syncBuffer // its output, over restarts (Output)
	cmd  *exec.Cmd  // nil when stopped
	done chan error // cmd's Wait
}

// Root returns where CrowdSec is unpacked: $FTPGUARD_CROWDSEC, or
// /opt/ftpguard-test-crowdsec (.ci/crowdsec.sh). Without it the test is
// skipped, or fails when $CI is set.
func Root(t testing.TB) string {
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

func freePort(t testing.TB) int {
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

// Start writes a config, registers a machine ("ftpguard", Password) and a
// bouncer (Key), starts the LAPI (-no-cs: no agent, no Central API, nothing
// leaves 127.0.0.1) on a free loopback port and waits until it answers.
// Cleanup stops it.
func Start(t testing.TB) *LAPI {
	root := Root(t)
	dir := t.TempDir()
	for _, d := range []string{"data", "hub", "cfg", "plugins"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	l := &LAPI{Root: root, Config: filepath.Join(dir, "config.yaml"),
		URL: fmt.Sprintf("http://127.0.0.1:%d/", port), Password: "ftpguard-test-pw"}
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
	if err := os.WriteFile(l.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	l.Cscli(t, "machines", "add", "ftpguard", "--password", l.Password, "-f", filepath.Join(dir, "creds.yaml"), "--url", strings.TrimSuffix(l.URL, "/"))
	l.Key = strings.TrimSpace(l.Cscli(t, "bouncers", "add", "ftpguard-gate", "-o", "raw"))
	if l.Key == "" {
		t.Fatal("cscli bouncers add printed no key")
	}

	l.Start(t)
	t.Cleanup(func() {
		l.Stop(t)
		if t.Failed() {
			t.Logf("LAPI output:\n%s", l.out.String())
		}
	})
	return l
}

// Start runs the LAPI (again) and waits until it answers.
func (l *LAPI) Start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(filepath.Join(l.Root, "usr/bin/crowdsec"), "-c", l.Config, "-no-cs")
	cmd.Dir = filepath.Dir(l.Config)
	cmd.Stdout, cmd.Stderr = &l.out, &l.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	l.cmd, l.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(l.URL + "v1/decisions") // any HTTP answer (403 here) means it serves
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

// Stop ends the LAPI if it runs: SIGTERM, then SIGKILL after 10s.
func (l *LAPI) Stop(t testing.TB) {
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

// Cscli runs cscli on the LAPI's config and returns its standard output;
// a failure fails t.
func (l *LAPI) Cscli(t testing.TB, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(l.Root, "usr/bin/cscli"), append([]string{"-c", l.Config}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cscli %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// Output returns what the LAPI has printed so far, over restarts.
func (l *LAPI) Output() string { return l.out.String() }
