package filestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/internal/prefix"
)

// FuzzDecodeRecord feeds any key and record, as a damaged file could hold
// them, to Store.decode (decodePrefix, then decodeBan). It must return an
// error wrapping ErrCorrupt, never panic, or:
//   - a key that decodes is canonical: encodePrefix gives back the same
//     bytes, and prefix.Norm leaves its prefix as it is;
//   - a record that decodes re-encodes (encodeBan) to the same bytes,
//     except where it writes Count or the Reason's length as an over-long
//     varint, which binary.Varint and Uvarint accept: then to the minimal
//     encoding of the same Ban. Either way the re-encoding decodes to a
//     Ban equal (==) to the first.
func FuzzDecodeRecord(f *testing.F) {
	t1 := time.Date(2025, 6, 1, 12, 0, 0, 123, time.UTC)
	for _, b := range []limiter.Ban{
		{Key: netip.MustParsePrefix("192.0.2.7/32"), Until: t1, Count: 1, Reason: "budget", Since: t1.Add(-time.Hour),
			Forget: t1.Add(24 * time.Hour)},
		{Key: netip.MustParsePrefix("2001:db8::/64"), Until: t1, Count: 7, Reason: "admin"},
		{Key: netip.MustParsePrefix("0.0.0.0/0"), Until: time.Unix(0, 1<<62), Count: -3},
	} {
		f.Add(encodePrefix(b.Key), encodeBan(b))
	}
	f.Add([]byte{4, 24, 192, 0, 2, 7}, []byte{recVersion})                                   // not masked; short record
	f.Add([]byte{6, 128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7}, []byte{2}) // mapped; version 2
	f.Add([]byte{4, 32, 192, 0, 2, 7}, append(encodeBan(limiter.Ban{Until: t1})[:25], 0x80, 0x00, 0x81, 0x00, 'x'))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		s := &Store{path: "fuzz.db"}
		b, err := s.decode(k, v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || b != (limiter.Ban{}) {
				t.Fatalf("decode(%x, %x) = %+v, %v", k, v, b, err)
			}
			return
		}
		p := b.Key
		if back := encodePrefix(p); !bytes.Equal(back, k) {
			t.Fatalf("key %x decodes to %v, which encodes as %x", k, p, back)
		}
		if n, err := prefix.Norm(p); err != nil || n != p {
			t.Fatalf("key %x decodes to %v: Norm gives %v, %v", k, p, n, err)
		}
		enc := encodeBan(b)
		if back, err := decodeBan(p, enc); err != nil || back != b {
			t.Fatalf("record %x decodes to %+v, whose encoding %x decodes to %+v, %v", v, b, enc, back, err)
		}
		if !bytes.Equal(enc, v) && minimalVarints(v) {
			t.Fatalf("record %x (minimal varints) decodes to %+v, which encodes as %x", v, b, enc)
		}
	})
}

// minimalVarints reports whether the record v (one that decodes) writes
// its Count and its Reason's length in as few bytes as they take.
func minimalVarints(v []byte) bool {
	v = v[1+3*8:]
	count, n := binary.Varint(v)
	if len(binary.AppendVarint(nil, count)) != n {
		return false
	}
	size, m := binary.Uvarint(v[n:])
	return len(binary.AppendUvarint(nil, size)) == m
}
