//go:build !unix

package proxy

import "net"

func setOOBInline(net.Conn) {}
