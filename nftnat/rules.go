package nftnat

import (
	"fmt"
	"net/netip"
	"regexp"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names of the objects in the table.
const (
	MapDNAT4 = "dnat4"
	MapSNAT4 = "snat4"
	MapDNAT6 = "dnat6"
	MapSNAT6 = "snat6"

	ChainPrerouting  = "prerouting"
	ChainOutput      = "output"
	ChainPostrouting = "postrouting"
	ChainInput       = "input"

	SetCut4        = "cut4"
	SetCut6        = "cut6"
	ChainCutInput  = "cut_input"
	ChainCutOutput = "cut_output"
	ChainCutFwd    = "cut_forward"
)

// Registers as the kernel numbers them: NFT_REG_1 and NFT_REG_2 are 16
// bytes each, NFT_REG32_nn the 4-byte words of the same register file
// (NFT_REG32_00, 8, is the first word of NFT_REG_1). A concatenation is
// loaded field after field, each field rounded up to whole words — the
// layout nft itself uses, so that `nft list` prints the rules back.
const (
	reg1    = unix.NFT_REG_1    // words 0-3
	reg2    = unix.NFT_REG_2    // words 4-7
	reg32w1 = unix.NFT_REG32_01 // word 1
	reg32w2 = unix.NFT_REG32_02 // word 2
	reg32w4 = unix.NFT_REG32_04 // word 4
	reg32w8 = unix.NFT_REG32_08 // word 8
)

// family is what differs between the IPv4 and the IPv6 maps and rules.
type family struct {
	nfproto   byte
	addrType  nftables.SetDatatype
	addrLen   uint32
	saddrOff  uint32 // offset of the source address in the network header
	daddrReg  uint32 // where the second address of the key goes
	dportReg  uint32 // where the port of the key goes
	protoReg  uint32 // where the port of a DNAT value lands after the lookup
	dnat      string
	snat      string
	cut       string
	natFamily uint32
}

var (
	fam4 = family{nfproto: unix.NFPROTO_IPV4, addrType: nftables.TypeIPAddr, addrLen: 4, saddrOff: 12,
		daddrReg: reg32w1, dportReg: reg32w2, protoReg: reg32w1, dnat: MapDNAT4, snat: MapSNAT4, cut: SetCut4, natFamily: unix.NFPROTO_IPV4}
	fam6 = family{nfproto: unix.NFPROTO_IPV6, addrType: nftables.TypeIP6Addr, addrLen: 16, saddrOff: 8,
		daddrReg: reg2, dportReg: reg32w8, protoReg: reg32w4, dnat: MapDNAT6, snat: MapSNAT6, cut: SetCut6, natFamily: unix.NFPROTO_IPV6}
)

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return fam4
	}
	return fam6
}

// maps returns the family's two maps in table t:
//
//	map dnat4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout; }
//	map snat4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; flags timeout; }
//
// dnat: the client, the proxy's address and passive port → the daemon's
// passive address and port. snat: the client, the daemon's address and
// port (the packet once DNAT has rewritten it) → the address the daemon
// must see.
func (f family) maps(t *nftables.Table) (dnat, snat *nftables.Set) {
	key := nftables.MustConcatSetType(f.addrType, f.addrType, nftables.TypeInetService)
	dnat = &nftables.Set{Table: t, Name: f.dnat, IsMap: true, HasTimeout: true, KeyType: key,
		DataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService)}
	snat = &nftables.Set{Table: t, Name: f.snat, IsMap: true, HasTimeout: true, KeyType: key, DataType: f.addrType}
	return dnat, snat
}

// natExprs is the rule that translates through m (a map of f made by
// maps):
//
//	meta nfproto ipv4 meta l4proto tcp dnat ip to ip saddr . ip daddr . tcp dport map @dnat4
//	meta nfproto ipv4 meta l4proto tcp snat ip to ip saddr . ip daddr . tcp dport map @snat4
//
// A packet whose key is not in the map is left alone (the lookup ends the
// rule). NAT rules see only the first packet of a connection: conntrack
// translates the rest, so a mapping removed once the daemon has accepted
// leaves the transfer running.
func (f family) natExprs(dnat bool, m *nftables.Set) []expr.Any {
	n := &expr.NAT{Type: expr.NATTypeSourceNAT, Family: f.natFamily, RegAddrMin: reg1, RegAddrMax: reg1}
	if dnat {
		n.Type, n.RegProtoMin, n.RegProtoMax, n.Specified = expr.NATTypeDestNAT, f.protoReg, f.protoReg, true
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff, Len: f.addrLen},
		&expr.Payload{DestRegister: f.daddrReg, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff + f.addrLen, Len: f.addrLen},
		&expr.Payload{DestRegister: f.dportReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		n,
	}
}

// cutSet returns the family's set of cut transfers in table t:
//
//	set cut4 { type ipv4_addr . ipv4_addr . inet_service; flags timeout; }
//
// keyed like the snat map: the client, the daemon's address and passive
// port — what a mapped connection's packets carry once DNAT has rewritten
// them, in either direction, at the filter hooks (between the NAT hooks).
func (f family) cutSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: f.cut, HasTimeout: true,
		KeyType: nftables.MustConcatSetType(f.addrType, f.addrType, nftables.TypeInetService)}
}

// cutExprs is the rule that resets a cut transfer's packets: from the
// client (reply false),
//
//	meta nfproto ipv4 meta l4proto tcp ip saddr . ip daddr . tcp dport @cut4 tcp flags & rst == 0 reject with tcp reset
//
// and from the daemon (reply true),
//
//	meta nfproto ipv4 meta l4proto tcp ip daddr . ip saddr . tcp sport @cut4 tcp flags & rst == 0 reject with tcp reset
//
// Each side gets a reset for its next packet, and so both ends of the
// connection the kernel carries are closed.
func (f family) cutExprs(reply bool, set *nftables.Set) []expr.Any {
	first, second, port := f.saddrOff, f.saddrOff+f.addrLen, uint32(2)
	if reply {
		first, second, port = second, first, 0
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: first, Len: f.addrLen},
		&expr.Payload{DestRegister: f.daddrReg, Base: expr.PayloadBaseNetworkHeader, Offset: second, Len: f.addrLen},
		&expr.Payload{DestRegister: f.dportReg, Base: expr.PayloadBaseTransportHeader, Offset: port, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: set.Name, SetID: set.ID},
		// Not the resets themselves: the one sent to the client passes
		// the output hook with the daemon's addresses and would be taken.
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{tcpRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}
}

// tcpRST is the RST bit of the TCP header's flags byte (offset 13).
const tcpRST = 0x04

// cutChains: the filter hooks a mapped connection's packets pass with their
// DNAT done and their SNAT not yet (or undone): input (a remote client to
// a daemon on this host), output (anything sent on this host: a local
// client, the daemon's replies), forward (a daemon on another host).
var cutChains = []struct {
	name string
	hook *nftables.ChainHook
}{
	{ChainCutInput, nftables.ChainHookInput},
	{ChainCutOutput, nftables.ChainHookOutput},
	{ChainCutFwd, nftables.ChainHookForward},
}

// chainSpec is one of the table's base chains.
type chainSpec struct {
	name     string
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	dnat     bool
}

// chains: DNAT where a connection's first packet enters — prerouting for
// remote clients, output for clients on this host (loopback) — and SNAT
// where it leaves for the daemon: postrouting (a daemon on another host, or
// a local client's packet), input (a remote client's packet delivered to a
// daemon on this host).
var chains = []chainSpec{
	{ChainPrerouting, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, true},
	{ChainOutput, nftables.ChainHookOutput, nftables.ChainPriorityNATDest, true},
	{ChainPostrouting, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, false},
	{ChainInput, nftables.ChainHookInput, nftables.ChainPriorityNATSource, false},
}

// Mapping is one passive data connection handed to the kernel: the first
// connection from Client to Local (the proxy's address and passive port,
// as announced in the 227/229) goes to Daemon (the daemon's passive
// address and port) with its source translated to Source (the proxy's end
// of the control connection, the address the daemon expects its data
// connection from). All four addresses are of one family.
type Mapping struct {
	Client netip.Addr
	Local  netip.AddrPort
	Daemon netip.AddrPort
	Source netip.Addr
}

// elems are a Mapping's two map elements (without timeouts).
type elems struct {
	fam              family
	dnatKey, dnatVal []byte
	snatKey, snatVal []byte
}

// encode returns m's elements: keys and values laid out as the rules load
// them (fields in network byte order, each rounded up to 4 bytes).
func (m Mapping) encode() (elems, error) {
	c, s := m.Client.Unmap(), m.Source.Unmap()
	l := netip.AddrPortFrom(m.Local.Addr().Unmap(), m.Local.Port())
	d := netip.AddrPortFrom(m.Daemon.Addr().Unmap(), m.Daemon.Port())
	if !c.IsValid() || !s.IsValid() || !l.Addr().IsValid() || !d.Addr().IsValid() {
		return elems{}, fmt.Errorf("nftnat: mapping %v: an address is missing", m)
	}
	if l.Port() == 0 || d.Port() == 0 {
		return elems{}, fmt.Errorf("nftnat: mapping %v: port 0", m)
	}
	if c.Is4() != s.Is4() || c.Is4() != l.Addr().Is4() || c.Is4() != d.Addr().Is4() {
		return elems{}, fmt.Errorf("nftnat: mapping %v: %w", m, ErrFamilies)
	}
	f := familyOf(c)
	port := func(p uint16) []byte { return []byte{byte(p >> 8), byte(p), 0, 0} }
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	return elems{
		fam:     f,
		dnatKey: cat(c.AsSlice(), l.Addr().AsSlice(), port(l.Port())),
		dnatVal: cat(d.Addr().AsSlice(), port(d.Port())),
		snatKey: cat(c.AsSlice(), d.Addr().AsSlice(), port(d.Port())),
		snatVal: s.AsSlice(),
	}, nil
}

// tableName is what nft accepts unquoted as a table name (and a bit
// stricter): a letter, then letters, digits, '_', '-' or '.'.
var tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)

// ValidName reports whether name can name the table: a letter, then up to
// 63 letters, digits, '_', '-' or '.'.
func ValidName(name string) bool { return tableName.MatchString(name) }
