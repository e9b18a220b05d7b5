package nftnat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Byte counts. The kernel carries a mapped connection, so ftpguard never
// sees its bytes; the table counts them instead, as TCP payload (the bytes
// the client and the daemon wrote, no IP or TCP header), the way the relay
// counts what it copies.
//
// nftables counters count whole packets, headers included, and a rule can
// do no arithmetic to take the headers off. TCP sequence numbers count
// payload exactly: a way's payload is the sequence number after its last
// byte less the one after its SYN. So the table records, for each
// connection a mapping let through, the sequence numbers of its SYN, FIN
// and RST packets (flags SYN, FIN, RST: a few packets a connection), in
// the maps seq4/seq6:
//
//	map seq4 { type ipv4_addr . ipv4_addr . inet_service . inet_service . mark : mark . mark . mark . mark . mark; flags dynamic; }
//
// keyed by the client, the daemon's address and passive port, the client's
// port and a tag (the packet's TCP flags FIN|SYN|RST|ACK in its first byte,
// its way in the second: 1 from the client, 2 from the daemon), and holding
// the packet's sequence number, acknowledgement number, length (meta
// length, host byte order), the first byte of its IPv4 header (the
// header's length; IPv6: bytes 4 to 7, the payload length and the next
// header) and byte 12 of its TCP header (the TCP header's length). An
// element is added once (the first packet of a tag wins: a retransmitted
// FIN ends at the same sequence number). A way's end is its FIN's sequence
// number plus that packet's payload (length less both headers; the FIN may
// carry data), else the furthest of the other side's acknowledgement in
// its FIN or RST (what it had received) and the way's own RST's sequence
// number (what it had sent). Sequence numbers wrap at 4 GiB: the sets up4,
// down4, up6 and down6, one element per mapping with a counter, count each
// way's packets and bytes, headers included, and the wrap count is the one
// that puts the payload nearest to those bytes less typical headers (and
// below them less the smallest). Without an end (the connection still
// open, or a record missed) the count is an estimate from the counters,
// each packet's headers taken at their largest, and says so (Counts.Exact).
//
// The rules are in filter chains count_input, count_output and
// count_forward (priority filter + 10, after Cut's): the hooks a mapped
// connection's packets pass with their DNAT done and their SNAT not yet (or
// undone), so that both ways carry the client, the daemon's address and
// its passive port, as in the cut sets. A packet on loopback passes output
// and then input: input counts only what did not come over loopback, so
// that every packet is counted once. The chains see every packet of the
// host: a packet of a connection without DNAT is let go after one test of
// its conntrack entry (notNATExprs), one of a connection DNATed otherwise
// (a container's port) after a hash lookup a way.

// Names of the counting objects in the table.
const (
	SetUp4           = "up4"
	SetDown4         = "down4"
	SetUp6           = "up6"
	SetDown6         = "down6"
	MapSeq4          = "seq4"
	MapSeq6          = "seq6"
	ChainCountInput  = "count_input"
	ChainCountOutput = "count_output"
	ChainCountFwd    = "count_forward"
)

// ErrNoCounting is returned by Release of a Table made without the
// counting objects (a kernel that refused them: see Open).
var ErrNoCounting = errors.New("nftnat: this table does not count bytes")

// TCP flags (byte 13 of the TCP header).
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpACK = 0x10
)

// The ways of a connection, as tagged in the seq maps.
const (
	wayUp   = 1 // from the client
	wayDown = 2 // from the daemon
)

// seqSize bounds each seq map: a mapped connection has a few elements (its
// SYN, SYN-ACK, FINs and RSTs) until Release removes them.
const seqSize = 1 << 18

// Registers of the counting rules, by 4-byte word (NFT_REG32_00 + n).
func word(n uint32) uint32 { return unix.NFT_REG32_00 + n }

// scratch is the word of the rule's test of the TCP flags, before the
// value is loaded (IPv6's last word).
var scratch = word(15)

// counting is what a family's counting rules and objects need.
type counting struct {
	up, down, seq      string
	cportReg, tagReg   uint32 // the key's client port and tag
	dataReg            uint32 // the value's first word
	hdrMin, hdrTypical uint64 // IP + TCP header bytes of a packet: the least, the usual (timestamps)
	hdrMax             uint64
}

var (
	count4 = counting{up: SetUp4, down: SetDown4, seq: MapSeq4, cportReg: word(3), tagReg: word(4), dataReg: word(5),
		hdrMin: 40, hdrTypical: 52, hdrMax: 120}
	count6 = counting{up: SetUp6, down: SetDown6, seq: MapSeq6, cportReg: word(9), tagReg: word(10), dataReg: word(11),
		hdrMin: 60, hdrTypical: 72, hdrMax: 108}
)

func (f family) counting() counting {
	if f.nfproto == unix.NFPROTO_IPV4 {
		return count4
	}
	return count6
}

// countSets returns the family's counter sets in table t:
//
//	set up4 { type ipv4_addr . ipv4_addr . inet_service; counter; }
//
// keyed like the snat map and the cut sets (the client, the daemon's address
// and passive port): up counts the packets from the client, down those from
// the daemon, headers included.
func (f family) countSets(t *nftables.Table) (up, down *nftables.Set) {
	c := f.counting()
	key := nftables.MustConcatSetType(f.addrType, f.addrType, nftables.TypeInetService)
	up = &nftables.Set{Table: t, Name: c.up, KeyType: key, Counter: true}
	down = &nftables.Set{Table: t, Name: c.down, KeyType: key, Counter: true}
	return up, down
}

// seqMap returns the family's map of TCP records in table t (see above).
func (f family) seqMap(t *nftables.Table) *nftables.Set {
	c := f.counting()
	key := nftables.MustConcatSetType(f.addrType, f.addrType, nftables.TypeInetService, nftables.TypeInetService, nftables.TypeMark)
	val := nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeMark, nftables.TypeMark, nftables.TypeMark, nftables.TypeMark)
	return &nftables.Set{Table: t, Name: c.seq, IsMap: true, Dynamic: true, Size: seqSize, KeyType: key, DataType: val}
}

// countExprs is the rule that counts one way of the family's mapped
// connections at one hook (input: a packet that came over loopback was
// counted at output). For the client's way (down false), in nft's words:
//
//	meta nfproto ipv4 meta l4proto tcp [meta iiftype != loopback]
//	  ip saddr . ip daddr . tcp dport @up4
//	  tcp flags & (fin|syn|rst) != 0
//	  add @seq4 { ip saddr . ip daddr . tcp dport . tcp sport . (tcp flags & (fin|syn|rst|ack) | way) :
//	              tcp sequence . tcp ackseq . meta length . ip byte 0 . tcp byte 12 }
//
// The lookup counts every packet in the element's counter; the packets that
// open or close the connection are recorded. The daemon's way reads the
// addresses and ports the other way round (ip daddr . ip saddr . tcp
// sport, the client's port in tcp dport) into the same keys. IPv6 records
// bytes 4 to 7 of its header (payload length, next header) for the header's
// length: a TCP segment larger than 64 KiB (BIG TCP) carries a hop-by-hop
// header. Nothing here tests conntrack's state: such a segment was found
// without its conntrack entry at this hook (Linux 6.18), and a `ct status
// dnat` here missed the FINs that closed uploads over ::1 (notNATExprs
// lets only packets with an entry go).
func (f family) countExprs(down, input bool, acct, seq *nftables.Set) []expr.Any {
	c := f.counting()
	first, second, port, cport, way := f.saddrOff, f.saddrOff+f.addrLen, uint32(2), uint32(0), byte(wayUp)
	if down {
		first, second, port, cport, way = second, first, 0, 2, wayDown
	}
	native16 := binaryutil.NativeEndian.PutUint16
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
	}
	if input {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native16(unix.ARPHRD_LOOPBACK)})
	}
	e = append(e,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: first, Len: f.addrLen},
		&expr.Payload{DestRegister: f.daddrReg, Base: expr.PayloadBaseNetworkHeader, Offset: second, Len: f.addrLen},
		&expr.Payload{DestRegister: f.dportReg, Base: expr.PayloadBaseTransportHeader, Offset: port, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: acct.Name, SetID: acct.ID},
		&expr.Payload{DestRegister: c.tagReg, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: c.tagReg, DestRegister: scratch, Len: 1, Mask: []byte{tcpFIN | tcpSYN | tcpRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: []byte{0}},
	)
	e = append(e,
		&expr.Bitwise{SourceRegister: c.tagReg, DestRegister: c.tagReg, Len: 4,
			Mask: []byte{tcpFIN | tcpSYN | tcpRST | tcpACK, 0, 0, 0}, Xor: []byte{0, way, 0, 0}},
		&expr.Payload{DestRegister: c.cportReg, Base: expr.PayloadBaseTransportHeader, Offset: cport, Len: 2},
		&expr.Payload{DestRegister: c.dataReg, Base: expr.PayloadBaseTransportHeader, Offset: 4, Len: 4},
		&expr.Payload{DestRegister: c.dataReg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 4},
		&expr.Meta{Key: expr.MetaKeyLEN, Register: c.dataReg + 2},
	)
	ip := &expr.Payload{DestRegister: c.dataReg + 3, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 1}
	if f.nfproto == unix.NFPROTO_IPV6 {
		ip.Offset, ip.Len = 4, 4 // payload length, next header, hop limit
	}
	return append(e, ip,
		&expr.Payload{DestRegister: c.dataReg + 4, Base: expr.PayloadBaseTransportHeader, Offset: 12, Len: 1},
		&expr.Dynset{SrcRegKey: reg1, SrcRegData: c.dataReg, SetName: seq.Name, SetID: seq.ID, Operation: unix.NFT_DYNSET_OP_ADD},
	)
}

// ipsDstNAT is conntrack's status bit of a connection whose destination
// is translated (IPS_DST_NAT, linux/netfilter/nf_conntrack_common.h).
const ipsDstNAT = 1 << 5

// notNATExprs is the counting chains' first rule, which lets a packet of a
// connection without DNAT go at once (the host's other traffic), before the
// lookups:
//
//	ct status & dnat == 0 accept
//
// A packet without a conntrack entry breaks the rule's ct expression (the
// rule does not match) and goes on to the lookups: a TCP segment larger
// than 64 KiB (BIG TCP) was found without one at this hook (Linux 6.18),
// its connection DNATed all the same.
func notNATExprs() []expr.Any {
	native32 := binaryutil.NativeEndian.PutUint32
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(ipsDstNAT), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// countChains: the filter hooks a mapped connection's packets pass with
// their DNAT done and their SNAT not yet, as Cut's (cutChains).
var countChains = []struct {
	name  string
	hook  *nftables.ChainHook
	input bool
}{
	{ChainCountInput, nftables.ChainHookInput, true},
	{ChainCountOutput, nftables.ChainHookOutput, false},
	{ChainCountFwd, nftables.ChainHookForward, false},
}

// addCounting adds the counting sets, maps, chains and rules to c's batch.
func addCounting(c *nftables.Conn, tbl *nftables.Table) error {
	type objs struct{ up, down, seq *nftables.Set }
	var fams []objs
	for _, f := range []family{fam4, fam6} {
		up, down := f.countSets(tbl)
		seq := f.seqMap(tbl)
		for _, s := range []*nftables.Set{up, down, seq} {
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("nftnat: set %s: %w", s.Name, err)
			}
		}
		fams = append(fams, objs{up, down, seq})
	}
	policy := nftables.ChainPolicyAccept
	for _, cc := range countChains {
		ch := c.AddChain(&nftables.Chain{Name: cc.name, Table: tbl, Type: nftables.ChainTypeFilter,
			Hooknum: cc.hook, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityFilter + 10), Policy: &policy})
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: notNATExprs()})
		for i, f := range []family{fam4, fam6} {
			c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: f.countExprs(false, cc.input, fams[i].up, fams[i].seq)})
			c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: f.countExprs(true, cc.input, fams[i].down, fams[i].seq)})
		}
	}
	return nil
}

// Counts is what the connections a mapping let through carried: TCP
// payload, the bytes the client and the daemon wrote, without headers.
type Counts struct {
	Up   uint64 // client → daemon
	Down uint64 // daemon → client
	// Exact: both ways counted from TCP sequence numbers, from the
	// connection's SYN to its end. False: a way had not ended (or a record
	// was missed) and its count is an estimate from the packet counters,
	// each packet's headers taken at their largest (with retransmissions
	// it may be over).
	Exact bool
	// Conns is how many connections went through the mapping (SYNs of
	// the client's seen).
	Conns int
	// Packets counted each way, headers included (the counters).
	UpPackets, DownPackets uint64
	UpBytes, DownBytes     uint64 // headers included
}

// Release stops counting the connections m let through (added by Map,
// left by Unmap) and returns what they carried. With wait > 0 it first
// waits, at most that long or until stop is closed, for the daemon's way
// of one of them to end (the daemon's FIN or RST, or the client's
// acknowledgement in its own), or returns at once if none was made: a
// daemon's 226 may come before its last bytes have left (vsftpd closes the
// data connection and replies while the socket still sends). Every Map must
// be followed by a Release, or the elements stay until the table is
// re-created.
func (t *Table) Release(m Mapping, wait time.Duration, stop <-chan struct{}) (Counts, error) {
	e, err := m.encode()
	if err != nil {
		return Counts{}, err
	}
	if !t.counting {
		return Counts{}, ErrNoCounting
	}
	prefix := e.snatKey // the client, the daemon's address and port
	if wait > 0 {
		deadline := time.Now().Add(wait)
		pause := time.Millisecond
		for {
			recs, err := t.records(e.fam, prefix)
			if err != nil {
				return Counts{}, err
			}
			if len(recs) == 0 || recs.downEnded() || !time.Now().Before(deadline) {
				break
			}
			select {
			case <-stop:
			case <-time.After(pause):
				pause = min(2*pause, 50*time.Millisecond)
				continue
			}
			break
		}
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return Counts{}, ErrClosed
	}
	c, err := conn()
	if err != nil {
		return Counts{}, err
	}
	tbl := t.table()
	up, down := e.fam.countSets(tbl)
	var ctr [2]*expr.Counter
	for i, s := range []*nftables.Set{up, down} {
		els, err := c.GetSetElements(s)
		if err != nil {
			return Counts{}, fmt.Errorf("nftnat: counters of %v: %w", m, err)
		}
		for _, el := range els {
			if string(el.Key) == string(prefix) {
				ctr[i] = el.Counter
			}
		}
	}
	// No packet is recorded once these are gone: the records read next
	// are all there will be.
	if err := delPresent(elemRef{up, prefix}, elemRef{down, prefix}); err != nil {
		return Counts{}, fmt.Errorf("nftnat: release %v: %w", m, err)
	}
	recs, err := t.recordsLocked(e.fam, prefix)
	if err != nil {
		return Counts{}, err
	}
	if len(recs) > 0 {
		seq := e.fam.seqMap(tbl)
		refs := make([]elemRef, 0, len(recs))
		for _, r := range recs {
			refs = append(refs, elemRef{seq, r.key})
		}
		if err := delPresent(refs...); err != nil {
			return Counts{}, fmt.Errorf("nftnat: release %v: %w", m, err)
		}
	}
	return recs.counts(e.fam.counting(), ctr), nil
}

// record is one element of a seq map: a SYN, FIN or RST of one way of a
// connection.
type record struct {
	key   []byte
	cport uint16
	way   byte
	flags byte // FIN|SYN|RST|ACK
	seq   uint32
	ack   uint32
	data  uint32 // payload bytes in the packet
	// noData: the packet's payload is not known (IPv6 extension
	// headers): a FIN's end cannot be told.
	noData bool
}

type records []record

// records reads the seq map's elements under prefix (the client, the
// daemon's address and port).
func (t *Table) records(f family, prefix []byte) (records, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return nil, ErrClosed
	}
	return t.recordsLocked(f, prefix)
}

func (t *Table) recordsLocked(f family, prefix []byte) (records, error) {
	c, err := conn()
	if err != nil {
		return nil, err
	}
	els, err := c.GetSetElements(f.seqMap(t.table()))
	if err != nil {
		return nil, fmt.Errorf("nftnat: records of %s: %w", f.counting().seq, err)
	}
	var out records
	for _, el := range els {
		if len(el.Key) != len(prefix)+8 || string(el.Key[:len(prefix)]) != string(prefix) {
			continue
		}
		if r, ok := decodeRecord(f, el.Key, el.Val, len(prefix)); ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// decodeRecord reads an element of f's seq map whose key starts with a
// prefix of n bytes.
func decodeRecord(f family, key, val []byte, n int) (record, bool) {
	if len(val) != 20 {
		return record{}, false
	}
	r := record{key: key, cport: binary.BigEndian.Uint16(key[n:]), flags: key[n+4], way: key[n+5],
		seq: binary.BigEndian.Uint32(val[0:]), ack: binary.BigEndian.Uint32(val[4:])}
	length := uint64(binaryutil.NativeEndian.Uint32(val[8:]))
	var ip uint64
	switch payloadLen, next := binary.BigEndian.Uint16(val[12:]), val[14]; {
	case f.nfproto == unix.NFPROTO_IPV4:
		ip = uint64(val[12]&0x0f) * 4
	case next == unix.IPPROTO_TCP:
		ip = 40
	case next == unix.IPPROTO_HOPOPTS && payloadLen == 0:
		// A jumbogram (BIG TCP, more than 64 KiB): a hop-by-hop header
		// of 8 bytes, the jumbo payload option (RFC 2675), before TCP.
		ip = 48
	default:
		// Extension headers of unknown length: the packet's payload
		// cannot be told, nor so where a FIN ends.
		r.noData = true
		return r, true
	}
	if hdr := ip + uint64(val[16]>>4)*4; length >= hdr {
		r.data = uint32(length - hdr)
	}
	return r, true
}

// downEnded reports whether the daemon's way of one of the connections
// has ended: its FIN or RST, or the client's FIN or RST acknowledging it.
func (rs records) downEnded() bool {
	for _, r := range rs {
		if r.flags&(tcpFIN|tcpRST) != 0 && (r.way == wayDown || r.flags&tcpACK != 0) {
			return true
		}
	}
	return false
}

// payload returns the payload one way of one connection carried, modulo
// 2^32: the sequence number after its last byte less the one after its
// SYN. ok false: its start or end was not recorded.
func (rs records) payload(cport uint16, way byte) (n uint32, ok bool) {
	var isn uint32
	var haveISN bool
	other := byte(wayUp + wayDown - way)
	for _, r := range rs {
		if r.cport != cport {
			continue
		}
		switch {
		case r.way == way && r.flags&tcpSYN != 0:
			isn, haveISN = r.seq, true
		case !haveISN && r.way == other && r.flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
			isn, haveISN = r.ack-1, true // the SYN-ACK acknowledges the client's SYN
		}
	}
	if !haveISN {
		return 0, false
	}
	// The end: the way's FIN (all it sent: exact), else the furthest of
	// the other side's acknowledgement in its FIN or RST (what it had
	// received then) and the way's RST (what it had sent). The furthest
	// of each kind: a retransmission may be recorded under another tag.
	rel := func(end uint32) uint32 { return end - isn - 1 }
	var best [2]uint32
	var have [2]bool
	take := func(kind int, end uint32) {
		if !have[kind] || rel(end) > rel(best[kind]) {
			best[kind], have[kind] = end, true
		}
	}
	for _, r := range rs {
		if r.cport != cport || r.flags&tcpSYN != 0 {
			continue
		}
		switch {
		case r.way == way && r.flags&tcpFIN != 0 && !r.noData:
			take(0, r.seq+r.data)
		case r.way == other && r.flags&(tcpFIN|tcpRST) != 0 && r.flags&tcpACK != 0:
			take(1, r.ack)
		case r.way == way && r.flags&tcpRST != 0:
			take(1, r.seq)
		}
	}
	for kind := range best {
		if have[kind] {
			return rel(best[kind]), true
		}
	}
	return 0, false
}

// counts sums the payload of each way over the connections recorded,
// taking the sequence numbers' wraps from the counters ctr (up, down; nil
// when missing).
func (rs records) counts(c counting, ctr [2]*expr.Counter) Counts {
	out := Counts{Exact: true}
	cports := map[uint16]bool{}
	for _, r := range rs {
		cports[r.cport] = true
		if r.way == wayUp && r.flags&(tcpSYN|tcpACK) == tcpSYN {
			out.Conns++
		}
	}
	for i, way := range []byte{wayUp, wayDown} {
		var sum uint64
		exact := true
		for cport := range cports {
			n, ok := rs.payload(cport, way)
			sum += uint64(n)
			exact = exact && ok
		}
		var pkts, bytes uint64
		if ctr[i] != nil {
			pkts, bytes = ctr[i].Packets, ctr[i].Bytes
		}
		n := sum
		if exact {
			n = unwrap(sum, pkts, bytes, c)
		} else {
			out.Exact = false
			if bytes > pkts*c.hdrMax {
				n = max(n, bytes-pkts*c.hdrMax)
			}
		}
		if i == 0 {
			out.Up, out.UpPackets, out.UpBytes = n, pkts, bytes
		} else {
			out.Down, out.DownPackets, out.DownBytes = n, pkts, bytes
		}
	}
	return out
}

// unwrap returns the payload that is sum modulo 2^32 (sum: the sequence
// numbers' count, each connection's below 2^32) and nearest to what the
// counters say (bytes less pkts typical headers), never above their bytes
// less the smallest headers when one fits: TCP sequence numbers wrap every
// 4 GiB, the counters do not. Without counters, sum.
func unwrap(sum, pkts, bytes uint64, c counting) uint64 {
	if pkts == 0 || bytes <= pkts*c.hdrMin {
		return sum
	}
	est := int64(bytes - pkts*min(c.hdrTypical, bytes/pkts))
	hi := bytes - pkts*c.hdrMin
	best := sum
	dist := func(v uint64) uint64 {
		d := int64(v) - est
		if d < 0 {
			d = -d
		}
		return uint64(d)
	}
	for v := sum; v <= hi || v == sum; v += 1 << 32 {
		if v <= hi && (best > hi || dist(v) < dist(best)) {
			best = v
		}
	}
	return best
}
