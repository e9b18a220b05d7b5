package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync/atomic"
)

// TLSConfig is the [tls] table.
type TLSConfig struct {
	Mode           string `toml:"mode"` // "off" | "explicit" | "implicit"
	Cert           string `toml:"cert"`
	Key            string `toml:"key"`
	MinVersion     string `toml:"min_version"`
	Require        bool   `toml:"require"`
	ImplicitListen string `toml:"implicit_listen"`
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

// certs holds the certificate in use; a reload swaps it, so sessions
// handshake with the new one from then on.
var certs atomic.Pointer[tls.Certificate]

// loadTLS loads the key pair and returns the server TLS config and the
// pair, or nils for mode "off". The config reads the certificate through
// certs, so a reload that installs a new pair (Settings.installCert, once
// the whole file is accepted) applies to later handshakes without a new
// listener.
func loadTLS(c TLSConfig) (*tls.Config, *tls.Certificate, error) {
	if c.Mode == "off" {
		return nil, nil, nil
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("tls.cert/tls.key: %w", err)
	}
	min := uint16(tls.VersionTLS12)
	if c.MinVersion == "1.3" {
		min = tls.VersionTLS13
	}
	return &tls.Config{
		MinVersion: min,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.Load(), nil
		},
	}, &pair, nil
}

// validateTLS checks the [tls] table.
func validateTLS(c TLSConfig, bad func(key, format string, args ...any)) {
	switch c.Mode {
	case "off":
	case "explicit", "implicit":
		if c.Cert == "" {
			bad("tls.cert", "must name a PEM certificate file for mode = %q", c.Mode)
		}
		if c.Key == "" {
			bad("tls.key", "must name a PEM key file for mode = %q", c.Mode)
		}
	default:
		bad("tls.mode", "must be \"off\", \"explicit\" or \"implicit\", got %q", c.Mode)
	}
	if c.MinVersion != "1.2" && c.MinVersion != "1.3" {
		bad("tls.min_version", "must be \"1.2\" or \"1.3\", got %q", c.MinVersion)
	}
	if c.Require && c.Mode == "off" {
		bad("tls.require", "needs mode = \"explicit\" or \"implicit\"")
	}
}
