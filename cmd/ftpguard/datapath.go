package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/ftpguard/ftpguard/nftnat"
	"github.com/ftpguard/ftpguard/proxy"
)

// openDataPath opens the kernel data path's table when [passive] data_path
// is "nftables": deleted and re-created, so a crashed process leaves nothing
// behind. nil: relay only — configured so, or (logged once) this machine
// cannot (no nftables, no NAT, no CAP_NET_ADMIN).
func openDataPath(st *Settings, log *slog.Logger) *nftnat.Table {
	if st.Proxy.DataPath != proxy.DataPathNftables {
		return nil
	}
	t, err := nftnat.Open(st.Proxy.NftTable)
	if err != nil {
		log.Error("kernel data path unavailable; every transfer is relayed", "table", st.Proxy.NftTable, "err", err)
		return nil
	}
	log.Info("kernel data path: plain passive transfers by nftables NAT", "table", st.Proxy.NftTable)
	if ok, err := t.Counting(); !ok {
		log.Warn("kernel data path: the bytes of transfers the kernel carries are not counted (this kernel refused the table's counting sets)", "err", err)
	}
	if note := deploymentNote(st.Proxy.Backend); note != "" {
		log.Warn("kernel data path: " + note)
	}
	return t
}

// closeDataPath deletes the kernel data path's table.
func closeDataPath(t *nftnat.Table, log *slog.Logger) {
	if err := t.Close(); err != nil {
		log.Warn("kernel data path table could not be removed", "table", t.Name(), "err", err)
	}
}

// dataPathReport is what `ftpguard check` says of the data path: which one
// transfers will take, and why. probe is nftnat.Probe (a test's stand-in):
// it creates the table's layout under another name and deletes it at once.
func dataPathReport(st *Settings, probe func(table string) error) string {
	p := st.Proxy
	switch {
	case p.DataPath != proxy.DataPathNftables:
		return "data path: relay (passive.data_path = \"relay\")\n"
	case p.BackendTLS != nil:
		return "data path: relay: tls.backend_tls = true makes every data connection to the daemon TLS " +
			"(passive.data_path = \"nftables\" has nothing to hand to the kernel)\n"
	}
	err := probe(p.NftTable)
	uncounted := errors.Is(err, nftnat.ErrNoCounting)
	if err != nil && !uncounted {
		return fmt.Sprintf("data path: relay: nftables NAT cannot be used by this process (%v); "+
			"ftpguard will relay every transfer (run check as the user and with the capabilities ftpguard runs with: CAP_NET_ADMIN)\n", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "data path: nftables (table inet %s): plain passive transfers by kernel NAT; "+
		"relayed: PROT P, active mode, clients behind a balancer, a client of another address family than the daemon's\n", p.NftTable)
	if uncounted {
		fmt.Fprintf(&b, "  bytes: NOT counted (%v): ftpguard_bytes_relayed_total leaves out what the kernel carries\n", err)
	} else {
		b.WriteString("  bytes: counted exactly, from TCP sequence numbers, into ftpguard_bytes_relayed_total\n")
	}
	if note := deploymentNote(p.Backend); note != "" {
		b.WriteString("  note: " + note + "\n")
	}
	return b.String()
}

// deploymentNote says what the kernel data path needs of the host for
// clients on other hosts that this one does not seem to have; "" when
// nothing is missing or it cannot tell (a per-interface setting it does
// not read).
func deploymentNote(backend string) string {
	host, _, _ := net.SplitHostPort(backend)
	daemon, err := netip.ParseAddr(host)
	switch {
	case err != nil:
	case daemon.Unmap().Is4() && daemon.IsLoopback():
		if sysctl("net/ipv4/conf/all/route_localnet") != "1" {
			return "the daemon is on loopback: clients on other hosts reach it only with " +
				"net.ipv4.conf.all.route_localnet=1 (or on their interface); clients on this host need nothing (docs/operating.md)"
		}
	case daemon.IsLoopback():
		return "the daemon is on ::1: IPv6 clients on other hosts cannot be sent to it (Linux has no route_localnet for IPv6); " +
			"give it another address, or those transfers fail (docs/operating.md)"
	case !isLocal(daemon) && sysctl("net/ipv4/ip_forward") != "1":
		return "the daemon is on another host: clients on other hosts reach it only with net.ipv4.ip_forward=1 " +
			"and forwarding allowed (docs/operating.md)"
	}
	return ""
}

// sysctl reads /proc/sys/name; "" when it cannot.
func sysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// isLocal reports whether a is an address of this host.
func isLocal(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: no note
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if b, ok := netip.AddrFromSlice(n.IP); ok && b.Unmap() == a.Unmap() {
				return true
			}
		}
	}
	return false
}
