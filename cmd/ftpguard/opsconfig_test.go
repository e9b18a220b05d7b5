package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestOpsConfigErrors(t *testing.T) {
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	tests := []struct {
		name, text string
		want       []string // substrings of the error, after "PATH"
	}{
		{"mode", "mode = \"audit\"\n", []string{`:1 mode: must be "enforce" or "observe", got "audit"`}},
		{"admin listen", "[admin]\nlisten = \"9121\"\n", []string{":2 admin.listen: must be host:port"}},
		{"admin unix relative", "[admin]\nlisten = \"unix:admin.sock\"\n", []string{":2 admin.listen: a unix socket needs an absolute path"}},
		{"admin all interfaces", "[admin]\nlisten = \":9121\"\n", []string{":2 admin.listen: must name an IP address"}},
		{"admin public no token", "[admin]\nlisten = \"0.0.0.0:9121\"\n", []string{":2 admin.listen: \"0.0.0.0:9121\" is reachable from other hosts: set admin.token_file"}},
		{"token missing", "[admin]\ntoken_file = \"/nonexistent/token\"\n", []string{":2 admin.token_file: open /nonexistent/token"}},
		{"token short", fmt.Sprintf("[admin]\ntoken_file = %q\n", short), []string{":2 admin.token_file: the token in " + short + " is 3 bytes; use at least 16"}},
		{"fw program", "[firewall]\nban_command = [\"no-such-program-xyz\", \"{ip}\"]\n", []string{`:2 firewall.ban_command: program "no-such-program-xyz"`}},
		{"fw placeholder", "[firewall]\nban_command = [\"/bin/echo\", \"{address}\"]\n", []string{":2 firewall.ban_command: unknown placeholder {address} in \"{address}\" (known: {ip}, {prefix}, {seconds}, {family})"}},
		{"fw unban alone", "[firewall]\nunban_command = [\"/bin/echo\", \"{ip}\"]\n", []string{":2 firewall.unban_command: needs a ban_command too"}},
		{"fw timeout", "[firewall]\ntimeout = \"0s\"\n", []string{":2 firewall.timeout: must be a positive duration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeConfig(t, tt.text)
			_, err := LoadConfig(p)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), p+w) {
					t.Errorf("error lacks %q:\n%v", p+w, err)
				}
			}
		})
	}
}

func TestOpsConfigValues(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "admin.token"), []byte("  0123456789abcdef0123  \nignored\n"), 0o600)
	p := filepath.Join(dir, "ftpguard.toml")
	os.WriteFile(p, []byte(`mode = "observe"
[admin]
listen = "0.0.0.0:9121"
token_file = "admin.token"
pprof = true
[firewall]
ban_command = ["/bin/echo", "{ip}", "{seconds}"]
unban_command = ["/bin/echo", "{prefix}"]
timeout = "2s"
`), 0o600)
	st, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Proxy.Observe || st.Admin.Network != "tcp" || st.Admin.Address != "0.0.0.0:9121" || !st.Admin.Pprof ||
		st.Admin.Token != "0123456789abcdef0123" {
		t.Errorf("admin/mode settings: %+v observe %v", st.Admin, st.Proxy.Observe)
	}
	if !slices.Equal(st.Firewall.Ban, []string{"/bin/echo", "{ip}", "{seconds}"}) || len(st.Firewall.Unban) != 2 || st.Firewall.Timeout != 2*time.Second {
		t.Errorf("firewall settings: %+v", st.Firewall)
	}
	st, err = LoadConfig(writeConfig(t, "[admin]\nlisten = \"unix:/run/ftpguard/admin.sock\"\n"))
	if err != nil || st.Admin.Network != "unix" || st.Admin.Address != "/run/ftpguard/admin.sock" || st.Proxy.Observe {
		t.Errorf("unix admin: %+v %v", st, err)
	}
	st, err = LoadConfig(writeConfig(t, "[admin]\nlisten = \"\"\n"))
	if err != nil || st.Admin.Network != "" {
		t.Errorf("admin off: %+v %v", st.Admin, err)
	}
}
