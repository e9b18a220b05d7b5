//go:build linux

package proxy

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
)

// TestBindOnly: a port is reserved on either family (an IPv6 address made
// the kernel data path panic at the first EPSV: "As4 called on IPv6
// address"), and a reserved port cannot be bound again.
func TestBindOnly(t *testing.T) {
	for _, a := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		t.Run(a, func(t *testing.T) {
			ip := netip.MustParseAddr(a)
			p, err := bindOnly(ip, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if p.port == 0 {
				t.Fatal("no port")
			}
			if q, err := bindOnly(ip, int(p.port)); err == nil {
				q.Close()
				t.Fatalf("port %d bound twice", p.port)
			} else if !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("second bind: %v; want EADDRINUSE", err)
			}
		})
	}
}
