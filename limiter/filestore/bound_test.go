package filestore

import (
	"net/netip"
	"os"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ftpguard/ftpguard/limiter"
)

// manyBans returns n bans of distinct keys made at base, forgotten at
// base + i seconds (so the earlier ones are due to be forgotten first).
func manyBans(n int, base time.Time) []limiter.Ban {
	out := make([]limiter.Ban, n)
	for i := range out {
		k := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		out[i] = limiter.Ban{Key: k, Until: base.Add(time.Second), Count: 1, Reason: "budget", Since: base,
			Forget: base.Add(time.Duration(i+1) * time.Second)}
	}
	return out
}

// bulkSave writes bans as SaveBan would, without pruning, in one
// transaction (a big file fast).
func bulkSave(t testing.TB, f *Store, bans []limiter.Ban) {
	t.Helper()
	err := f.update(func(tx *bolt.Tx) error {
		rec, forget, err := f.buckets(tx)
		if err != nil {
			return err
		}
		for _, b := range bans {
			k := encodePrefix(b.Key)
			if err := rec.Put(k, encodeBan(b)); err != nil {
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
	f.count.Add(int64(len(bans)))
}

// TestStoreBoundedByMaxBans: with MaxBans = 100, 1000 bans saved leave
// 100 records (the ones forgotten last), and a file of 5000 written
// without the bound is trimmed to it at Open. Before, all were kept.
func TestStoreBoundedByMaxBans(t *testing.T) {
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	bans := manyBans(1000, base)
	path := tempStorePath(t)
	f, err := Open(path, Options{MaxBans: 100})
	if err != nil {
		t.Fatal(err)
	}
	f.db.NoSync = true // durability is not under test: no fsync per ban
	for _, b := range bans {
		mustSave(t, f, b)
	}
	if n, _ := checkIndex(t, f); n != 100 {
		t.Fatalf("%d records kept with MaxBans = 100", n)
	}
	got := mustLoad(t, f, time.Time{})
	if _, ok := findBan(got, bans[999].Key); !ok || len(got) != 100 {
		t.Fatalf("loaded %d bans, the latest kept: %v", len(got), ok)
	}
	f.Close()

	// A file over the bound (an older ftpguard, a lower max_tracked now).
	path2 := tempStorePath(t)
	f2, err := Open(path2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	bulkSave(t, f2, manyBans(5000, base))
	f2.Close()
	f3 := openTestStoreOpt(t, path2, Options{MaxBans: 100})
	if n, _ := checkIndex(t, f3); n != 100 {
		t.Fatalf("%d records after Open with MaxBans = 100", n)
	}
	if _, ok := findBan(mustLoad(t, f3, time.Time{}), manyBans(5000, base)[4999].Key); !ok {
		t.Fatal("Open trimmed the ban forgotten last")
	}
}

// TestStoreShrinks: a 2 MiB file whose every record is past its forget
// time is pruned at Open (PruneBefore) and compacted: it shrinks. Before,
// it stayed 2 MiB.
func TestStoreShrinks(t *testing.T) {
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	path := tempStorePath(t)
	f, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	bulkSave(t, f, manyBans(30000, base))
	f.Close()
	st, _ := os.Stat(path)
	before := st.Size()
	if before < 1<<20 {
		t.Fatalf("the test file is only %d bytes", before)
	}
	f2 := openTestStoreOpt(t, path, Options{PruneBefore: base.Add(24 * time.Hour)})
	if n, _ := checkIndex(t, f2); n != 0 {
		t.Fatalf("%d records left after pruning all", n)
	}
	st, _ = os.Stat(path)
	if st.Size()*8 > before {
		t.Fatalf("file %d bytes after pruning every record, was %d: not compacted", st.Size(), before)
	}
	// Still a working store, under its name, locked.
	mustSave(t, f2, manyBans(1, base.Add(48*time.Hour))[0])
	if _, err := Open(path, Options{LockTimeout: 50 * time.Millisecond}); err == nil {
		t.Fatal("a second Open of the compacted file got its lock")
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Fatalf("the compaction's temporary file is left: %v", err)
	}
}

// openTestStoreOpt opens the store at path with opt and closes it at the
// end of the test.
func openTestStoreOpt(t testing.TB, path string, opt Options) *Store {
	t.Helper()
	f, err := Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
