//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// TestDaemons runs each daemon of daemonNames behind ftpguard: login
// success and failure seen, LIST/RETR/STOR byte for byte in passive (EPSV,
// PASV) and active (PORT, EPRT) mode with curl and lftp, FTPS terminated by
// ftpguard in front of the plain daemon, and guessing banned with no more
// failures reaching the daemon than the budget. The daemons run in
// parallel, each with its own ftpguard and client addresses 127.0.(10+i).x.
func TestDaemons(t *testing.T) {
	for i, name := range daemonNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testDaemon(t, name, fmt.Sprintf("127.0.%d.", 10+i))
		})
	}
}

func testDaemon(t *testing.T, name, prefix string) {
	const budget = 3
	ip := func(n int) string { return prefix + fmt.Sprint(n) }
	d := startDaemon(t, name)
	g := startGuard(t, d.Addr, guardOpts{Failures: budget, Extra: testCert(t, "explicit")})
	file := fmt.Sprintf("compat-%s-%d.bin", name, time.Now().UnixNano())
	path, want := randomFile(t, testHome, file, 2<<20)
	t.Cleanup(func() { os.Remove(path) })
	url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)

	t.Run("login ok", func(t *testing.T) {
		r := dialRaw(t, ip(2), g.Addr)
		r.expect(220)
		r.send("USER " + testUser)
		r.expect(331)
		r.send("PASS " + testPass)
		r.expect(230)
		waitFor(t, "login ok", func() bool { return g.Count(t, "login ok") == 1 })
	})
	t.Run("login failed", func(t *testing.T) {
		r := dialRaw(t, ip(3), g.Addr)
		r.expect(220)
		r.send("USER " + testUser)
		r.expect(331)
		r.send("PASS wrong-1")
		r.expect(530)
		waitFor(t, "login failed", func() bool { return g.Count(t, "login failed", "peer", ip(3)) == 1 })
		if n := d.FailedLogins(t); n != 1 {
			t.Fatalf("%s saw %d failed logins; want 1", name, n)
		}
	})

	t.Run("FEAT", func(t *testing.T) {
		// AUTH TLS, PBSZ and PROT are ftpguard's to offer, once each,
		// whatever the daemon lists (pure-ftpd lists them too).
		r := dialRaw(t, ip(2), g.Addr)
		r.expect(220)
		r.send("FEAT")
		text := r.expect(211)
		for _, f := range []string{"AUTH TLS", "PBSZ", "PROT"} {
			if n := strings.Count(text, " "+f); n != 1 {
				t.Fatalf("FEAT lists %s %d times:\n%s", f, n, text)
			}
		}
	})
	for _, m := range []struct {
		name string
		opts []string
	}{
		{"EPSV", nil},
		{"PASV", []string{"--disable-epsv"}},
		{"active PORT", []string{"--ftp-port", ip(4), "--disable-eprt"}},
		{"active EPRT", []string{"--ftp-port", ip(4)}},
		{"FTPS EPSV", []string{"--ssl-reqd", "-k"}},
		{"FTPS PASV", []string{"--ssl-reqd", "-k", "--disable-epsv"}},
	} {
		t.Run("curl "+m.name, func(t *testing.T) {
			opts := append([]string{"--interface", ip(4)}, m.opts...)
			curlList(t, url, file, opts...)
			checkCurlTransfers(t, url, file, want, opts...)
		})
	}
	for _, m := range []struct{ name, set string }{
		{"passive", "set ftp:passive-mode on; set ftp:ssl-allow no"},
		{"active", "set ftp:passive-mode off; set ftp:ssl-allow no"},
		// curl 7.88 cannot do active mode with TLS (see TestActiveMode).
		{"FTPS active", "set ftp:passive-mode off; set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no"},
	} {
		t.Run("lftp "+m.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			up := fmt.Sprintf("lftp-up-%d-%s", time.Now().UnixNano(), file)
			t.Cleanup(func() { os.Remove(filepath.Join(testHome, up)) })
			listing := filepath.Join(dir, "ls")
			lftp(t, ip(5), g.Addr, m.set+"; set cache:enable no; ls > "+listing+"; get "+file+" -o "+out+"; put "+path+" -o "+up)
			if b, _ := os.ReadFile(listing); !strings.Contains(string(b), file) {
				t.Fatalf("lftp ls lacks %s:\n%s", file, b)
			}
			checkFile(t, "lftp get", out, want)
			checkFile(t, "lftp put", filepath.Join(testHome, up), want)
		})
	}

	t.Run("ABOR mid-transfer", func(t *testing.T) {
		big, _ := randomFile(t, testHome, "abor-"+file, 32<<20)
		t.Cleanup(func() { os.Remove(big) })
		r := dialRaw(t, ip(8), g.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS "+testPass, "TYPE I", "EPSV")
		r.expect(331)
		r.expect(230)
		r.expect(200)
		dc, err := dialer(ip(8)).Dial("tcp", fmt.Sprintf("127.0.0.1:%d", epsvPort(t, r.expect(229))))
		if err != nil {
			t.Fatal(err)
		}
		defer dc.Close()
		r.send("RETR " + filepath.Base(big))
		r.expect(150)
		if _, err := io.ReadFull(dc, make([]byte, 64<<10)); err != nil {
			t.Fatalf("data: %v", err)
		}
		// Telnet IP and Synch (IAC DM) before ABOR, as RFC 959 asks.
		r.c.Write([]byte("\xff\xf4\xff\xf2ABOR\r\n"))
		var codes []int
		for {
			code, text := r.reply()
			codes = append(codes, code)
			if code == 0 || code == 421 {
				t.Fatalf("after ABOR: replies %v, last %q", codes, text)
			}
			if code == 225 || code == 226 {
				break
			}
		}
		// Later replies still answer their own commands: the 229 is the
		// proxy's (pure-ftpd sends no reply for the aborted RETR; see
		// proxy/quirks.go), and a LIST goes through it.
		r.send("NOOP")
		r.expect(200)
		r.send("EPSV")
		port := epsvPort(t, r.expect(229))
		if lo, hi := g.passiveRange(t); port < lo || port > hi {
			t.Fatalf("229 after ABOR names port %d, not one of ftpguard's %d-%d", port, lo, hi)
		}
		lc, err := dialer(ip(8)).Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer lc.Close()
		r.send("LIST")
		r.expect(150)
		if b, _ := io.ReadAll(lc); !strings.Contains(string(b), file) {
			t.Fatalf("LIST after ABOR lacks %s:\n%s", file, b)
		}
		// proftpd sends 226 only once the client has closed the data
		// connection (else after TimeoutLinger, 10 s), as clients do.
		lc.Close()
		r.expect(226)
		t.Logf("replies after ABOR: %v", codes)
	})
	t.Run("pipelined guesses", func(t *testing.T) {
		before := d.FailedLogins(t)
		r := dialRaw(t, ip(9), g.Addr)
		// pure-ftpd holds each failed login for several seconds, and a PASS
		// goes to the daemon only once the one before it is answered.
		r.c.SetDeadline(time.Now().Add(90 * time.Second))
		r.expect(220)
		var lines []string
		for i := 0; i < 10; i++ {
			lines = append(lines, "USER "+testUser, fmt.Sprintf("PASS pipelined-%d", i))
		}
		r.send(lines...)
		codes := r.codes()
		if len(codes) == 0 || codes[len(codes)-1] != 421 {
			t.Fatalf("replies %v; want the last to be 421", codes)
		}
		waitFor(t, "a ban", func() bool { return g.Count(t, "ban", "key", ip(9)+"/32") == 1 })
		if n := d.FailedLogins(t) - before; n > budget {
			t.Fatalf("%s saw %d failed logins; want ≤ %d", name, n, budget)
		}
		t.Logf("replies %v; %s saw %d failed logins", codes, name, d.FailedLogins(t)-before)
	})
	t.Run("guessing banned", func(t *testing.T) {
		before := d.FailedLogins(t)
		bruteForce(t, g.Addr, ip(6), budget+1, 3)
		waitFor(t, "a ban", func() bool { return g.Count(t, "ban", "key", ip(6)+"/32") == 1 })
		reached := d.FailedLogins(t) - before
		if reached < 1 || reached > budget {
			t.Fatalf("%s saw %d failed logins from the guesser; want 1..%d (the budget)", name, reached, budget)
		}
		if n := g.Count(t, "login failed", "peer", ip(6)); n != budget {
			t.Errorf("ftpguard counted %d failures of %s; want %d", n, ip(6), budget)
		}
		r := dialRaw(t, ip(6), g.Addr)
		if code, text := r.reply(); code != 421 {
			t.Fatalf("banned peer's greeting: %d %q; want 421", code, text)
		}
		r = dialRaw(t, ip(7), g.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
		r.expect(230)
		t.Logf("%s saw %d failed logins from the guesser (budget %d)", name, reached, budget)
	})
}

// bruteForce guesses passwords from src through addr on conns connections
// at once, each guessing up to perConn times (reconnecting when the daemon
// hangs up), until ftpguard refuses the address. Bounded: at most 4×conns
// connections.
func bruteForce(t *testing.T, addr, src string, conns, perConn int) {
	t.Helper()
	var wg sync.WaitGroup
	var refused sync.Once
	stop := make(chan struct{})
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 4; round++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := dialer(src).Dial("tcp", addr)
				if err != nil {
					return
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				rd := newReplies(c)
				if code := rd.next(); code != 220 {
					c.Close()
					refused.Do(func() { close(stop) })
					return
				}
				for j := 0; j < perConn; j++ {
					fmt.Fprintf(c, "USER %s\r\nPASS guess-%d-%d-%d\r\n", testUser, i, round, j)
					code := rd.next()
					if code == 331 {
						code = rd.next()
					}
					if code == 421 {
						c.Close()
						refused.Do(func() { close(stop) })
						return
					}
					if code != 530 {
						break // the daemon hung up: reconnect
					}
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	select {
	case <-stop:
	default:
		t.Fatalf("%s was never refused", src)
	}
}

// curlList lists url with curl and fails unless the listing names file.
func curlList(t *testing.T, url, file string, opts ...string) {
	t.Helper()
	args := append([]string{"-sS", "--max-time", "60"}, opts...)
	out, err := exec.Command("curl", append(args, url)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), file) {
		t.Fatalf("curl LIST %s: %v; listing lacks %s:\n%s", strings.Join(opts, " "), err, file, out)
	}
}

func checkFile(t *testing.T, what, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != string(want) {
		t.Fatalf("%s: %d bytes (err %v); want %d identical bytes", what, len(got), err, len(want))
	}
}

// replies reads whole replies from a control connection.
type replies struct{ r *ftpproto.ReplyReader }

func newReplies(c net.Conn) replies {
	return replies{ftpproto.NewReplyReader(bufio.NewReader(c), 4096, 1<<20)}
}

// next returns the next reply's code, 0 when the connection ended.
func (r replies) next() int {
	rep, err := r.r.ReadReply()
	if err != nil {
		return 0
	}
	return rep.Code
}

// epsvPort returns the port of a 229 reply's text.
func epsvPort(t *testing.T, text string) int {
	t.Helper()
	i := strings.Index(text, "(|||")
	var port int
	if i < 0 {
		t.Fatalf("229 text %q", text)
	}
	fmt.Sscanf(text[i+4:], "%d", &port)
	return port
}

// TestProftpdFull: proftpd at its MaxClients answers a correct password
// with "530 Sorry, the maximum number of allowed clients (1) are already
// connected." ftpguard does not count that (proxy/quirks.go): the owner,
// retrying more often than the budget while the daemon is full, is never
// banned, and logs in once a place is free. Wrong passwords still count.
func TestProftpdFull(t *testing.T) {
	const budget = 2
	d := startProftpd(t, "MaxClients 1")
	g := startGuard(t, d.Addr, guardOpts{Failures: budget})
	holder := dialRaw(t, "127.0.0.50", g.Addr)
	holder.expect(220)
	holder.send("USER "+testUser, "PASS "+testPass)
	holder.expect(331)
	holder.expect(230)
	for i := 0; i < budget+2; i++ {
		r := dialRaw(t, "127.0.0.51", g.Addr)
		if code, text := r.reply(); code != 220 {
			t.Fatalf("try %d: greeting %d %q; want 220 (not banned)", i, code, text)
		}
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
		if text := r.expect(530); !strings.Contains(text, "maximum number") {
			t.Fatalf("530 %q; want proftpd's MaxClients refusal", text)
		}
		r.c.Close()
	}
	if n := g.Count(t, "login failed", "peer", "127.0.0.51"); n != 0 {
		t.Fatalf("%d refusals of a full daemon counted as failures", n)
	}
	if n := g.Count(t, "login refused by the daemon after the password"); n != budget+2 {
		t.Fatalf("%d refusals logged; want %d", n, budget+2)
	}
	holder.send("QUIT")
	holder.expect(221)
	r := dialRaw(t, "127.0.0.51", g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS "+testPass)
	r.expect(331)
	deadline := time.Now().Add(5 * time.Second)
	for code, _ := r.reply(); code != 230; code, _ = r.reply() {
		// proftpd frees the holder's place when its process has exited.
		if code != 530 || time.Now().After(deadline) {
			t.Fatalf("owner's login after the holder left: %d", code)
		}
		r.c.Close()
		time.Sleep(100 * time.Millisecond)
		r = dialRaw(t, "127.0.0.51", g.Addr)
		r.expect(220)
		r.send("USER "+testUser, "PASS "+testPass)
		r.expect(331)
	}
	// A wrong password is still a failure.
	r = dialRaw(t, "127.0.0.52", g.Addr)
	r.expect(220)
	r.send("USER "+testUser, "PASS wrong")
	r.expect(331)
	r.expect(530)
	waitFor(t, "the failure counted", func() bool { return g.Count(t, "login failed", "peer", "127.0.0.52") == 1 })
}

// passiveRange returns ftpguard's passive port range from its config.
func (g *guard) passiveRange(t *testing.T) (lo, hi int) {
	t.Helper()
	b, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if _, err := fmt.Sscanf(line, "ports = \"%d-%d\"", &lo, &hi); err == nil {
			return lo, hi
		}
	}
	t.Fatalf("no passive ports in %s", g.Config)
	return
}
