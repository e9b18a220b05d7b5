//go:build !linux

package proxy

import (
	"errors"
	"net/netip"
)

// reservedPort: the kernel data path is Linux's (nftables) only.
type reservedPort struct{ port uint16 }

func reservePort(netip.Addr, PortRange) (*reservedPort, error) {
	return nil, errors.New("proxy: port reservation needs Linux")
}

func (p *reservedPort) Close() error { return nil }
