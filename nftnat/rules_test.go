package nftnat

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestNatExprs: each of the four rules is what nft compiles from
//
//	meta nfproto ipv4 meta l4proto tcp dnat ip to ip saddr . ip daddr . tcp dport map @dnat4
//
// and its SNAT and IPv6 siblings (nft --debug=netlink): the concatenated
// key loaded field after field into whole registers, the map's value
// landing in register 1 (address) and the word after the address (port).
func TestNatExprs(t *testing.T) {
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: "t"}
	lookup := func(name string) *expr.Lookup {
		return &expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: name}
	}
	head := func(nfproto byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
		}
	}
	v4key := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // ip saddr → reg 1
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // ip daddr → reg 9
		&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	v6key := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},  // ip6 saddr → reg 1
		&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}, // ip6 daddr → reg 2
		&expr.Payload{DestRegister: 16, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, c := range []struct {
		name string
		fam  family
		dnat bool
		want []expr.Any
	}{
		{"dnat4", fam4, true, cat(head(2), v4key, []expr.Any{lookup("dnat4"),
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: 2, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 9, RegProtoMax: 9, Specified: true}})},
		{"snat4", fam4, false, cat(head(2), v4key, []expr.Any{lookup("snat4"),
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: 2, RegAddrMin: 1, RegAddrMax: 1}})},
		{"dnat6", fam6, true, cat(head(10), v6key, []expr.Any{lookup("dnat6"),
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: 10, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 12, RegProtoMax: 12, Specified: true}})},
		{"snat6", fam6, false, cat(head(10), v6key, []expr.Any{lookup("snat6"),
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: 10, RegAddrMin: 1, RegAddrMax: 1}})},
	} {
		t.Run(c.name, func(t *testing.T) {
			dnat, snat := c.fam.maps(tbl)
			m := snat
			if c.dnat {
				m = dnat
			}
			if m.Name != c.name {
				t.Fatalf("map %q; want %q", m.Name, c.name)
			}
			got := c.fam.natExprs(c.dnat, m)
			if !reflect.DeepEqual(got, c.want) {
				for i := range max(len(got), len(c.want)) {
					var g, w expr.Any
					if i < len(got) {
						g = got[i]
					}
					if i < len(c.want) {
						w = c.want[i]
					}
					if !reflect.DeepEqual(g, w) {
						t.Errorf("expr %d: got %#v; want %#v", i, g, w)
					}
				}
			}
		})
	}
}

// TestMaps: the maps' key and value sizes are the concatenations' (each
// field rounded up to 4 bytes), which the kernel checks every element
// and register load against.
func TestMaps(t *testing.T) {
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: "t"}
	for _, c := range []struct {
		fam                         family
		keyLen, dnatLen, snatLen    uint32
		keyName, dnatName, snatName string
	}{
		{fam4, 12, 8, 4, "ipv4_addr . ipv4_addr . inet_service", "ipv4_addr . inet_service", "ipv4_addr"},
		{fam6, 36, 20, 16, "ipv6_addr . ipv6_addr . inet_service", "ipv6_addr . inet_service", "ipv6_addr"},
	} {
		dnat, snat := c.fam.maps(tbl)
		if !dnat.IsMap || !snat.IsMap || !dnat.HasTimeout || !snat.HasTimeout {
			t.Errorf("%s/%s: not timeout maps", dnat.Name, snat.Name)
		}
		if dnat.KeyType.Bytes != c.keyLen || snat.KeyType.Bytes != c.keyLen || dnat.KeyType.Name != c.keyName {
			t.Errorf("%s key %q %d bytes; want %q %d", dnat.Name, dnat.KeyType.Name, dnat.KeyType.Bytes, c.keyName, c.keyLen)
		}
		if dnat.DataType.Bytes != c.dnatLen || dnat.DataType.Name != c.dnatName {
			t.Errorf("%s value %q %d bytes; want %q %d", dnat.Name, dnat.DataType.Name, dnat.DataType.Bytes, c.dnatName, c.dnatLen)
		}
		if snat.DataType.Bytes != c.snatLen || snat.DataType.Name != c.snatName {
			t.Errorf("%s value %q %d bytes; want %q %d", snat.Name, snat.DataType.Name, snat.DataType.Bytes, c.snatName, c.snatLen)
		}
	}
}

func TestEncode(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	for _, c := range []struct {
		name                               string
		m                                  Mapping
		dnatKey, dnatVal, snatKey, snatVal []byte
		err                                error
	}{
		{
			name: "ipv4 loopback",
			m: Mapping{Client: a("127.0.0.21"), Local: ap("127.0.0.1:50001"),
				Daemon: ap("127.0.0.1:20007"), Source: a("127.0.0.1")},
			dnatKey: []byte{127, 0, 0, 21, 127, 0, 0, 1, 0xc3, 0x51, 0, 0},
			dnatVal: []byte{127, 0, 0, 1, 0x4e, 0x27, 0, 0},
			snatKey: []byte{127, 0, 0, 21, 127, 0, 0, 1, 0x4e, 0x27, 0, 0},
			snatVal: []byte{127, 0, 0, 1},
		},
		{
			name: "ipv4-mapped addresses are IPv4",
			m: Mapping{Client: a("::ffff:192.0.2.7"), Local: ap("[::ffff:198.51.100.1]:50000"),
				Daemon: ap("10.0.0.2:30000"), Source: a("::ffff:10.0.0.1")},
			dnatKey: []byte{192, 0, 2, 7, 198, 51, 100, 1, 0xc3, 0x50, 0, 0},
			dnatVal: []byte{10, 0, 0, 2, 0x75, 0x30, 0, 0},
			snatKey: []byte{192, 0, 2, 7, 10, 0, 0, 2, 0x75, 0x30, 0, 0},
			snatVal: []byte{10, 0, 0, 1},
		},
		{
			name: "ipv6",
			m: Mapping{Client: a("2001:db8::7"), Local: ap("[2001:db8::1]:50000"),
				Daemon: ap("[::1]:2000"), Source: a("::1")},
			dnatKey: append(append(a("2001:db8::7").AsSlice(), a("2001:db8::1").AsSlice()...), 0xc3, 0x50, 0, 0),
			dnatVal: append(a("::1").AsSlice(), 0x07, 0xd0, 0, 0),
			snatKey: append(append(a("2001:db8::7").AsSlice(), a("::1").AsSlice()...), 0x07, 0xd0, 0, 0),
			snatVal: a("::1").AsSlice(),
		},
		{
			name: "an IPv6 client to an IPv4 daemon",
			m: Mapping{Client: a("2001:db8::7"), Local: ap("[2001:db8::1]:50000"),
				Daemon: ap("127.0.0.1:2000"), Source: a("127.0.0.1")},
			err: ErrFamilies,
		},
		{name: "no client", m: Mapping{Local: ap("127.0.0.1:1"), Daemon: ap("127.0.0.1:2"), Source: a("127.0.0.1")}, err: errAny},
		{name: "port 0", m: Mapping{Client: a("127.0.0.2"), Local: ap("127.0.0.1:0"), Daemon: ap("127.0.0.1:2"), Source: a("127.0.0.1")}, err: errAny},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, err := c.m.encode()
			if c.err != nil {
				if err == nil || c.err != errAny && !errors.Is(err, c.err) {
					t.Fatalf("err = %v; want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []struct {
				name      string
				got, want []byte
			}{{"dnat key", e.dnatKey, c.dnatKey}, {"dnat value", e.dnatVal, c.dnatVal},
				{"snat key", e.snatKey, c.snatKey}, {"snat value", e.snatVal, c.snatVal}} {
				if !bytes.Equal(f.got, f.want) {
					t.Errorf("%s = % x; want % x", f.name, f.got, f.want)
				}
			}
			dnat, snat := e.fam.maps(&nftables.Table{Name: "t"})
			if uint32(len(e.dnatKey)) != dnat.KeyType.Bytes || uint32(len(e.dnatVal)) != dnat.DataType.Bytes ||
				uint32(len(e.snatKey)) != snat.KeyType.Bytes || uint32(len(e.snatVal)) != snat.DataType.Bytes {
				t.Errorf("element sizes %d:%d, %d:%d do not fit the maps", len(e.dnatKey), len(e.dnatVal), len(e.snatKey), len(e.snatVal))
			}
		})
	}
}

// errAny: any error will do.
var errAny = errors.New("any error")

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"ftpguard_data": true, "a": true, "ftpguard-test-12-3": true, "x.y": true,
		"": false, "1abc": false, "a b": false, "a;b": false, "table\"": false,
		"a2345678901234567890123456789012345678901234567890123456789012345": false, // 65 characters
	} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v; want %v", name, got, want)
		}
	}
}
