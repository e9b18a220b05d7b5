//go:build integration

// Package integration runs ftpguard as a real process in front of a real
// vsftpd on loopback, both started and stopped by the tests, and drives them
// with real clients (github.com/jlaffaye/ftp, curl, raw sockets). Distinct
// client addresses come from binding 127.0.0.X; no traffic leaves the host.
//
// The tests need root (they create a local test user and a PAM service) and
// vsftpd and curl on PATH: a missing daemon fails the suite, never skips it.
package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"

	"github.com/ftpguard/ftpguard/ftpproto"
)

const (
	testUser = "fgtest"
	testPass = "Correct-Horse-9"
	testHome = "/home/fgtest"
	pamName  = "ftpguard-test"
)

// guardBin is the ftpguard binary built once by TestMain.
var guardBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ftpguard-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	guardBin = filepath.Join(dir, "ftpguard")
	args := []string{"build", "-o", guardBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/ftpguard")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ftpguard:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var setupOnce sync.Once
var setupErr error

// setupHost creates the test user, its PAM service and vsftpd's empty dir.
func setupHost(t testing.TB) {
	t.Helper()
	setupOnce.Do(func() { setupErr = doSetupHost() })
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

func doSetupHost() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("integration tests need root (test user, PAM service, vsftpd)")
	}
	for _, bin := range []string{"vsftpd", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed (run .ci/run, or apt-get install -y vsftpd curl): %w", bin, err)
		}
	}
	if exec.Command("id", testUser).Run() != nil {
		if out, err := exec.Command("useradd", "-m", "-d", testHome, "-s", "/bin/sh", testUser).CombinedOutput(); err != nil {
			return fmt.Errorf("useradd: %v: %s", err, out)
		}
	}
	chpw := exec.Command("chpasswd", "-c", "SHA512")
	chpw.Stdin = strings.NewReader(testUser + ":" + testPass + "\n")
	if out, err := chpw.CombinedOutput(); err != nil {
		return fmt.Errorf("chpasswd: %v: %s", err, out)
	}
	pam, err := os.ReadFile("testdata/pam-ftpguard-test")
	if err != nil {
		return err
	}
	if err := os.WriteFile("/etc/pam.d/"+pamName, pam, 0o644); err != nil {
		return err
	}
	return os.MkdirAll("/var/run/vsftpd/empty", 0o755)
}

// ftpd is an FTP daemon run by a test (startVsftpd here; startProftpd
// and startPureftpd in daemons_test.go).
type ftpd struct {
	Name     string
	Addr     string // what ftpguard dials
	LogPath  string
	failMark string     // the daemon's log line of a failed login; "" = vsftpd's
	relay    *passRelay // counts the PASS lines reaching a daemon without a log
	pasv     [2]int     // vsftpd's passive port range
	pid      int        // vsftpd's listening process (its sessions are its children)
}

// startVsftpd runs vsftpd in the foreground on a free loopback port with
// its own passive range, and stops it when the test ends. extra lines are
// appended to its config.
func startVsftpd(t testing.TB, extra ...string) *ftpd {
	t.Helper()
	setupHost(t)
	base, err := os.ReadFile("testdata/vsftpd.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	pasv := 20000 + (port%200)*50
	logPath := filepath.Join(dir, "vsftpd.log")
	conf := filepath.Join(dir, "vsftpd.conf")
	text := string(base) + fmt.Sprintf("listen_port=%d\npasv_min_port=%d\npasv_max_port=%d\nvsftpd_log_file=%s\npam_service_name=%s\n",
		port, pasv, pasv+49, logPath, pamName) + strings.Join(append(extra, ""), "\n")
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// vsftpd writes start-up errors to fd 0: give it a file, show it on failure.
	errPath := filepath.Join(dir, "vsftpd.fd0")
	fd0, err := os.OpenFile(errPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer fd0.Close()
	cmd := exec.Command("vsftpd", conf)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = fd0, fd0, fd0
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("vsftpd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if slices.Contains(extra, "listen_ipv6=YES") { // with listen=NO and listen_address6=::1
		addr = fmt.Sprintf("[::1]:%d", port)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err // for the cleanup, which waits on it
			msg, _ := os.ReadFile(errPath)
			t.Fatalf("vsftpd exited at start-up (%v): %s", err, msg)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vsftpd did not listen on %s within 10s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &ftpd{Name: "vsftpd", Addr: addr, LogPath: logPath, failMark: "FAIL LOGIN", pasv: [2]int{pasv, pasv + 49},
		pid: cmd.Process.Pid}
}

// FailedLogins counts the failed logins that really reached the daemon:
// vsftpd's FAIL LOGIN lines, proftpd's "(Login failed)" lines, the wrong
// passwords a relay passed to pure-ftpd.
func (d *ftpd) FailedLogins(t testing.TB) int {
	t.Helper()
	return d.failedLogins(t)
}

// guardOpts are the settings a test gives ftpguard; zero fields keep the
// harness defaults.
type guardOpts struct {
	Failures      int
	Window        string
	BanTime       string
	BanFactor     float64
	MaxConnsPerIP int
	LoginTimeout  string
	LogLevel      string
	SendProxy     string
	Dir           string // config and state directory; "" = a new one
	Extra         string // raw TOML appended at the end (tables allowed)
	// Admin is [admin] listen: "" = off (the harness default, so that
	// parallel tests do not fight over 127.0.0.1:9121); "127.0.0.1:0" =
	// a kernel-chosen port, read from the log into guard.AdminAddr.
	Admin string
	// AdminExtra is raw TOML put inside the [admin] table (token_file, pprof).
	AdminExtra string
	// Mode is the top-level mode ("enforce" when "").
	Mode string
	// Sessions is raw TOML put inside the [sessions] table (max_conns).
	Sessions string
	// Listen is the top-level listen ("" = "127.0.0.1:0", a kernel-chosen
	// port).
	Listen string
	// DialTimeout is [backend] dial_timeout ("2s" when ""); it also
	// bounds the wait for the daemon's greeting.
	DialTimeout string
	// DrainTimeout is [sessions] drain_timeout ("5s" when "").
	DrainTimeout string
	// Passive is raw TOML put inside the [passive] table (data_path).
	Passive string
	// Bin is the ftpguard binary to run ("" = the one TestMain built).
	Bin string
	// LogPipe: ftpguard's standard error is a pipe that this process
	// copies into the log file, as under a container runtime (systemd's
	// journal gives it a socket), instead of the file itself.
	LogPipe bool
}

// guard is an ftpguard process run by a test.
type guard struct {
	Addr         string
	ImplicitAddr string // with [tls] mode = "implicit"
	AdminAddr    string // with guardOpts.Admin
	LogPath      string
	Config       string
	cmd          *exec.Cmd
	exited       chan error
}

// startGuard runs the ftpguard binary in front of backend with a config
// written from opts, on a kernel-chosen loopback port read from its log.
func startGuard(t testing.TB, backend string, o guardOpts) *guard {
	t.Helper()
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	if o.Failures == 0 {
		o.Failures = 5
	}
	if o.BanFactor == 0 {
		o.BanFactor = 2
	}
	if o.MaxConnsPerIP == 0 {
		o.MaxConnsPerIP = 10
	}
	def(&o.Window, "10m")
	def(&o.BanTime, "1h")
	def(&o.LoginTimeout, "30s")
	def(&o.LogLevel, "debug")
	def(&o.SendProxy, "off")
	def(&o.Mode, "enforce")
	def(&o.Listen, "127.0.0.1:0")
	def(&o.DialTimeout, "2s")
	def(&o.DrainTimeout, "5s")
	dir := o.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	pasv := 30000 + (freePort(t)%200)*50
	// The connection rate and the no-auth penalties are off unless a test
	// sets them: many tests open connections from one address in a burst,
	// or hold idle ones, for other purposes (capacity_test.go tests them).
	if !strings.Contains(o.Sessions, "conn_rate") {
		o.Sessions += "\nconn_rate = 0.0\n"
	}
	if !strings.Contains(o.Sessions, "noauth_penalty") {
		o.Sessions += "\nnoauth_penalty = \"0s\"\n"
	}
	conf := fmt.Sprintf(`listen = %q
mode = %q

[admin]
listen = %q
%s

[backend]
address = %q
dial_timeout = %q
send_proxy = %q

[passive]
ports = "%d-%d"
%s

[limits]
failures = %d
window = %q
ban_time = %q
ban_factor = %g
max_ban_time = "168h"
failure_delay = "0s"

[sessions]
max_conns_per_ip = %d
login_timeout = %q
drain_timeout = %q
%s

[log]
level = %q
format = "json"
%s
`, o.Listen, o.Mode, o.Admin, o.AdminExtra, backend, o.DialTimeout, o.SendProxy, pasv, pasv+49, o.Passive, o.Failures, o.Window, o.BanTime, o.BanFactor, o.MaxConnsPerIP, o.LoginTimeout, o.DrainTimeout, o.Sessions, o.LogLevel, o.Extra)
	path := filepath.Join(dir, "ftpguard.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &guard{LogPath: filepath.Join(dir, "ftpguard.log"), Config: path, exited: make(chan error, 1)}
	logf, err := os.Create(g.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := guardBin
	if o.Bin != "" {
		bin = o.Bin
	}
	g.cmd = exec.Command(bin, "run", "-config", path)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if o.LogPipe {
		g.cmd.Stderr = struct{ io.Writer }{logf} // not an *os.File: exec copies it from a pipe
	}
	if err := g.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() { err := g.cmd.Wait(); logf.Close(); g.exited <- err }()
	t.Cleanup(func() {
		g.cmd.Process.Kill()
		<-g.exited
		if t.Failed() {
			b, _ := os.ReadFile(g.LogPath)
			t.Logf("ftpguard log:\n%s", tail(b, 60))
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for g.Addr == "" {
		for _, e := range g.Events(t) {
			if e["msg"] == "listening" {
				if a, ok := e["listen"].(string); ok {
					g.Addr = a
				}
				if a, ok := e["implicit_tls"].(string); ok {
					g.ImplicitAddr = a
				}
			}
			if e["msg"] == "admin listening" {
				g.AdminAddr, _ = e["admin"].(string)
			}
		}
		select {
		case err := <-g.exited:
			g.exited <- err // for the cleanup, which waits on it
			b, _ := os.ReadFile(g.LogPath)
			t.Fatalf("ftpguard exited at start-up (%v):\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("ftpguard did not log \"listening\" within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return g
}

// Events returns ftpguard's JSON log lines so far.
func (g *guard) Events(t testing.TB) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(g.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range bytes.Split(b, []byte("\n")) {
		var e map[string]any
		if json.Unmarshal(line, &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// Count counts log events with msg (and, if given, attribute k = v).
func (g *guard) Count(t testing.TB, msg string, kv ...string) int {
	n := 0
	for _, e := range g.Events(t) {
		if e["msg"] != msg {
			continue
		}
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(e[kv[i]]) != kv[i+1] {
				ok = false
			}
		}
		if ok {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// dialer binds src (a 127.0.0.X address) as the local address.
func dialer(src string) *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
}

// ftpClient logs in through addr from src with the jlaffaye/ftp client.
func ftpClient(t testing.TB, src, addr string, opts ...ftp.DialOption) (*ftp.ServerConn, error) {
	t.Helper()
	opts = append([]ftp.DialOption{ftp.DialWithDialer(*dialer(src)), ftp.DialWithTimeout(10 * time.Second)}, opts...)
	return ftp.Dial(addr, opts...)
}

// raw is a control connection driven by hand, replies read by ftpproto.
type raw struct {
	t testing.TB
	c net.Conn
	r *ftpproto.ReplyReader
}

func dialRaw(t testing.TB, src, addr string) *raw {
	t.Helper()
	c, err := dialer(src).Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &raw{t: t, c: c, r: ftpproto.NewReplyReader(bufio.NewReader(c), 4096, 1<<20)}
}

func (r *raw) send(lines ...string) {
	r.t.Helper()
	if _, err := r.c.Write([]byte(strings.Join(lines, "\r\n") + "\r\n")); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// reply reads one reply; code 0 means the connection ended.
func (r *raw) reply() (int, string) {
	r.t.Helper()
	rep, err := r.r.ReadReply()
	if err != nil {
		return 0, err.Error()
	}
	return rep.Code, rep.Text()
}

// codes reads replies until the connection ends and returns their codes.
func (r *raw) codes() []int {
	r.t.Helper()
	var codes []int
	for {
		code, _ := r.reply()
		if code == 0 {
			return codes
		}
		codes = append(codes, code)
	}
}

func (r *raw) expect(code int) string {
	r.t.Helper()
	got, text := r.reply()
	if got != code {
		r.t.Fatalf("want reply %d, got %d %q", code, got, text)
	}
	return text
}

// randomFile writes n random bytes to a new file in dir and returns its
// path and contents.
func randomFile(t testing.TB, dir, name string, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}
