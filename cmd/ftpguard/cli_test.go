package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/admin"
)

// cli runs a client subcommand and returns its exit code and output.
func cli(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := runMain(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestClientCommands runs the client subcommands against a daemon's admin
// handler: readable output, exit codes 0/1/2, errors that name the problem.
func TestClientCommands(t *testing.T) {
	tok := "cli-token-0123456789abcdef"
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte(tok), 0o600)
	td := newTestDaemon(t, fmt.Sprintf("[admin]\ntoken_file = %q\n", filepath.Join(dir, "token")))
	admin := strings.TrimPrefix(td.url, "http://")
	// A config of the CLI's own names the endpoint and a relative token file.
	cfg := filepath.Join(dir, "ftpguard.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[admin]\nlisten = %q\ntoken_file = \"token\"\n", admin)), 0o600)

	steps := []struct {
		args []string
		code int
		out  string // substring of stdout (or of stderr when code != 0)
	}{
		{[]string{"bans", "list", "-config", cfg}, 0, "no bans in force"},
		{[]string{"bans", "add", "-config", cfg, "203.0.113.50", "2h"}, 0, "banned 203.0.113.50/32 for 2h0m"},
		{[]string{"bans", "-config", cfg, "add", "-reason", "scan", "198.51.100.0/24"}, 0, "banned 198.51.100.0/24 for 1h0m (until"},
		{[]string{"bans", "list", "-config", cfg}, 0, "198.51.100.0/24  ftpguard  scan"},
		{[]string{"bans", "list", "-config", cfg, "-json"}, 0, `"seconds_left": 7200`},
		{[]string{"bans", "add", "-config", cfg, "not-an-ip"}, 2, `ip: "not-an-ip" is not an IP address or CIDR`},
		{[]string{"bans", "add", "-config", cfg, "203.0.113.51", "later"}, 2, `duration: "later" is not a duration`},
		{[]string{"bans", "del", "-config", cfg, "203.0.113.50"}, 0, "unbanned 203.0.113.50/32"},
		{[]string{"bans", "del", "-config", cfg, "203.0.113.50"}, 1, "no ban of 203.0.113.50/32 in force"},
		{[]string{"bans", "-config", cfg}, 2, "want list, add IP [DURATION] or del IP"},
		{[]string{"bans", "drop", "-config", cfg}, 2, `unknown subcommand "drop"`},
		{[]string{"bans", "del", "-config", cfg}, 2, "wrong arguments"},
		{[]string{"status", "-config", cfg}, 0, "health    OK"},
		{[]string{"reload", "-config", cfg}, 0, "reloaded "},
		// the token comes from the config: without it, 401
		{[]string{"bans", "list", "-admin", admin}, 1, "refused the token (401)"},
		{[]string{"bans", "list", "-admin", admin, "-token-file", filepath.Join(dir, "token")}, 0, "198.51.100.0/24"},
		{[]string{"bans", "list", "-config", filepath.Join(dir, "missing.toml")}, 1, "no such file"},
	}
	for _, s := range steps {
		code, out, errs := cli(s.args...)
		text := out
		if s.code != 0 {
			text = errs
		}
		if code != s.code || !strings.Contains(text, s.out) {
			t.Errorf("ftpguard %s = %d\nstdout: %s\nstderr: %s\nwant %d and %q", strings.Join(s.args, " "), code, out, errs, s.code, s.out)
		}
	}

	// No endpoint: the error names the address and the reason.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	code, _, errs := cli("bans", "list", "-admin", dead)
	if want := "ftpguard: no ftpguard admin endpoint at " + dead + ": connection refused\n"; code != 1 || errs != want {
		t.Errorf("dead endpoint: %d %q, want 1 %q", code, errs, want)
	}
	code, _, errs = cli("status", "-admin", "unix:"+filepath.Join(dir, "none.sock"))
	if code != 1 || !strings.Contains(errs, "none.sock: no such file or directory") {
		t.Errorf("missing socket: %d %q", code, errs)
	}

	// Unhealthy: status says so, exit 1.
	td.backend.Close()
	td.awaitHealthCache(t)
	code, out, _ := cli("status", "-config", cfg)
	if code != 1 || !strings.Contains(out, "health    UNHEALTHY") || !strings.Contains(out, "UNREACHABLE") {
		t.Errorf("status with the backend down = %d\n%s", code, out)
	}
}

// TestBansPaging: GET /bans?limit=&after= returns bounded pages with the
// next cursor in X-Next-After, and `ftpguard bans list` pages through them
// all. Before, /bans copied the whole table at once (under the limiter's
// write lock) and took no paging parameters.
func TestBansPaging(t *testing.T) {
	td := newTestDaemon(t, "")
	const n = 2500 // more than one page of the CLI's (1000)
	for i := 0; i < n; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32)
		if _, err := td.lim.BanKey(time.Now(), p, time.Hour, "scan"); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	after, pages := "0", 0
	for after != "" {
		resp, err := http.Get(td.url + "/bans?limit=700&after=" + after)
		if err != nil {
			t.Fatal(err)
		}
		var page []struct{ Key string }
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(page) > 700 {
			t.Fatalf("page %d: %d, %d bans, %v", pages, resp.StatusCode, len(page), err)
		}
		for _, b := range page {
			seen[b.Key] = true
		}
		after = resp.Header.Get(admin.NextAfterHeader)
		pages++
	}
	if len(seen) != n || pages != 4 {
		t.Fatalf("%d bans in %d pages, want %d in 4", len(seen), pages, n)
	}
	for _, q := range []string{"limit=0", "limit=x", "limit=10&after=-1", "limit=100000"} {
		if code, body := td.call(t, "GET", "/bans?"+q, "", ""); code != 400 {
			t.Errorf("GET /bans?%s = %d %s, want 400", q, code, body)
		}
	}
	code, out, errs := cli("bans", "list", "-admin", strings.TrimPrefix(td.url, "http://"))
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d ban(s) in force", n)) {
		t.Fatalf("bans list: %d %q %s", code, tail(out), errs)
	}
}

func tail(s string) string { return s[max(0, len(s)-200):] }
