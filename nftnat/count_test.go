package nftnat

import (
	"encoding/binary"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// rec is a record of a connection (client port cport) as the counting
// rule writes it: way, flags, sequence and acknowledgement numbers and
// payload bytes in the packet (IPv4, TCP header with timestamps).
func rec(cport uint16, way, flags byte, seq, ack uint32, data uint32) record {
	key := make([]byte, 12+8)
	binary.BigEndian.PutUint16(key[12:], cport)
	key[16], key[17] = flags, way
	val := make([]byte, 20)
	binary.BigEndian.PutUint32(val[0:], seq)
	binary.BigEndian.PutUint32(val[4:], ack)
	copy(val[8:], binaryutil.NativeEndian.PutUint32(20+32+data)) // meta length
	val[12] = 0x45                                               // IPv4, 20-byte header
	val[16] = 8 << 4                                             // 32-byte TCP header
	r, ok := decodeRecord(fam4, key, val, 12)
	if !ok {
		panic("decodeRecord")
	}
	return r
}

// TestCounts: the payload of each way from the records of the counting
// rule: a FIN that carries data, a way ended only by the other side's
// acknowledgement or by a reset, sequence numbers that wrap (within a
// connection, and over 4 GiB: the counters tell how often), two
// connections through one mapping, a way not ended (an estimate).
func TestCounts(t *testing.T) {
	const (
		syn    = tcpSYN
		synack = tcpSYN | tcpACK
		finack = tcpFIN | tcpACK
		rst    = tcpRST
		rstack = tcpRST | tcpACK
	)
	var isnC, isnD uint32 = 1000, 0xfffffff0 // the daemon's wraps after 15 bytes
	handshake := []record{rec(40000, wayUp, syn, isnC, 0, 0), rec(40000, wayDown, synack, isnD, isnC+1, 0)}
	with := func(rs ...record) records { return append(append(records{}, handshake...), rs...) }
	ctr := func(pkts, bytes uint64) *expr.Counter { return &expr.Counter{Packets: pkts, Bytes: bytes} }
	for _, c := range []struct {
		name     string
		recs     records
		up, down *expr.Counter
		want     Counts
	}{
		{"download, the FIN with the last 100 bytes",
			with(rec(40000, wayDown, finack, isnD+1+4900, isnC+1, 100), rec(40000, wayUp, finack, isnC+1, isnD+5002, 0)),
			nil, nil, Counts{Up: 0, Down: 5000, Exact: true, Conns: 1}},
		{"upload",
			with(rec(40000, wayUp, finack, isnC+1+777, isnD+1, 0), rec(40000, wayDown, finack, isnD+1, isnC+779, 0)),
			nil, nil, Counts{Up: 777, Down: 0, Exact: true, Conns: 1}},
		{"the daemon's way ended by the client's acknowledgement",
			with(rec(40000, wayUp, rstack, isnC+1, isnD+1+123456, 0)),
			nil, nil, Counts{Up: 0, Down: 123456, Exact: true, Conns: 1}},
		{"the daemon's way ended by its reset",
			with(rec(40000, wayDown, rst, isnD+1+999, 0, 0), rec(40000, wayUp, finack, isnC+1, isnD+1, 0)),
			nil, nil, Counts{Up: 0, Down: 999, Exact: true, Conns: 1}},
		{"over 4 GiB",
			with(rec(40000, wayDown, finack, isnD+1+5, isnC+1, 0), rec(40000, wayUp, finack, isnC+1, isnD+7, 0)),
			ctr(10, 600), ctr(70000, 1<<32+5+70000*52), Counts{Up: 0, Down: 1<<32 + 5, Exact: true, Conns: 1,
				UpPackets: 10, UpBytes: 600, DownPackets: 70000, DownBytes: 1<<32 + 5 + 70000*52}},
		{"two connections",
			with(rec(40000, wayDown, finack, isnD+1+10, isnC+1, 0), rec(40000, wayUp, finack, isnC+1, isnD+12, 0),
				rec(40001, wayUp, syn, 5, 0, 0), rec(40001, wayDown, synack, 50, 6, 0),
				rec(40001, wayDown, finack, 51+20, 6+3, 0), rec(40001, wayUp, finack, 6+3, 51+21, 0)),
			nil, nil, Counts{Up: 3, Down: 30, Exact: true, Conns: 2}},
		{"not ended: the counters, headers at their largest",
			handshake, ctr(3, 200), ctr(10, 10*1500),
			Counts{Up: 0, Down: 10 * (1500 - 120), Exact: false, Conns: 1, UpPackets: 3, UpBytes: 200, DownPackets: 10, DownBytes: 15000}},
		{"no connection", nil, nil, nil, Counts{Exact: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := c.recs.counts(count4, [2]*expr.Counter{c.up, c.down})
			if got != c.want {
				t.Errorf("counts %+v\nwant   %+v", got, c.want)
			}
		})
	}
}

// TestDownEnded: Release waits for the daemon's way to end: its FIN or
// RST, or the client's FIN or RST acknowledging it; not for the client's
// way, nor a handshake.
func TestDownEnded(t *testing.T) {
	for _, c := range []struct {
		name string
		recs records
		want bool
	}{
		{"handshake", records{rec(1, wayUp, tcpSYN, 1, 0, 0), rec(1, wayDown, tcpSYN|tcpACK, 9, 2, 0)}, false},
		{"the daemon's FIN", records{rec(1, wayDown, tcpFIN|tcpACK, 10, 2, 0)}, true},
		{"the daemon's RST", records{rec(1, wayDown, tcpRST, 10, 0, 0)}, true},
		{"the client's FIN", records{rec(1, wayUp, tcpFIN|tcpACK, 2, 10, 0)}, true},
		{"the client's RST without ACK", records{rec(1, wayUp, tcpRST, 2, 0, 0)}, false},
	} {
		if got := c.recs.downEnded(); got != c.want {
			t.Errorf("%s: %v; want %v", c.name, got, c.want)
		}
	}
}

// TestUnwrap: the payload is the sequence numbers' count plus the wraps
// that put it nearest to the counters' bytes less typical headers, never
// above their bytes less the smallest headers.
func TestUnwrap(t *testing.T) {
	for _, c := range []struct {
		sum, pkts, bytes, want uint64
	}{
		{5, 0, 0, 5},  // no counters
		{5, 1, 57, 5}, // one packet
		{5, 100000, 2<<32 + 5 + 100000*52, 2<<32 + 5},               // two wraps
		{1 << 31, 100, 1<<31 + 100*52, 1 << 31},                     // none
		{1 << 20, 100, 1<<32 + 1<<20 + 100*52 + 3e6, 1<<32 + 1<<20}, // retransmissions counted: still the nearest
		{1 << 20, 100, 1<<32 + 100*52, 1 << 20},                     // the wrap would be above the bytes less the smallest headers
		{5000, 2, 200, 5000},                                        // the counters missed packets: no wrap
	} {
		if got := unwrap(c.sum, c.pkts, c.bytes, count4); got != c.want {
			t.Errorf("unwrap(%d, %d, %d) = %d; want %d", c.sum, c.pkts, c.bytes, got, c.want)
		}
	}
}

// TestCountRegisters: the counting rule's key and value fit the register
// file (16 words), in the layout the seq map's types describe: the key
// from word 0 (client, daemon, port, client port, tag), the value right
// after it, and the scratch word apart from both.
func TestCountRegisters(t *testing.T) {
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: "t"}
	for _, f := range []family{fam4, fam6} {
		c := f.counting()
		m := f.seqMap(tbl)
		keyWords, valWords := m.KeyType.Bytes/4, m.DataType.Bytes/4
		w := func(reg uint32) uint32 { return reg - word(0) }
		if got := w(c.cportReg); got != (2*f.addrLen+4)/4 {
			t.Errorf("%s: client port in word %d", m.Name, got)
		}
		if w(c.tagReg) != w(c.cportReg)+1 || w(c.tagReg)+1 != keyWords {
			t.Errorf("%s: tag in word %d, key of %d words", m.Name, w(c.tagReg), keyWords)
		}
		if w(c.dataReg) != keyWords || w(c.dataReg)+valWords > 16 {
			t.Errorf("%s: value in words %d-%d", m.Name, w(c.dataReg), w(c.dataReg)+valWords-1)
		}
		// The scratch word is done with before the value is loaded.
		up, _ := f.countSets(tbl)
		loaded := false
		for _, e := range f.countExprs(false, true, up, m) {
			switch e := e.(type) {
			case *expr.Payload:
				loaded = loaded || e.DestRegister >= c.dataReg
			case *expr.Meta:
				loaded = loaded || e.Register >= c.dataReg
			case *expr.Bitwise:
				if loaded && (e.DestRegister == scratch || e.SourceRegister == scratch) {
					t.Errorf("%s: the scratch word used after the value was loaded", m.Name)
				}
			case *expr.Cmp:
				if loaded && e.Register == scratch {
					t.Errorf("%s: the scratch word used after the value was loaded", m.Name)
				}
			}
		}
	}
}

// TestDecodeRecord6: an IPv6 FIN's payload is its length less 40 bytes and
// the TCP header; a jumbogram's (BIG TCP: payload length 0, a hop-by-hop
// header) less 8 more; behind other extension headers it is not known.
func TestDecodeRecord6(t *testing.T) {
	key := make([]byte, 36+8)
	for _, c := range []struct {
		name       string
		length     uint32
		payloadLen uint16
		next       byte
		data       uint32
		noData     bool
	}{
		{"TCP", 40 + 32 + 1000, 32 + 1000, 6, 1000, false},
		{"jumbogram", 48 + 32 + 70000, 0, 0, 70000, false},
		{"routing header", 40 + 24 + 32 + 10, 24 + 32 + 10, 43, 0, true},
	} {
		val := make([]byte, 20)
		copy(val[8:], binaryutil.NativeEndian.PutUint32(c.length))
		binary.BigEndian.PutUint16(val[12:], c.payloadLen)
		val[14] = c.next
		val[16] = 8 << 4
		r, ok := decodeRecord(fam6, key, val, 36)
		if !ok || r.data != c.data || r.noData != c.noData {
			t.Errorf("%s: %+v, %v; want data %d, noData %v", c.name, r, ok, c.data, c.noData)
		}
	}
}
