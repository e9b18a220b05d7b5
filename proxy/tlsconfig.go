package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// TLSConfig is the [tls] table of the config file: FTPS with clients
// (mode, cert, key, min_version, require, implicit_listen) and with the
// daemon (backend_tls, backend_ca, backend_server_name).
type TLSConfig struct {
	Mode           string `toml:"mode"` // "off" | "explicit" | "implicit"
	Cert           string `toml:"cert"`
	Key            string `toml:"key"`
	MinVersion     string `toml:"min_version"`
	Require        bool   `toml:"require"`
	ImplicitListen string `toml:"implicit_listen"`
	// RequireDataReuse: PROT P data connections must resume the control
	// connection's TLS session (default true).
	RequireDataReuse bool `toml:"require_data_reuse"`
	// FTPS towards the daemon.
	BackendTLS        bool   `toml:"backend_tls"`
	BackendCA         string `toml:"backend_ca"`
	BackendServerName string `toml:"backend_server_name"`
}

// loadBackendTLS returns the client TLS config for FTPS to the daemon at
// backend (host:port), or nil when backend_tls is off. Without backend_ca
// the daemon's certificate is not verified: it sits on loopback or in the
// same pod, and ftpguard would not know its name anyway.
func loadBackendTLS(c TLSConfig, backend string) (*tls.Config, error) {
	if !c.BackendTLS {
		return nil, nil
	}
	name := c.BackendServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(backend)
	}
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if c.BackendCA == "" {
		cfg.InsecureSkipVerify = true
		return cfg, nil
	}
	pem, err := os.ReadFile(c.BackendCA)
	if err != nil {
		return nil, fmt.Errorf("tls.backend_ca: %w", err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls.backend_ca: no PEM certificate in %s", c.BackendCA)
	}
	return cfg, nil
}

// loadTLS loads the key pair and returns the server TLS config that
// presents it, or nil for mode "off". Nothing is in use until the Config
// holding it is given to a Server: a reload whose file is refused for any
// key leaves the pair in use as it was.
func loadTLS(c TLSConfig) (*tls.Config, error) {
	if c.Mode == "off" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls.cert/tls.key: %w", err)
	}
	min := uint16(tls.VersionTLS12)
	if c.MinVersion == "1.3" {
		min = tls.VersionTLS13
	}
	return &tls.Config{MinVersion: min, Certificates: []tls.Certificate{pair}}, nil
}

// KeyPair returns the TLS key pair the server presents to clients now, or
// nil without TLS.
func (s *Server) KeyPair() *tls.Certificate {
	if t := s.config().TLS; t != nil && len(t.Certificates) > 0 {
		return &t.Certificates[0]
	}
	return nil
}

// validate checks the [tls] table into p.
func (c TLSConfig) validate(p *conf.Problems) {
	switch c.Mode {
	case "off":
	case "explicit", "implicit":
		if c.Cert == "" {
			p.Add("tls.cert", "must name a PEM certificate file for mode = %q", c.Mode)
		}
		if c.Key == "" {
			p.Add("tls.key", "must name a PEM key file for mode = %q", c.Mode)
		}
	default:
		p.OneOf("tls.mode", c.Mode, "off", "explicit", "implicit")
	}
	p.OneOf("tls.min_version", c.MinVersion, "1.2", "1.3")
	if c.Require && c.Mode == "off" {
		p.Add("tls.require", "needs mode = \"explicit\" or \"implicit\"")
	}
}
