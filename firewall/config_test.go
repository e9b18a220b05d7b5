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

// TestConfigNftables: kind = "nftables" takes nftset's keys, validated
// under firewall.*; ports default to the proxy's own (WithPorts,
// ProxyPorts); kind "exec" and "" keep the commands.
func TestConfigNftables(t *testing.T) {
	for _, c := range []struct {
		name  string
		edit  func(*Config)
		ports []string // the proxy's, given to WithPorts
		want  []string // problems
		nft   string   // the ports in force, joined
	}{
		{"exec default", func(*Config) {}, nil, nil, ""},
		{"empty kind is exec", func(c *Config) { c.Kind = "" }, nil, nil, ""},
		{"bad kind", func(c *Config) { c.Kind = "iptables" }, nil, []string{`firewall.kind: must be "exec" or "nftables"`}, ""},
		{"nftables, ports from the proxy", func(c *Config) { c.Kind = "nftables" },
			ProxyPorts([]string{"0.0.0.0:21", "[::]:990", "127.0.0.1:0", "bad"}, "50000-50099"), nil, "21 990 50000-50099"},
		{"nftables, ports of the file win", func(c *Config) { c.Kind = "nftables"; c.Ports = []string{"2121"} },
			[]string{"21"}, nil, "2121"},
		{"nftables, no ports", func(c *Config) { c.Kind = "nftables" }, nil, []string{"firewall.ports: must list at least one port"}, ""},
		{"nftables, bad table and port", func(c *Config) { c.Kind = "nftables"; c.Table = "1x"; c.Ports = []string{"0"} }, nil,
			[]string{"firewall.table: must be a letter", `firewall.ports: "0" is not a port`}, ""},
		{"nftables with commands", func(c *Config) { c.Kind = "nftables"; c.BanCommand = []string{"/bin/true"} }, []string{"21"},
			[]string{"firewall.ban_command: must be [] with kind"}, "21"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.edit(&cfg)
			var p conf.Problems
			s := cfg.WithPorts(c.ports...).Settings(&p)
			if len(p.List) != len(c.want) {
				t.Fatalf("problems %v, want %q", p.List, c.want)
			}
			for i, e := range p.List {
				if !strings.HasPrefix(e.Error(), c.want[i]) {
					t.Errorf("problem %q, want %q…", e.Error(), c.want[i])
				}
			}
			if c.nft == "" {
				if s.Nft != nil && len(c.want) == 0 {
					t.Errorf("Nft set for kind %q", cfg.Kind)
				}
				return
			}
			if s.Nft == nil || strings.Join(s.Nft.Ports, " ") != c.nft || s.Ban != nil {
				t.Errorf("settings %+v, want nftables ports %q", s, c.nft)
			}
		})
	}
}
