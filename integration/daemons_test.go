//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The FTP daemons the compatibility tests run behind ftpguard. vsftpd is
// apt-installed; proftpd and pure-ftpd cannot be installed beside it (each
// "Conflicts: ftp-server"), so .ci/run unpacks their .debs into
// daemonsDir() and installs only their libraries.
var daemonNames = []string{"vsftpd", "proftpd", "pure-ftpd"}

// daemonsDir is where .ci/run unpacks proftpd and pure-ftpd
// ($FTPGUARD_DAEMONS, default /opt/ftpguard-test-daemons).
func daemonsDir() string {
	if d := os.Getenv("FTPGUARD_DAEMONS"); d != "" {
		return d
	}
	return "/opt/ftpguard-test-daemons"
}

// daemonBin returns the path of an unpacked daemon's binary, failing the
// test (never skipping it) when it is missing.
func daemonBin(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(daemonsDir(), rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing (run .ci/run, which unpacks proftpd and pure-ftpd into %s; FTPGUARD_DAEMONS overrides the folder): %v",
			p, daemonsDir(), err)
	}
	return p
}

// startDaemon starts the named daemon on a free loopback port, stopped when
// the test ends.
func startDaemon(t testing.TB, name string) *ftpd {
	t.Helper()
	switch name {
	case "vsftpd":
		return startVsftpd(t)
	case "proftpd":
		return startProftpd(t)
	case "pure-ftpd":
		return startPureftpd(t)
	}
	t.Fatalf("unknown daemon %q", name)
	return nil
}

// startProftpd runs proftpd in the foreground (-n) from
// testdata/proftpd.conf with the extra directives in place of the file's
// of the same name (proftpd keeps the first of two). In that mode it logs to stderr: that file is the
// daemon's log, whose "(Login failed)" lines count the failures that
// reached it.
func startProftpd(t testing.TB, extra ...string) *ftpd {
	t.Helper()
	setupHost(t)
	bin := daemonBin(t, "usr/sbin/proftpd")
	base, err := os.ReadFile("testdata/proftpd.conf")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(base), "\n") {
		keep := true
		for _, e := range extra {
			if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], strings.Fields(e)[0]) {
				keep = false
			}
		}
		if keep {
			lines = append(lines, line)
		}
	}
	dir := t.TempDir()
	port := freePort(t)
	pasv := 40000 + (port%100)*100
	conf := filepath.Join(dir, "proftpd.conf")
	text := strings.Join(lines, "\n") + fmt.Sprintf("Port %d\nPassivePorts %d %d\nPidFile %s\nScoreboardFile %s\nTransferLog %s\n",
		port, pasv, pasv+99, filepath.Join(dir, "proftpd.pid"), filepath.Join(dir, "scoreboard"), filepath.Join(dir, "xferlog")) +
		strings.Join(extra, "\n") + "\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &ftpd{Name: "proftpd", Addr: fmt.Sprintf("127.0.0.1:%d", port), LogPath: filepath.Join(dir, "proftpd.log"),
		failMark: "(Login failed)"}
	runDaemon(t, d, exec.Command(bin, "-n", "-c", conf))
	return d
}

// startPureftpd runs pure-ftpd in the foreground with the options of
// testdata/pure-ftpd.args. pure-ftpd logs only to syslog (none runs here),
// so it is reached through a relay that counts the PASS lines forwarded to
// it: Addr is the relay's, and FailedLogins counts wrong passwords that
// reached the daemon.
func startPureftpd(t testing.TB) *ftpd {
	t.Helper()
	setupHost(t)
	bin := daemonBin(t, "usr/sbin/pure-ftpd")
	b, err := os.ReadFile("testdata/pure-ftpd.args")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			args = append(args, strings.Fields(line)...)
		}
	}
	dir := t.TempDir()
	port := freePort(t)
	pasv := 40000 + (port%100)*100
	args = append(args, "--bind", fmt.Sprintf("127.0.0.1,%d", port),
		"--passiveportrange", fmt.Sprintf("%d:%d", pasv, pasv+99),
		"--pidfile", filepath.Join(dir, "pure-ftpd.pid"))
	direct := &ftpd{Name: "pure-ftpd", Addr: fmt.Sprintf("127.0.0.1:%d", port), LogPath: filepath.Join(dir, "pure-ftpd.log")}
	runDaemon(t, direct, exec.Command(bin, args...))
	rl := startPassRelay(t, direct.Addr)
	return &ftpd{Name: "pure-ftpd", Addr: rl.Addr, LogPath: direct.LogPath, relay: rl}
}

// runDaemon starts cmd in a process group of its own with stdin from
// /dev/null and its output in d.LogPath, kills the group when the test
// ends, and waits until d.Addr accepts connections.
func runDaemon(t testing.TB, d *ftpd, cmd *exec.Cmd) {
	t.Helper()
	logf, err := os.Create(d.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", d.Name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(d.LogPath)
			t.Logf("%s log:\n%s", d.Name, tail(b, 40))
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err // for the cleanup, which waits on it
			b, _ := os.ReadFile(d.LogPath)
			t.Fatalf("%s exited at start-up (%v): %s", d.Name, err, b)
		default:
		}
		if c, err := net.DialTimeout("tcp", d.Addr, time.Second); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 10s", d.Name, d.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// passRelay is a TCP relay in front of a daemon that counts the PASS
// commands passing through it: the attempts that really reached the
// daemon, for a daemon without a log of its own. It dials the daemon from
// 127.0.0.1, so the daemon's checks of data-connection addresses see the
// same IP as ftpguard's.
type passRelay struct {
	Addr        string
	wrong, good atomic.Int64
}

func startPassRelay(t testing.TB, target string) *passRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &passRelay{Addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn) {
		mu.Lock()
		conns[c] = true
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := dialer("127.0.0.1").Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(d)
			wg.Add(2)
			go func() { defer wg.Done(); r.commands(c, d) }()
			go func() {
				defer wg.Done()
				io.Copy(c, d)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return r
}

// commands copies the command lines from src to dst, counting PASS lines.
func (r *passRelay) commands(src, dst net.Conn) {
	br := bufio.NewReader(src)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if verb, arg, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " "); strings.EqualFold(verb, "PASS") {
				if arg == testPass {
					r.good.Add(1)
				} else {
					r.wrong.Add(1)
				}
			}
			if _, werr := dst.Write(line); werr != nil {
				return
			}
		}
		if err != nil {
			dst.(*net.TCPConn).CloseWrite()
			return
		}
	}
}

// failedLogins counts the failed logins that reached d: the daemon's own
// log lines, or the relay's count of wrong passwords.
func (d *ftpd) failedLogins(t testing.TB) int {
	t.Helper()
	if d.relay != nil {
		return int(d.relay.wrong.Load())
	}
	b, err := os.ReadFile(d.LogPath)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	mark := d.failMark
	if mark == "" {
		mark = "FAIL LOGIN"
	}
	return bytes.Count(b, []byte(mark))
}
