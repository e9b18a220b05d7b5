package nftset

import (
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/ftpguard/ftpguard/internal/conf"
)

func TestParsePortRange(t *testing.T) {
	good := map[string]PortRange{
		"21":          {21, 21},
		" 2121 ":      {2121, 2121},
		"50000-50099": {50000, 50099},
		"1-65535":     {1, 65535},
		"80-80":       {80, 80},
	}
	for in, want := range good {
		got, err := ParsePortRange(in)
		if err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "65536", "-1", "21-", "-21", "50099-50000", "ftp", "1-2-3", "21,22"} {
		if got, err := ParsePortRange(in); err == nil {
			t.Errorf("ParsePortRange(%q) = %v, want an error", in, got)
		}
	}
}

func TestMergePorts(t *testing.T) {
	got := mergePorts([]PortRange{{50000, 50099}, {21, 21}, {50050, 50200}, {22, 22}, {990, 990}})
	want := []PortRange{{21, 22}, {990, 990}, {50000, 50200}}
	if !slices.Equal(got, want) {
		t.Errorf("mergePorts = %v, want %v", got, want)
	}
	var s []string
	for _, r := range want {
		s = append(s, r.String())
	}
	if j := strings.Join(s, ","); j != "21-22,990,50000-50200" {
		t.Errorf("String = %s", j)
	}
	els := portElements([]PortRange{{21, 21}, {65000, 65535}})
	if len(els) != 3 || !els[1].IntervalEnd || els[1].Key[0] != 0 || els[1].Key[1] != 22 {
		t.Errorf("portElements = %+v", els)
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		toml string
		keys []string // keys with a problem
	}{
		{`ports = ["21", "50000-50099"]`, nil},
		{`drop_rule = false`, nil},
		{``, []string{"firewall.ports"}},
		{`ports = ["21", "ftp", "9-8"]`, []string{"firewall.ports", "firewall.ports"}},
		{`table = "my table"
ports = ["21"]`, []string{"firewall.table"}},
		{`table = ""
drop_rule = false`, []string{"firewall.table"}},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		if _, err := toml.Decode(tt.toml, &c); err != nil {
			t.Fatal(err)
		}
		var p conf.Problems
		c.Validate(&p)
		var keys []string
		for _, q := range p.List {
			keys = append(keys, q.Key)
		}
		if !slices.Equal(keys, tt.keys) {
			t.Errorf("%q: problems %v, want keys %v", tt.toml, p.List, tt.keys)
		}
	}
	c := DefaultConfig()
	if c.Table != "ftpguard" || !c.DropRule || c.RemoveOnExit || len(c.Ports) != 0 {
		t.Errorf("DefaultConfig = %+v", c)
	}
	if _, err := Open(c); err == nil || !strings.HasPrefix(err.Error(), "nftset: ") {
		t.Errorf("Open(defaults without ports) = %v, want an nftset: error", err)
	}
}
