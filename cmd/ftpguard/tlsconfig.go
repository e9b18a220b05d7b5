package main

import (
	"crypto/tls"
	"fmt"
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
}

// certs holds the certificate in use; a reload swaps it, so sessions
// handshake with the new one from then on.
var certs atomic.Pointer[tls.Certificate]

// loadTLS loads the key pair and returns the server TLS config, or nil for
// mode "off". The certificate is read through certs, so a reload that
// loads a new pair applies to later handshakes without a new listener.
func loadTLS(c TLSConfig) (*tls.Config, error) {
	if c.Mode == "off" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls.cert/tls.key: %w", err)
	}
	certs.Store(&pair)
	min := uint16(tls.VersionTLS12)
	if c.MinVersion == "1.3" {
		min = tls.VersionTLS13
	}
	return &tls.Config{
		MinVersion: min,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.Load(), nil
		},
	}, nil
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
