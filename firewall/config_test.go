package firewall

import (
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// TestConfigSettings: the [firewall] section validates itself, one problem
// per bad key, named in full.
func TestConfigSettings(t *testing.T) {
	var p conf.Problems
	s := DefaultConfig().Settings(&p)
	if !p.OK() || s.Ban != nil || s.Timeout != 5*time.Second || !s.UnbanExpired {
		t.Fatalf("defaults: %+v %v", s, p.List)
	}
	c := Config{BanCommand: []string{"/bin/echo", "{address}"}, UnbanCommand: []string{""}, Timeout: 0}
	p = conf.Problems{}
	c.Settings(&p)
	var got []string
	for _, e := range p.List {
		got = append(got, e.Error())
	}
	want := []string{
		`firewall.ban_command: unknown placeholder {address} in "{address}" (known: {ip}, {prefix}, {seconds}, {family})`,
		"firewall.unban_command: the program (first element) is empty",
		`firewall.timeout: must be a positive duration such as "30s", got 0s`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
