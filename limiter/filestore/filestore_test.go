package filestore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/internal/storetest"
)

// openTestStore opens (or creates) the store at path and closes it at the
// end of the test.
func openTestStore(t testing.TB, path string) *Store {
	t.Helper()
	f, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// t0 is the start of every test's times.
var t0 = storetest.T0

func tempStorePath(t testing.TB) string { return filepath.Join(t.TempDir(), "ftpguard.db") }

func mustSave(t testing.TB, f *Store, bans ...limiter.Ban) {
	t.Helper()
	for _, b := range bans {
		if err := f.SaveBan(b); err != nil {
			t.Fatal(err)
		}
	}
}

func mustLoad(t testing.TB, f *Store, now time.Time) []limiter.Ban {
	t.Helper()
	bans, err := f.LoadBans(now)
	if err != nil {
		t.Fatal(err)
	}
	return bans
}

// sameBan compares bans with time.Time.Equal (the store returns UTC times).
func sameBan(a, b limiter.Ban) bool {
	return a.Key == b.Key && a.Count == b.Count && a.Reason == b.Reason &&
		a.Until.Equal(b.Until) && a.Since.Equal(b.Since) && a.Forget.Equal(b.Forget)
}

func findBan(bans []limiter.Ban, key netip.Prefix) (limiter.Ban, bool) {
	for _, b := range bans {
		if b.Key == key {
			return b, true
		}
	}
	return limiter.Ban{}, false
}

// checkIndex verifies that every record has exactly its forget index entry
// and that every entry points to its record, and returns the counts.
func checkIndex(t testing.TB, f *Store) (records, entries int) {
	t.Helper()
	err := f.view(func(tx *bolt.Tx) error {
		bans, forget, err := f.buckets(tx)
		if err != nil {
			return err
		}
		want := map[string]bool{}
		if err := bans.ForEach(func(k, v []byte) error {
			b, err := f.decode(k, v)
			if err != nil {
				return err
			}
			want[string(indexKey(forgetAt(b), k))] = true
			records++
			return nil
		}); err != nil {
			return err
		}
		return forget.ForEach(func(ik, v []byte) error {
			if !want[string(ik)] || len(v) != 0 {
				return fmt.Errorf("index entry %x (value %x) matches no record", ik, v)
			}
			entries++
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if records != entries {
		t.Fatalf("%d records but %d index entries", records, entries)
	}
	return records, entries
}

func TestStoreRoundTrip(t *testing.T) {
	until := t0.Add(time.Hour)
	long := strings.Repeat("r", 1000)
	tests := []struct {
		name string
		ban  limiter.Ban
		key  string // the key it comes back with ("": ban.Key)
	}{
		{name: "v4/32", ban: limiter.Ban{Key: netip.MustParsePrefix("192.0.2.1/32"), Since: t0, Until: until, Forget: until.Add(168 * time.Hour), Count: 1, Reason: limiter.ReasonBudget}},
		{name: "v4/24 masked", ban: limiter.Ban{Key: netip.MustParsePrefix("198.51.100.77/24"), Since: t0, Until: until, Forget: until, Count: 3, Reason: limiter.ReasonAdmin}, key: "198.51.100.0/24"},
		{name: "v4/0", ban: limiter.Ban{Key: netip.MustParsePrefix("0.0.0.0/0"), Since: t0, Until: until, Count: 1, Reason: "everyone"}},
		{name: "v4-mapped", ban: limiter.Ban{Key: netip.MustParsePrefix("::ffff:203.0.113.9/128"), Since: t0, Until: until, Count: 2}, key: "203.0.113.9/32"},
		{name: "v6/64", ban: limiter.Ban{Key: netip.MustParsePrefix("2001:db8:1:2::/64"), Since: t0, Until: until, Forget: until.Add(time.Minute), Count: 7, Reason: limiter.ReasonBudget}},
		{name: "v6/128", ban: limiter.Ban{Key: netip.MustParsePrefix("2001:db8::1/128"), Since: t0, Until: until, Count: 1, Reason: limiter.ReasonBudget}},
		{name: "v6/32 wide", ban: limiter.Ban{Key: netip.MustParsePrefix("2001:db8:ffff::/32"), Since: t0, Until: until, Count: 1}, key: "2001:db8::/32"},
		{name: "v6/0", ban: limiter.Ban{Key: netip.MustParsePrefix("::/0"), Since: t0, Until: until, Count: 1}},
		{name: "long reason", ban: limiter.Ban{Key: netip.MustParsePrefix("192.0.2.2/32"), Since: t0, Until: until, Count: 1, Reason: long}},
		{name: "utf-8 reason", ban: limiter.Ban{Key: netip.MustParsePrefix("192.0.2.3/32"), Since: t0, Until: until, Count: 1, Reason: "brute force — ручной бан\n"}},
		{name: "nanoseconds, zero Since", ban: limiter.Ban{Key: netip.MustParsePrefix("192.0.2.4/32"), Until: until.Add(123456789), Forget: until.Add(987654321), Count: 1 << 40}},
		{name: "not UTC", ban: limiter.Ban{Key: netip.MustParsePrefix("192.0.2.5/32"), Since: t0.In(time.FixedZone("X", 3600)), Until: until.Local(), Count: 1}},
	}
	path := tempStorePath(t)
	f := openTestStore(t, path)
	check := func(t *testing.T, f *Store, i int) {
		t.Helper()
		tt := tests[i]
		want := tt.ban
		if tt.key != "" {
			want.Key = netip.MustParsePrefix(tt.key)
		}
		got, ok := findBan(mustLoad(t, f, time.Time{}), want.Key)
		if !ok || !sameBan(got, want) {
			t.Fatalf("LoadBans: got %+v (found %v), want %+v", got, ok, want)
		}
		if got.Until.Location() != time.UTC {
			t.Fatalf("Until in %v, want UTC", got.Until.Location())
		}
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustSave(t, f, tt.ban)
			check(t, f, i)
		})
	}
	if n, _ := checkIndex(t, f); n != len(tests) {
		t.Fatalf("%d records, want %d", n, len(tests))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f2 := openTestStore(t, path)
	for i := range tests {
		check(t, f2, i)
	}
	bans := mustLoad(t, f2, time.Time{})
	for i := 1; i < len(bans); i++ { // sorted by Until
		if bans[i].Until.Before(bans[i-1].Until) {
			t.Fatalf("LoadBans not sorted by Until: %v", bans)
		}
	}
}

func TestStoreTimes(t *testing.T) {
	f := openTestStore(t, tempStorePath(t))
	k := netip.MustParsePrefix("192.0.2.1/32")
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	mustSave(t, f, limiter.Ban{Key: k, Since: t0, Until: far, Count: 1})
	got := mustLoad(t, f, t0)
	if len(got) != 1 || !got[0].Until.Equal(maxNanoTime) || !got[0].Active(time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("LoadBans = %+v; want Until saturated to %v", got, maxNanoTime)
	}
	for _, tm := range []time.Time{{}, t0, minNanoTime, maxNanoTime, time.Unix(0, 0)} {
		if back := fromNanos(nanos(tm)); !back.Equal(tm) {
			t.Errorf("fromNanos(nanos(%v)) = %v", tm, back)
		}
	}
	times := []time.Time{{}, time.Unix(0, -1), time.Unix(0, 0), t0, t0.Add(1), maxNanoTime}
	for i := 1; i < len(times); i++ {
		if indexTime(times[i-1]) >= indexTime(times[i]) {
			t.Errorf("indexTime(%v) >= indexTime(%v)", times[i-1], times[i])
		}
	}
}

func TestStoreReplaceAndDelete(t *testing.T) {
	f := openTestStore(t, tempStorePath(t))
	k := netip.MustParsePrefix("2001:db8::/64")
	b1 := limiter.Ban{Key: k, Since: t0, Until: t0.Add(time.Hour), Forget: t0.Add(10 * time.Hour), Count: 1, Reason: limiter.ReasonBudget}
	b2 := limiter.Ban{Key: k, Since: t0.Add(2 * time.Hour), Until: t0.Add(4 * time.Hour), Forget: t0.Add(20 * time.Hour), Count: 2, Reason: limiter.ReasonBudget}
	other := limiter.Ban{Key: netip.MustParsePrefix("192.0.2.1/32"), Since: t0, Until: t0.Add(time.Hour), Forget: t0.Add(100 * time.Hour), Count: 1}
	mustSave(t, f, b1, other, b2)
	if n, _ := checkIndex(t, f); n != 2 {
		t.Fatalf("%d records after replace, want 2", n)
	}
	if got, _ := findBan(mustLoad(t, f, time.Time{}), k); !sameBan(got, b2) {
		t.Fatalf("after replace: %+v, want %+v", got, b2)
	}
	// Unmasked and IPv4-mapped spellings name the same key.
	if err := f.DeleteBan(netip.MustParsePrefix("2001:db8::1/64")); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteBan(netip.MustParsePrefix("::ffff:192.0.2.1/128")); err != nil {
		t.Fatal(err)
	}
	if n, _ := checkIndex(t, f); n != 0 {
		t.Fatalf("%d records after delete, want 0", n)
	}
	if err := f.DeleteBan(k); err != nil { // absent: fine
		t.Fatal(err)
	}
	if err := f.DeleteBan(netip.Prefix{}); !errors.Is(err, limiter.ErrInvalidPrefix) {
		t.Fatalf("DeleteBan(invalid) = %v", err)
	}
	if err := f.SaveBan(limiter.Ban{Until: t0}); !errors.Is(err, limiter.ErrInvalidPrefix) {
		t.Fatalf("SaveBan(invalid) = %v", err)
	}
	// Deleting then saving again starts over.
	mustSave(t, f, b1)
	if got := mustLoad(t, f, time.Time{}); len(got) != 1 || !sameBan(got[0], b1) {
		t.Fatalf("LoadBans = %+v", got)
	}
}

// expiring returns n bans, the i-th of which is forgotten at t0+i minutes.
func expiring(n int) []limiter.Ban {
	out := make([]limiter.Ban, n)
	for i := range out {
		forget := t0.Add(time.Duration(i+1) * time.Minute)
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		out[i] = limiter.Ban{Key: netip.PrefixFrom(a, 32), Since: t0, Until: forget.Add(-30 * time.Second), Forget: forget, Count: 1, Reason: limiter.ReasonBudget}
	}
	return out
}

func TestStorePrunes(t *testing.T) {
	const n = 1000
	f := openTestStore(t, tempStorePath(t))
	old := expiring(n)
	err := f.update(func(tx *bolt.Tx) error { // one transaction: fast
		bans, forget, _ := f.buckets(tx)
		for _, b := range old {
			k := encodePrefix(b.Key)
			if err := bans.Put(k, encodeBan(b)); err != nil {
				return err
			}
			if err := forget.Put(indexKey(forgetAt(b), k), []byte{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	newBan := func(i int, since time.Time) limiter.Ban {
		return limiter.Ban{Key: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, 0, byte(i)}), 32), Since: since, Until: since.Add(time.Hour), Forget: since.Add(100 * time.Hour), Count: 1}
	}
	steps := []struct {
		since time.Time
		want  int // records after the save
	}{
		{t0.Add(10*time.Minute + 30*time.Second), n - 10 + 1}, // forgets only the 10 due
		{t0.Add(10 * time.Minute), n - 10 + 2},                // an earlier Since forgets nothing more
		{t0.Add(48 * time.Hour), n - 10 - pruneBatch + 3},     // all due: at most pruneBatch go
		{t0.Add(48 * time.Hour), n - 10 - 2*pruneBatch + 4},
	}
	for i, st := range steps {
		mustSave(t, f, newBan(i, st.since))
		if got, _ := checkIndex(t, f); got != st.want {
			t.Fatalf("save %d (Since t0+%v): %d records, want %d", i, st.since.Sub(t0), got, st.want)
		}
	}
	// The ones forgotten were those due first.
	left := mustLoad(t, f, time.Time{})
	for _, b := range old[:10+2*pruneBatch] {
		if _, ok := findBan(left, b.Key); ok {
			t.Fatalf("%v (forget t0+%v) not pruned", b.Key, b.Forget.Sub(t0))
		}
	}
	for _, b := range old[10+2*pruneBatch:] {
		if _, ok := findBan(left, b.Key); !ok {
			t.Fatalf("%v (forget t0+%v) pruned", b.Key, b.Forget.Sub(t0))
		}
	}
}

func TestStoreLoadBansFilters(t *testing.T) {
	f := openTestStore(t, tempStorePath(t))
	bans := expiring(10) // forget at t0+1m … t0+10m
	noForget := limiter.Ban{Key: netip.MustParsePrefix("2001:db8::/64"), Since: t0, Until: t0.Add(5 * time.Minute), Count: 1}
	mustSave(t, f, append(bans, noForget)...)
	tests := []struct {
		at   time.Duration
		want int
	}{
		{0, 11},
		{59 * time.Second, 11},
		{time.Minute, 10}, // Forget == now: gone
		{5 * time.Minute, 5},
		{10 * time.Minute, 0},
	}
	for _, tt := range tests {
		got := mustLoad(t, f, t0.Add(tt.at))
		if len(got) != tt.want {
			t.Fatalf("LoadBans(t0+%v): %d bans, want %d", tt.at, len(got), tt.want)
		}
		for _, b := range got {
			if !t0.Add(tt.at).Before(forgetAt(b)) {
				t.Fatalf("LoadBans(t0+%v) returned %+v", tt.at, b)
			}
		}
		// Stale records were pruned on the way.
		if n, _ := checkIndex(t, f); n != tt.want {
			t.Fatalf("after LoadBans(t0+%v): %d records, want %d", tt.at, n, tt.want)
		}
	}
	mustSave(t, f, noForget)
	if got := mustLoad(t, f, time.Time{}); len(got) != 1 { // the zero time returns all
		t.Fatalf("LoadBans(zero) = %+v", got)
	}
}

func TestStoreClosed(t *testing.T) {
	f, err := Open(tempStorePath(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	k := netip.MustParsePrefix("192.0.2.1/32")
	if err := f.SaveBan(limiter.Ban{Key: k, Until: t0}); !errors.Is(err, limiter.ErrStoreClosed) {
		t.Fatalf("SaveBan after Close = %v", err)
	}
	if err := f.DeleteBan(k); !errors.Is(err, limiter.ErrStoreClosed) {
		t.Fatalf("DeleteBan after Close = %v", err)
	}
	if _, err := f.LoadBans(t0); !errors.Is(err, limiter.ErrStoreClosed) {
		t.Fatalf("LoadBans after Close = %v", err)
	}
}

func TestStoreFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ftpguard.db")
	f := openTestStore(t, path)
	if f.Path() != path {
		t.Fatalf("Path = %q", f.Path())
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Fatalf("mode %v, want 0600", st.Mode())
	}
	missing := filepath.Join(dir, "nodir", "ftpguard.db")
	if _, err := Open(missing, Options{}); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Open in a missing directory = %v", err)
	}
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(notDir, "x.db"), Options{}); err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open under a file = %v", err)
	}
	if _, err := Open(dir, Options{}); err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open(directory) = %v", err)
	}
}

// A zero-length file (touched, or created by a process that died at once)
// is a new store.
func TestStoreZeroLength(t *testing.T) {
	path := tempStorePath(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := limiter.Ban{Key: netip.MustParsePrefix("192.0.2.1/32"), Since: t0, Until: t0.Add(time.Hour), Count: 1}
	mustSave(t, f, b)
	f.Close()
	if got := mustLoad(t, openTestStore(t, path), time.Time{}); len(got) != 1 || !sameBan(got[0], b) {
		t.Fatalf("LoadBans = %+v", got)
	}
}

// writeRealStore writes a store holding n bans at path and returns its bytes
// and page size.
func writeRealStore(t *testing.T, path string, n int) ([]byte, int) {
	t.Helper()
	f := openTestStore(t, path)
	err := f.update(func(tx *bolt.Tx) error {
		bans, forget, _ := f.buckets(tx)
		for _, b := range expiring(n) {
			k := encodePrefix(b.Key)
			if err := bans.Put(k, encodeBan(b)); err != nil {
				return err
			}
			if err := forget.Put(indexKey(forgetAt(b), k), []byte{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pageSize := f.db.Info().PageSize
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data, pageSize
}

// damagePages overwrites the header of every page that holds needle.
func damagePages(data []byte, pageSize int, needle []byte) int {
	n := 0
	for off := 2 * pageSize; off < len(data); off += pageSize {
		if bytes.Contains(data[off:off+pageSize], needle) {
			copy(data[off:off+16], bytes.Repeat([]byte{0xA5}, 16))
			n++
		}
	}
	return n
}

func TestStoreCorrupt(t *testing.T) {
	real, pageSize := writeRealStore(t, tempStorePath(t), 3000)
	if len(real) < 16*pageSize {
		t.Fatalf("real store is only %d bytes", len(real))
	}
	garbage := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{1}).Read(garbage)
	damaged := bytes.Clone(real)
	if damagePages(damaged, pageSize, encodePrefix(netip.MustParsePrefix("10.0.5.0/32"))) == 0 {
		t.Fatal("key not found in the file")
	}
	// bbolt databases that are not ours.
	foreign := func(t *testing.T, path string) {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }); err != nil {
			t.Fatal(err)
		}
	}
	edit := func(fn func(tx *bolt.Tx) error) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			f := openTestStore(t, path)
			if err := f.update(fn); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	tests := []struct {
		name  string
		data  []byte
		setup func(*testing.T, string) // instead of data
		msg   string                   // in the error
	}{
		{name: "garbage", data: garbage, msg: "invalid database"},
		{name: "short text", data: []byte("not a database\n"), msg: "invalid database"},
		{name: "zeros", data: make([]byte, 32<<10), msg: "invalid database"},
		{name: "truncated to half", data: real[:len(real)/2]},
		{name: "truncated to 3 pages", data: real[:3*pageSize]},
		{name: "truncated in page 1", data: real[:pageSize+100], msg: "too small"},
		{name: "meta pages only", data: real[:2*pageSize]},
		{name: "damaged pages", data: damaged},
		{name: "other bbolt database", setup: foreign, msg: "not an ftpguard store"},
		{name: "unknown version", setup: edit(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte{9}) }), msg: "format version 09 unknown"},
		{name: "missing bucket", setup: edit(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketForget) }), msg: `no "forget" bucket`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempStorePath(t)
			if tt.setup != nil {
				tt.setup(t, path)
			} else if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := Open(path, Options{})
			if err == nil {
				f.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Open = %v; want ErrCorrupt naming %s (%q)", err, path, tt.msg)
			}
			t.Log(err)
			// Again: still corrupt, at once (not "locked" after a
			// timeout, although a panic in bbolt's Open leaves the
			// file locked by this process).
			start := time.Now()
			if _, err := Open(path, Options{}); !errors.Is(err, ErrCorrupt) || time.Since(start) > time.Second {
				t.Fatalf("second Open = %v after %v", err, time.Since(start))
			}
			moved, err := Reset(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(moved, path+".corrupt-") {
				t.Fatalf("moved to %q", moved)
			}
			if _, err := os.Stat(moved); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s still there: %v", path, err)
			}
			f = openTestStore(t, path)
			if got := mustLoad(t, f, time.Time{}); len(got) != 0 {
				t.Fatalf("new store holds %d bans", len(got))
			}
		})
	}
}

// A file damaged while open (another program wrote or truncated it) makes
// bbolt panic or fault on the mapped pages: the call returns ErrCorrupt
// and so do later calls; Close still works.
func TestStoreDamagedWhileOpen(t *testing.T) {
	for _, how := range []string{"overwrite", "truncate"} {
		t.Run(how, func(t *testing.T) {
			path := tempStorePath(t)
			real, pageSize := writeRealStore(t, path, 3000)
			f, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			switch how {
			case "overwrite":
				damaged := bytes.Clone(real)
				damagePages(damaged, pageSize, encodePrefix(netip.MustParsePrefix("10.0.5.0/32")))
				err = os.WriteFile(path, damaged, 0o600)
			case "truncate":
				err = os.Truncate(path, int64(4*pageSize))
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.LoadBans(time.Time{})
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
				t.Fatalf("LoadBans = %v", err)
			}
			t.Log(err)
			if err := f.SaveBan(limiter.Ban{Key: netip.MustParsePrefix("192.0.2.1/32"), Until: t0}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("SaveBan after a fault = %v", err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestStoreBadRecord(t *testing.T) {
	path := tempStorePath(t)
	f := openTestStore(t, path)
	good := expiring(3)
	mustSave(t, f, good...)
	bad := good[1].Key
	err := f.update(func(tx *bolt.Tx) error {
		bans, _, _ := f.buckets(tx)
		if err := bans.Put(encodePrefix(bad), []byte{7, 1, 2, 3}); err != nil {
			return err
		}
		return bans.Put([]byte{4, 33, 1, 2, 3, 4}, encodeBan(good[0])) // a /33 IPv4 key
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.LoadBans(time.Time{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("LoadBans = %v", err)
	}
	if !strings.Contains(err.Error(), bad.String()) && !strings.Contains(err.Error(), "0421") {
		t.Fatalf("error %q names no key", err)
	}
	t.Log(err)
	if len(got) != 2 || !sameBan(got[0], good[0]) || !sameBan(got[1], good[2]) {
		t.Fatalf("LoadBans returned %+v; want the 2 good bans", got)
	}
	// Saving the key again repairs its record.
	mustSave(t, f, good[1])
	err = f.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketBans).Delete([]byte{4, 33, 1, 2, 3, 4}) })
	if err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, f, time.Time{}); len(got) != 3 {
		t.Fatalf("LoadBans = %+v", got)
	}
}

func TestReset(t *testing.T) {
	path := tempStorePath(t)
	if _, err := Reset(path); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Reset(missing) = %v", err)
	}
	var moved []string
	for i := range 2 { // twice within a second: the names differ
		f := openTestStore(t, path)
		mustSave(t, f, crashBan(i))
		f.Close()
		m, err := Reset(path)
		if err != nil {
			t.Fatal(err)
		}
		moved = append(moved, m)
	}
	if moved[0] == moved[1] || !strings.HasPrefix(moved[0], path+".corrupt-") || !strings.HasPrefix(moved[1], path+".corrupt-") {
		t.Fatalf("moved to %q", moved)
	}
	for i, m := range moved { // each moved file is the store it was
		f := openTestStore(t, m)
		if got := mustLoad(t, f, time.Time{}); len(got) != 1 || !sameBan(got[0], crashBan(i)) {
			t.Fatalf("%s holds %+v", m, got)
		}
	}
}

func TestStoreLockedInProcess(t *testing.T) {
	path := tempStorePath(t)
	f := openTestStore(t, path)
	start := time.Now()
	_, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("second Open took %v", took)
	}
	if err == nil || !errors.Is(err, berrors.ErrTimeout) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open = %v", err)
	}
	if _, err := Reset(path); !errors.Is(err, berrors.ErrTimeout) {
		t.Fatalf("Reset of an open store = %v", err)
	}
	f.Close()
	openTestStore(t, path)
}

// helperEnv is set for the test binary run as a helper process.
const helperEnv = "FTPGUARD_FILESTORE_HELPER"

// TestHelperProcess is not a test: run by helperCommand, it opens the store
// at $FTPGUARD_FILESTORE_PATH and, as $FTPGUARD_FILESTORE_HELPER says,
// saves crashBan(i) for i from $FTPGUARD_FILESTORE_START, printing "saved i"
// after each SaveBan returns ("save"), or prints "ready" and holds the store
// until its stdin closes ("hold").
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process")
	}
	f, err := Open(os.Getenv("FTPGUARD_FILESTORE_PATH"), Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	switch mode {
	case "save":
		start, _ := strconv.Atoi(os.Getenv("FTPGUARD_FILESTORE_START"))
		for i := start; i < start+100_000; i++ {
			if err := f.SaveBan(crashBan(i)); err != nil {
				fmt.Println("error", err)
				os.Exit(2)
			}
			fmt.Printf("saved %d\n", i) // os.Stdout is not buffered
		}
	case "hold":
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
	}
	f.Close()
	os.Exit(0)
}

func helperCommand(t *testing.T, mode, path string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + mode, "FTPGUARD_FILESTORE_PATH=" + path}, env...)...)
	cmd.Stderr = os.Stderr
	t.Cleanup(func() {
		if cmd.Process != nil && cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

func crashBan(i int) limiter.Ban {
	since := t0.Add(time.Duration(i) * time.Second)
	a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
	return limiter.Ban{Key: netip.PrefixFrom(a, 128), Since: since, Until: since.Add(time.Hour), Forget: since.Add(169 * time.Hour), Count: i%7 + 1, Reason: "crash " + strconv.Itoa(i)}
}

// TestStoreCrash kills a process that saves bans (SIGKILL on Unix) in
// the middle of its stream, and checks that every ban it announced as saved
// is in the file. Three rounds on one file, killed at different points.
func TestStoreCrash(t *testing.T) {
	path := tempStorePath(t)
	next := 0
	for round, killAfter := range []int{25, 7, 60} {
		cmd := helperCommand(t, "save", path, "FTPGUARD_FILESTORE_START="+strconv.Itoa(next))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var saved []int
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			num, ok := strings.CutPrefix(line, "saved ")
			if !ok {
				if strings.HasPrefix(line, "error") {
					t.Fatalf("helper: %s", line)
				}
				continue
			}
			i, err := strconv.Atoi(num)
			if err != nil {
				t.Fatalf("helper: %q", line)
			}
			saved = append(saved, i)
			if len(saved) == killAfter {
				cmd.Process.Kill() // the helper is inside its next SaveBan
			}
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Exited() {
			t.Fatalf("round %d: helper ended with %v, want killed", round, err)
		}
		f, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		bans := mustLoad(t, f, time.Time{})
		for _, i := range saved {
			want := crashBan(i)
			if got, ok := findBan(bans, want.Key); !ok || !sameBan(got, want) {
				t.Fatalf("round %d: ban %d announced but lost (got %+v)", round, i, got)
			}
		}
		checkIndex(t, f)
		f.Close()
		t.Logf("round %d: %d bans announced before the kill, all in the file (%d in all)", round, len(saved), len(bans))
		next = saved[len(saved)-1] + 1
	}
}

func TestStoreLockedByProcess(t *testing.T) {
	path := tempStorePath(t)
	cmd := helperCommand(t, "hold", path)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("helper said %q", sc.Text())
	}
	start := time.Now()
	_, err = Open(path, Options{LockTimeout: 300 * time.Millisecond})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), path+" is locked by another process (another ftpguard running?)") {
		t.Fatalf("Open while another process holds it = %v", err)
	}
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("Open gave up after %v, want about 300ms", took)
	}
	t.Log(err)
	if _, err := Reset(path); err == nil {
		t.Fatal("Reset moved the file of a running process")
	}
	in.Close() // the helper closes the store and exits
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	openTestStore(t, path)
}

// A Limiter on a Store enforces the bans of an earlier Limiter on the
// same file and continues their escalation.
func TestStoreLimiterRestart(t *testing.T) {
	const a = "192.0.2.1"
	path := tempStorePath(t)
	f1 := openTestStore(t, path)
	l1 := storetest.NewLimiter(t, limiter.Config{}, f1)
	storetest.Run(t, l1, storetest.Join(
		storetest.Guesses(0, a, 5, 5), // ban 1: 1h
		storetest.Guesses(2*time.Hour, a, 5, 5),
		[]storetest.Step{{At: 2*time.Hour + time.Second, Ev: storetest.EvCheck, Addr: a, Want: storetest.Want{Count: 2, Until: 4 * time.Hour}}}, // ban 2: 2h
	))
	if err := f1.Close(); err != nil { // the process stops
		t.Fatal(err)
	}
	f2 := openTestStore(t, path)
	l2 := storetest.NewLimiter(t, limiter.Config{}, f2)
	if err := l2.LastStoreError(); err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, l2, storetest.Join(
		[]storetest.Step{{At: 3 * time.Hour, Ev: storetest.EvCheck, Addr: a, Want: storetest.Want{Count: 2, Until: 4 * time.Hour}}}, // still banned
		[]storetest.Step{{At: 3 * time.Hour, Ev: storetest.EvGuess, Addr: a, Want: storetest.Want{Count: 2}}},
		storetest.Guesses(5*time.Hour, a, 5, 5),
		[]storetest.Step{{At: 5*time.Hour + time.Second, Ev: storetest.EvCheck, Addr: a, Want: storetest.Want{Count: 3, Until: 9 * time.Hour}}}, // ban 3: 4h
	))
	got := mustLoad(t, f2, time.Time{})
	if len(got) != 1 || got[0].Count != 3 || !got[0].Until.Equal(t0.Add(9*time.Hour)) {
		t.Fatalf("store holds %+v", got)
	}
}

func TestStoreConcurrent(t *testing.T) {
	f := openTestStore(t, tempStorePath(t))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 10 {
				b := crashBan(g*100 + i)
				if err := f.SaveBan(b); err != nil {
					t.Error(err)
				}
				if _, err := f.LoadBans(b.Since); err != nil {
					t.Error(err)
				}
				if i%3 == 0 {
					if err := f.DeleteBan(b.Key); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	if n, _ := checkIndex(t, f); n != 4*6 {
		t.Fatalf("%d records, want 24", n)
	}
	// Close races with calls: each either runs or gets limiter.ErrStoreClosed.
	for g := range 4 {
		wg.Go(func() {
			for i := range 5 {
				if err := f.SaveBan(crashBan(1000 + g*10 + i)); err != nil && !errors.Is(err, limiter.ErrStoreClosed) {
					t.Error(err)
				}
			}
		})
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestEncodePrefix(t *testing.T) {
	for _, s := range []string{"0.0.0.0/0", "192.0.2.0/24", "255.255.255.255/32", "::/0", "2001:db8::/64", "2001:db8::1/128"} {
		p := netip.MustParsePrefix(s)
		k := encodePrefix(p)
		if back, err := decodePrefix(k); err != nil || back != p {
			t.Errorf("decodePrefix(encodePrefix(%v)) = %v, %v", p, back, err)
		}
	}
	bad := [][]byte{
		nil,
		{4, 32, 1, 2, 3},
		{5, 32, 1, 2, 3, 4},
		{4, 33, 1, 2, 3, 4},
		{4, 24, 1, 2, 3, 4}, // not masked
		append([]byte{6, 128}, netip.MustParseAddr("::ffff:1.2.3.4").AsSlice()...), // IPv4-mapped
	}
	for _, k := range bad {
		if p, err := decodePrefix(k); err == nil {
			t.Errorf("decodePrefix(%x) = %v", k, p)
		}
	}
	// A record that does not decode fails cleanly.
	v := encodeBan(limiter.Ban{Until: t0, Count: 1, Reason: "x"})
	for i := range len(v) {
		if _, err := decodeBan(netip.Prefix{}, v[:i]); err == nil {
			t.Errorf("decodeBan of %d of %d bytes succeeded", i, len(v))
		}
	}
	if _, err := decodeBan(netip.Prefix{}, append(bytes.Clone(v), 0)); err == nil {
		t.Error("decodeBan with a trailing byte succeeded")
	}
	if binary.BigEndian.Uint64(indexKey(t0, nil)) != indexTime(t0) {
		t.Error("indexKey does not start with indexTime")
	}
}

func BenchmarkStoreSaveBan(b *testing.B) {
	f := openTestStore(b, tempStorePath(b))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := f.SaveBan(crashBan(i)); err != nil {
			b.Fatal(err)
		}
	}
}

func TestConformance(t *testing.T) {
	storetest.Conformance(t, func(t *testing.T) limiter.Store { return openTestStore(t, tempStorePath(t)) })
}
