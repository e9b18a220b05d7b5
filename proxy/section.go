package proxy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/nftnat"
)

// maxLineCap is the longest max_line: proftpd silently drops a command line
// of about 4,093 bytes or more (no reply: the session waits until its
// timeout); the proxy answers a longer line itself ("500").
const maxLineCap = 4000

// Section is the proxy's part of the config file: the top-level listen and
// active keys and the [tls], [backend], [passive], [sessions] and
// [proxy_protocol] tables. cmd/ftpguard embeds it in the file's struct.
type Section struct {
	Listen        string              `toml:"listen"`
	Active        bool                `toml:"active"`
	TLS           TLSConfig           `toml:"tls"`
	Backend       BackendConfig       `toml:"backend"`
	Passive       PassiveConfig       `toml:"passive"`
	Sessions      SessionsConfig      `toml:"sessions"`
	ProxyProtocol ProxyProtocolConfig `toml:"proxy_protocol"`
}

// BackendConfig is the [backend] table.
type BackendConfig struct {
	Address     string        `toml:"address"`
	DialTimeout time.Duration `toml:"dial_timeout"`
	SendProxy   string        `toml:"send_proxy"`
}

// PassiveConfig is the [passive] table.
type PassiveConfig struct {
	Address        string `toml:"address"`
	Ports          string `toml:"ports"`
	MaxPortsPerKey int    `toml:"max_ports_per_key"`
	// DataPath is "relay" or "nftables" (kernel.go); NftTable the inet
	// table the kernel data path owns.
	DataPath string `toml:"data_path"`
	NftTable string `toml:"nft_table"`
}

// Data paths ([passive] data_path).
const (
	DataPathRelay    = "relay"
	DataPathNftables = "nftables"
)

// SessionsConfig is the [sessions] table.
type SessionsConfig struct {
	MaxConns           int           `toml:"max_conns"`
	MaxConnsPerIP      int           `toml:"max_conns_per_ip"`
	LoginTimeout       time.Duration `toml:"login_timeout"`
	IdleTimeout        time.Duration `toml:"idle_timeout"`
	DataTimeout        time.Duration `toml:"data_timeout"`
	DrainTimeout       time.Duration `toml:"drain_timeout"`
	MaxPreauthCommands int           `toml:"max_preauth_commands"`
	MaxLine            int           `toml:"max_line"`
	MaxReply           int           `toml:"max_reply"`
	// capacity.go: fair shedding needs no key; these are the gate's.
	ConnRate            float64       `toml:"conn_rate"`
	ConnBurst           int           `toml:"conn_burst"`
	ConnRateMaxKeys     int           `toml:"conn_rate_max_keys"`
	NoAuthPenalty       time.Duration `toml:"noauth_penalty"`
	NoAuthPenaltyAfter  int           `toml:"noauth_penalty_after"`
	NoAuthPenaltyFactor float64       `toml:"noauth_penalty_factor"`
	NoAuthMaxPenalty    time.Duration `toml:"noauth_max_penalty"`
}

// ProxyProtocolConfig is the [proxy_protocol] table.
type ProxyProtocolConfig struct {
	Trusted       []string      `toml:"trusted"`
	HeaderTimeout time.Duration `toml:"header_timeout"`
}

// DefaultSection returns the settings of a file that sets none of the
// section's keys.
func DefaultSection() Section {
	return Section{
		Listen:  "0.0.0.0:21",
		Active:  true,
		TLS:     TLSConfig{Mode: "off", MinVersion: "1.2", ImplicitListen: "0.0.0.0:990", RequireDataReuse: true},
		Backend: BackendConfig{Address: "127.0.0.1:2121", DialTimeout: 5 * time.Second, SendProxy: "off"},
		Passive: PassiveConfig{Ports: "50000-50099", MaxPortsPerKey: DefaultMaxPortsPerKey,
			DataPath: DataPathRelay, NftTable: nftnat.DefaultTable},
		Sessions: SessionsConfig{
			MaxConns: 2000, MaxConnsPerIP: 10,
			LoginTimeout: 30 * time.Second, IdleTimeout: 10 * time.Minute,
			DataTimeout: 30 * time.Second, DrainTimeout: 30 * time.Second,
			MaxPreauthCommands: 20, MaxLine: 2048, MaxReply: 256 << 10,
			ConnRate: 5, ConnBurst: 20, ConnRateMaxKeys: 1 << 16,
			NoAuthPenalty: 30 * time.Second, NoAuthPenaltyAfter: 3, NoAuthPenaltyFactor: 2,
			NoAuthMaxPenalty: 10 * time.Minute,
		},
		ProxyProtocol: ProxyProtocolConfig{Trusted: []string{}, HeaderTimeout: 5 * time.Second},
	}
}

// Settings are the validated section: the Server's Config (its Observe
// left false: mode is not a key of the section), and where to listen.
type Settings struct {
	Config
	Listen         string
	ImplicitListen string        // tls.implicit_listen; "" unless tls.mode is "implicit"
	DrainTimeout   time.Duration // how long a shutdown waits for sessions
	// DataPath is passive.data_path; NftTable passive.nft_table. main
	// opens the table at start (nftnat.Open) and hands it to the Server
	// (SetDataPath); they take effect on restart.
	DataPath string
	NftTable string
}

// Settings validates c into p (keys "listen", "backend.…", "tls.…", …)
// and returns the settings it gives. Once the [tls] keys are valid, it
// loads the key pair and the backend CA; the pair is in use only once the
// Config is given to a Server (New or SetConfig).
func (c Section) Settings(p *conf.Problems) Settings {
	p.HostPort("listen", c.Listen)
	before := len(p.List)
	c.TLS.validate(p)
	if c.TLS.Mode == "implicit" {
		p.HostPort("tls.implicit_listen", c.TLS.ImplicitListen)
	}
	tlsOK := len(p.List) == before
	p.HostPort("backend.address", c.Backend.Address)
	p.Positive("backend.dial_timeout", c.Backend.DialTimeout)

	var sendProxy byte
	switch c.Backend.SendProxy {
	case "v1":
		sendProxy = 1
	case "v2":
		sendProxy = 2
	default:
		p.OneOf("backend.send_proxy", c.Backend.SendProxy, "off", "v1", "v2")
	}
	trusted := p.Prefixes("proxy_protocol.trusted", c.ProxyProtocol.Trusted)
	p.Positive("proxy_protocol.header_timeout", c.ProxyProtocol.HeaderTimeout)

	var passiveAddr netip.Addr
	if c.Passive.Address != "" {
		a, err := netip.ParseAddr(c.Passive.Address)
		if err != nil {
			p.Add("passive.address", "must be an IP address (never a name: no DNS), got %q", c.Passive.Address)
		}
		passiveAddr = a.Unmap()
	}
	ports, err := parsePortRange(c.Passive.Ports)
	if err != nil {
		p.Add("passive.ports", "%v", err)
	}
	p.AtLeast("passive.max_ports_per_key", c.Passive.MaxPortsPerKey, 1)
	p.OneOf("passive.data_path", c.Passive.DataPath, DataPathRelay, DataPathNftables)
	if !nftnat.ValidName(c.Passive.NftTable) {
		p.Add("passive.nft_table", "must be a letter then up to 63 letters, digits, '_', '-' or '.', got %q", c.Passive.NftTable)
	}

	ss := c.Sessions
	p.AtLeast("sessions.max_conns", ss.MaxConns, 1)
	p.AtLeast("sessions.max_conns_per_ip", ss.MaxConnsPerIP, 1)
	p.Positive("sessions.login_timeout", ss.LoginTimeout)
	p.Positive("sessions.idle_timeout", ss.IdleTimeout)
	p.Positive("sessions.data_timeout", ss.DataTimeout)
	p.Positive("sessions.drain_timeout", ss.DrainTimeout)
	p.AtLeast("sessions.max_preauth_commands", ss.MaxPreauthCommands, 1)
	p.AtLeast("sessions.max_line", ss.MaxLine, 512)
	if ss.MaxLine > maxLineCap {
		p.Add("sessions.max_line", "must be ≤ %d, got %d: proftpd drops a longer line without a reply (the session would stall until its timeout)", maxLineCap, ss.MaxLine)
	}
	p.AtLeast("sessions.max_reply", ss.MaxReply, 4096)
	if !(ss.ConnRate >= 0 && ss.ConnRate <= 1e6) {
		p.Add("sessions.conn_rate", "must be between 0 (off) and 1e6 connections per second, got %g", ss.ConnRate)
	}
	p.Between("sessions.conn_burst", ss.ConnBurst, 1, 1<<20)
	p.Between("sessions.conn_rate_max_keys", ss.ConnRateMaxKeys, 1, 1<<24)
	if ss.NoAuthPenalty < 0 {
		p.Add("sessions.noauth_penalty", "must be ≥ 0 (0: off), got %v", ss.NoAuthPenalty)
	}
	p.Between("sessions.noauth_penalty_after", ss.NoAuthPenaltyAfter, 1, 1000)
	if !(ss.NoAuthPenaltyFactor >= 1 && ss.NoAuthPenaltyFactor <= 100) {
		p.Add("sessions.noauth_penalty_factor", "must be between 1 and 100, got %g", ss.NoAuthPenaltyFactor)
	}
	if ss.NoAuthMaxPenalty < ss.NoAuthPenalty {
		p.Add("sessions.noauth_max_penalty", "must be ≥ sessions.noauth_penalty (%v), got %v", ss.NoAuthPenalty, ss.NoAuthMaxPenalty)
	}

	s := Settings{
		Listen:       c.Listen,
		DrainTimeout: ss.DrainTimeout,
		DataPath:     c.Passive.DataPath,
		NftTable:     c.Passive.NftTable,
		Config: Config{
			Backend:            c.Backend.Address,
			DialTimeout:        c.Backend.DialTimeout,
			PassiveAddr:        passiveAddr,
			PassivePorts:       ports,
			MaxPortsPerKey:     c.Passive.MaxPortsPerKey,
			MaxConns:           ss.MaxConns,
			MaxConnsPerIP:      ss.MaxConnsPerIP,
			LoginTimeout:       ss.LoginTimeout,
			IdleTimeout:        ss.IdleTimeout,
			MaxPreauthCommands: ss.MaxPreauthCommands,
			MaxLine:            ss.MaxLine,
			MaxReply:           ss.MaxReply,
			ConnRate:           ss.ConnRate,
			ConnBurst:          ss.ConnBurst,
			ConnRateKeys:       ss.ConnRateMaxKeys,
			NoAuth: limiter.NoAuthConfig{Penalty: ss.NoAuthPenalty, After: ss.NoAuthPenaltyAfter,
				Factor: ss.NoAuthPenaltyFactor, MaxPenalty: ss.NoAuthMaxPenalty},
			DataTimeout:        ss.DataTimeout,
			TrustedProxies:     trusted,
			ProxyHeaderTimeout: c.ProxyProtocol.HeaderTimeout,
			SendProxy:          sendProxy,
			RequireTLS:         c.TLS.Require,
			DataNoReuse:        !c.TLS.RequireDataReuse,
			Active:             c.Active,
		},
	}
	if c.TLS.Mode == "implicit" {
		s.ImplicitListen = c.TLS.ImplicitListen
	}
	if tlsOK {
		var err error
		if s.Config.TLS, err = loadTLS(c.TLS); err != nil {
			p.Add("tls.cert", "%v", err)
		}
		if s.Config.BackendTLS, err = loadBackendTLS(c.TLS, c.Backend.Address); err != nil {
			p.Add("tls.backend_ca", "%v", err)
		}
	}
	return s
}

// parsePortRange parses "50000-50099" (or a single port).
func parsePortRange(v string) (PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(v), "-")
	if !found {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	switch {
	case err1 != nil || err2 != nil:
		return PortRange{}, fmt.Errorf("must be \"LOW-HIGH\" with ports 1024–65535, got %q", v)
	case a < 1024 || b < a:
		return PortRange{}, fmt.Errorf("must be \"LOW-HIGH\" with 1024 ≤ LOW ≤ HIGH ≤ 65535, got %q", v)
	}
	return PortRange{Min: uint16(a), Max: uint16(b)}, nil
}
