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
