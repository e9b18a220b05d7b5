package filestore

// The encoding of keys, records and times in the file (format version 1;
// see the layout comment on the bucket names in filestore.go).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/internal/prefix"
)

// encodePrefix returns the key of the normalised prefix p.
func encodePrefix(p netip.Prefix) []byte {
	a := p.Addr()
	if a.Is4() {
		a4 := a.As4()
		return append([]byte{4, byte(p.Bits())}, a4[:]...)
	}
	a16 := a.As16()
	return append([]byte{6, byte(p.Bits())}, a16[:]...)
}

// decodePrefix decodes a key made by encodePrefix, which must be canonical.
func decodePrefix(k []byte) (netip.Prefix, error) {
	var a netip.Addr
	switch {
	case len(k) == 6 && k[0] == 4:
		a = netip.AddrFrom4([4]byte(k[2:]))
	case len(k) == 18 && k[0] == 6:
		a = netip.AddrFrom16([16]byte(k[2:]))
	default:
		return netip.Prefix{}, errors.New("not a prefix key")
	}
	p := netip.PrefixFrom(a, int(k[1]))
	if np, err := prefix.Norm(p); err != nil || np != p {
		return netip.Prefix{}, fmt.Errorf("prefix %v is not canonical", p)
	}
	return p, nil
}

// encodeBan returns the record of b (its key is not in it).
func encodeBan(b limiter.Ban) []byte {
	v := make([]byte, 0, 1+3*8+2*binary.MaxVarintLen64+len(b.Reason))
	v = append(v, recVersion)
	v = binary.BigEndian.AppendUint64(v, uint64(nanos(b.Until)))
	v = binary.BigEndian.AppendUint64(v, uint64(nanos(b.Since)))
	v = binary.BigEndian.AppendUint64(v, uint64(nanos(b.Forget)))
	v = binary.AppendVarint(v, int64(b.Count))
	v = binary.AppendUvarint(v, uint64(len(b.Reason)))
	return append(v, b.Reason...)
}

// decodeBan decodes the record v of the ban of p.
func decodeBan(p netip.Prefix, v []byte) (limiter.Ban, error) {
	if len(v) == 0 {
		return limiter.Ban{}, errors.New("empty record")
	}
	if v[0] != recVersion {
		return limiter.Ban{}, fmt.Errorf("record version %d unknown", v[0])
	}
	if len(v) < 1+3*8 {
		return limiter.Ban{}, errors.New("short record")
	}
	b := limiter.Ban{Key: p}
	b.Until = fromNanos(int64(binary.BigEndian.Uint64(v[1:])))
	b.Since = fromNanos(int64(binary.BigEndian.Uint64(v[9:])))
	b.Forget = fromNanos(int64(binary.BigEndian.Uint64(v[17:])))
	v = v[25:]
	count, n := binary.Varint(v)
	if n <= 0 || int64(int(count)) != count {
		return limiter.Ban{}, errors.New("bad count")
	}
	b.Count, v = int(count), v[n:]
	size, n := binary.Uvarint(v)
	if n <= 0 || size != uint64(len(v)-n) {
		return limiter.Ban{}, errors.New("bad reason length")
	}
	b.Reason = string(v[n:])
	return b, nil
}

// indexKey returns the forget index key of the record with key k.
func indexKey(forget time.Time, k []byte) []byte {
	ik := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(k)), indexTime(forget))
	return append(ik, k...)
}

// indexTime maps t to a uint64 that sorts as t does.
func indexTime(t time.Time) uint64 { return uint64(nanos(t)) ^ 1<<63 }

var (
	minNanoTime = time.Unix(0, math.MinInt64+1)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

// nanos returns t as UnixNano, zeroNano for the zero time, and saturates
// times outside the range of UnixNano (years 1678 to 2262).
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return zeroNano
	case t.Before(minNanoTime):
		return math.MinInt64 + 1
	case t.After(maxNanoTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// fromNanos is the inverse of nanos, in UTC.
func fromNanos(n int64) time.Time {
	if n == zeroNano {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// forgetAt is when the store may drop b: its Forget time, or Until for a
// ban that has none.
func forgetAt(b limiter.Ban) time.Time {
	if b.Forget.IsZero() {
		return b.Until
	}
	return b.Forget
}

// compareBans orders bans by Until, then by key, as the limiter's stores
// return them.
func compareBans(a, b limiter.Ban) int {
	if c := a.Until.Compare(b.Until); c != 0 {
		return c
	}
	if c := a.Key.Addr().Compare(b.Key.Addr()); c != 0 {
		return c
	}
	return a.Key.Bits() - b.Key.Bits()
}
