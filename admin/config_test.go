package admin

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// TestConfigSettings: the [admin] section validates itself and reads its
// token file.
func TestConfigSettings(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("0123456789abcdef\n"), 0o600)
	tests := []struct {
		c       Config
		network string
		token   string
		problem string // "" = none
	}{
		{DefaultConfig(), "tcp", "", ""},
		{Config{}, "", "", ""},
		{Config{Listen: "unix:/run/a.sock"}, "unix", "", ""},
		{Config{Listen: "192.0.2.1:9121", TokenFile: tok}, "tcp", "0123456789abcdef", ""},
		{Config{Listen: "192.0.2.1:9121"}, "tcp", "", `admin.listen: "192.0.2.1:9121" is reachable from other hosts: set admin.token_file too (whoever reaches the admin listener can lift bans)`},
		{Config{Listen: ":9121"}, "", "", `admin.listen: must name an IP address (127.0.0.1 keeps it local), got ":9121"`},
	}
	for _, tt := range tests {
		var p conf.Problems
		s := tt.c.Settings(&p)
		problem := ""
		if !p.OK() {
			problem = p.List[0].Error()
		}
		if s.Network != tt.network || s.Token != tt.token || problem != tt.problem || len(p.List) > 1 {
			t.Errorf("%+v: %+v %v; want network %q token %q problem %q", tt.c, s, p.List, tt.network, tt.token, tt.problem)
		}
	}
}
