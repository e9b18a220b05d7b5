package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClientBanWidth: `ftpguard bans add` refuses a prefix wider than
// [admin] max_ban_prefix_ipv4/_ipv6 (a typo such as 0.0.0.0/0 locks the
// world out, and is pushed to the firewall) unless -force/--force, and
// prints what a prefix covers before applying it; the API answer carries
// `covers`. Before, 0.0.0.0/0 was banned at once.
func TestClientBanWidth(t *testing.T) {
	dir := t.TempDir()
	td := newTestDaemon(t, "")
	admin := strings.TrimPrefix(td.url, "http://")
	cfg := filepath.Join(dir, "ftpguard.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[admin]\nlisten = %q\n", admin)), 0o600)
	for _, s := range []struct {
		args []string
		code int
		out  string // substring of stdout (stderr when code != 0)
	}{
		{[]string{"bans", "add", "-config", cfg, "0.0.0.0/0", "7d"}, 2, "0.0.0.0/0 covers 2^32 addresses (4,294,967,296), wider than [admin] max_ban_prefix_ipv4 = 16"},
		{[]string{"bans", "add", "-config", cfg, "::/0", "7d"}, 2, "max_ban_prefix_ipv6 = 32"},
		{[]string{"bans", "add", "-config", cfg, "2001:db8::1/6", "7d"}, 2, "2000::/6 covers 2^122 addresses"},
		{[]string{"bans", "add", "-config", cfg, "10.1.2.3/1", "7d"}, 2, "0.0.0.0/1 covers 2,147,483,648 addresses"},
		{[]string{"bans", "add", "-config", cfg, "10.1.0.0/16", "1h"}, 0, "10.1.0.0/16 covers 65,536 addresses\nbanned 10.1.0.0/16 for 1h0m"},
		{[]string{"bans", "add", "-config", cfg, "--force", "10.0.0.0/8", "1h"}, 0, "10.0.0.0/8 covers 16,777,216 addresses\nbanned 10.0.0.0/8"},
		{[]string{"bans", "add", "-config", cfg, "-json", "172.16.0.0/16", "1h"}, 0, `"covers": "65,536 addresses"`},
		{[]string{"bans", "list", "-config", cfg}, 0, "10.0.0.0/8"},
	} {
		code, out, errs := cli(s.args...)
		text := out
		if s.code != 0 {
			text = errs
		}
		if code != s.code || !strings.Contains(text, s.out) {
			t.Errorf("ftpguard %s = %d\nstdout: %s\nstderr: %s\nwant %d and %q", strings.Join(s.args, " "), code, out, errs, s.code, s.out)
		}
	}
	if bans := td.lim.Bans(time.Now()); len(bans) != 3 {
		t.Errorf("%d bans in force, want 3 (the refused ones were not applied)", len(bans))
	}
	code, body := td.call(t, "POST", "/bans", "application/json", `{"ip":"::/0","force":true,"duration":"1m"}`)
	if code != 201 || !strings.Contains(body, `"covers": "2^128 addresses`) {
		t.Errorf("forced ::/0 through the API = %d %s", code, body)
	}
}
