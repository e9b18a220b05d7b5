package filestore

// Keeping the file small: pruning and trimming at Open, before anything
// loads the records, and compacting a file that is mostly free pages.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// tidyBatch bounds the records one transaction of Open forgets.
	tidyBatch = 4096
	// compactMin is the file size below which Open never compacts.
	compactMin = 256 << 10
	// compactTxSize bounds a transaction of the copy made by compact.
	compactTxSize = 1 << 20
)

// tidy forgets, at Open, the records whose time is past opt.PruneBefore
// and those beyond opt.MaxBans (due to be forgotten first), then compacts
// the file if free pages are most of it.
func (f *Store) tidy(opt Options) error {
	for !opt.PruneBefore.IsZero() {
		n, err := f.dropBatch(func(bans, forget *bolt.Bucket) (int, error) {
			return prune(bans, forget, opt.PruneBefore, tidyBatch)
		})
		if err != nil || n < tidyBatch {
			if err != nil {
				return fmt.Errorf("filestore: prune %s at open: %w", f.path, err)
			}
			break
		}
	}
	for f.max > 0 && f.count.Load() > int64(f.max) {
		over := int(f.count.Load() - int64(f.max))
		n, err := f.dropBatch(func(bans, forget *bolt.Bucket) (int, error) {
			return trim(bans, forget, min(over, tidyBatch))
		})
		if err != nil {
			return fmt.Errorf("filestore: trim %s to %d records at open: %w", f.path, f.max, err)
		}
		if n == 0 {
			break // only dangling index entries left
		}
	}
	if f.mostlyFree() {
		return f.compact()
	}
	return nil
}

// dropBatch runs one deleting step in a write transaction and counts the
// records it deleted.
func (f *Store) dropBatch(step func(bans, forget *bolt.Bucket) (int, error)) (int, error) {
	var n int
	err := f.update(func(tx *bolt.Tx) error {
		bans, forget, err := f.buckets(tx)
		if err != nil {
			return err
		}
		n, err = step(bans, forget)
		return err
	})
	if err != nil {
		return 0, err
	}
	f.count.Add(-int64(n))
	return n, nil
}

// mostlyFree reports whether the file is at least compactMin bytes and
// more than half of it is free pages.
func (f *Store) mostlyFree() bool {
	st, err := os.Stat(f.path)
	if err != nil || st.Size() < compactMin {
		return false
	}
	s := f.db.Stats()
	free := int64(s.FreePageN+s.PendingPageN) * int64(f.db.Info().PageSize)
	return 2*free > st.Size()
}

// compact copies the store into a new file (bolt.Compact, each
// transaction fsync'd), renames it over the old one, flushes the
// directory and reopens it. On failure the old file stays in use.
func (f *Store) compact() error {
	tmp := f.path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("filestore: compact %s: %w", f.path, err)
	}
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("filestore: compact %s: %w", f.path, err)
	}
	err = f.guard(func() error { return bolt.Compact(dst, f.db, compactTxSize) })
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, f.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("filestore: compact %s: %w", f.path, err)
	}
	// The old file is unlinked; reopen the new one under its name.
	f.db.Close()
	if err := syncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("filestore: compact %s: sync directory: %w", f.path, err)
	}
	db, err := openBolt(f.path, &bolt.Options{Timeout: DefaultLockTimeout})
	if err != nil {
		return fmt.Errorf("filestore: reopen %s after compacting: %w", f.path, err)
	}
	f.db = db
	return nil
}
