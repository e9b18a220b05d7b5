package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// TestSectionSettings: the proxy's section validates itself, one problem
// per bad key, named in full, and gives the Server's Config.
func TestSectionSettings(t *testing.T) {
	var p conf.Problems
	s := DefaultSection().Settings(&p)
	if !p.OK() || s.Listen != "0.0.0.0:21" || s.Backend != "127.0.0.1:2121" || s.MaxLine != 2048 ||
		s.PassivePorts != (PortRange{50000, 50099}) || s.TLS != nil || s.ImplicitListen != "" || s.DrainTimeout != 30*time.Second {
		t.Fatalf("defaults: %+v %v", s, p.List)
	}
	c := DefaultSection()
	c.Backend.SendProxy = "v3"
	c.Passive.Ports = "21-30"
	c.Sessions.MaxLine = 100
	c.TLS.Require = true
	c.ProxyProtocol.Trusted = []string{"10.0.0.0/8", "lb.example"}
	p = conf.Problems{}
	s = c.Settings(&p)
	var got []string
	for _, e := range p.List {
		got = append(got, e.Error())
	}
	want := []string{
		`tls.require: needs mode = "explicit" or "implicit"`,
		`backend.send_proxy: must be "off", "v1" or "v2", got "v3"`,
		`proxy_protocol.trusted: "lb.example" is not an IP address or CIDR`,
		`passive.ports: must be "LOW-HIGH" with 1024 ≤ LOW ≤ HIGH ≤ 65535, got "21-30"`,
		`sessions.max_line: must be ≥ 512, got 100`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(s.TrustedProxies) != 1 || s.TrustedProxies[0].String() != "10.0.0.0/8" {
		t.Errorf("trusted %v", s.TrustedProxies)
	}
}

// TestSectionCapacityKeys: the [sessions] capacity keys: defaults, then
// one problem per bad key.
func TestSectionCapacityKeys(t *testing.T) {
	var p conf.Problems
	s := DefaultSection().Settings(&p)
	if !p.OK() || s.ConnRate != 5 || s.ConnBurst != 20 || s.ConnRateKeys != 1<<16 ||
		s.NoAuth.Penalty != 30*time.Second || s.NoAuth.After != 3 || s.NoAuth.Factor != 2 || s.NoAuth.MaxPenalty != 10*time.Minute {
		t.Fatalf("defaults: %+v %v", s.Config, p.List)
	}
	c := DefaultSection()
	c.Sessions.ConnRate = -1
	c.Sessions.ConnBurst = 0
	c.Sessions.ConnRateMaxKeys = 0
	c.Sessions.NoAuthPenalty = -time.Second
	c.Sessions.NoAuthPenaltyAfter = 0
	c.Sessions.NoAuthPenaltyFactor = 0.5
	p = conf.Problems{}
	c.Settings(&p)
	var got []string
	for _, e := range p.List {
		got = append(got, strings.SplitN(e.Error(), ":", 2)[0])
	}
	want := "sessions.conn_rate sessions.conn_burst sessions.conn_rate_max_keys sessions.noauth_penalty " +
		"sessions.noauth_penalty_after sessions.noauth_penalty_factor"
	if strings.Join(got, " ") != want {
		t.Errorf("problems %v; want %s", p.List, want)
	}
	c = DefaultSection()
	c.Sessions.NoAuthMaxPenalty = time.Second
	p = conf.Problems{}
	c.Settings(&p)
	if len(p.List) != 1 || !strings.HasPrefix(p.List[0].Error(), "sessions.noauth_max_penalty: must be ≥") {
		t.Errorf("problems %v", p.List)
	}
}

// TestSectionDataPath: [passive] data_path and nft_table: defaults, the
// values taken, and one problem per bad key.
func TestSectionDataPath(t *testing.T) {
	var p conf.Problems
	s := DefaultSection().Settings(&p)
	if !p.OK() || s.DataPath != "relay" || s.NftTable != "ftpguard_data" {
		t.Fatalf("defaults: data_path %q nft_table %q %v", s.DataPath, s.NftTable, p.List)
	}
	for _, c := range []struct {
		path, table string
		want        []string
	}{
		{"nftables", "ftpguard_data", nil},
		{"relay", "fg-data.2", nil},
		{"kernel", "ftpguard_data", []string{`passive.data_path: must be "relay" or "nftables", got "kernel"`}},
		{"nftables", "", []string{`passive.nft_table: must be a letter then up to 63 letters, digits, '_', '-' or '.', got ""`}},
		{"nftables", "ftp guard", []string{`passive.nft_table: must be a letter then up to 63 letters, digits, '_', '-' or '.', got "ftp guard"`}},
	} {
		sec := DefaultSection()
		sec.Passive.DataPath, sec.Passive.NftTable = c.path, c.table
		p = conf.Problems{}
		s = sec.Settings(&p)
		var got []string
		for _, e := range p.List {
			got = append(got, e.Error())
		}
		if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%q %q: problems %q; want %q", c.path, c.table, got, c.want)
		}
		if c.want == nil && (s.DataPath != c.path || s.NftTable != c.table) {
			t.Errorf("%q %q: settings %q %q", c.path, c.table, s.DataPath, s.NftTable)
		}
	}
}

// TestSectionMaxLineCap: max_line above what the daemons read whole is
// refused with the reason; 4000 is the most.
func TestSectionMaxLineCap(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{
		{4000, ""},
		{4001, "sessions.max_line: must be ≤ 4000, got 4001: proftpd drops a longer line"},
		{8192, "sessions.max_line: must be ≤ 4000, got 8192"},
	} {
		c := DefaultSection()
		c.Sessions.MaxLine = tt.n
		var p conf.Problems
		c.Settings(&p)
		var got string
		for _, e := range p.List {
			got += e.Error()
		}
		if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("max_line %d: problems %q, want %q", tt.n, got, tt.want)
		}
	}
}
