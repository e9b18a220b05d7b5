// Package filestore is a limiter.Store kept in a bbolt file
// (go.etcd.io/bbolt): bans and their escalation counts survive a restart of
// the process and of the host.
package filestore

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/internal/prefix"
)

// ErrCorrupt is wrapped by the errors of Open and of a
// Store's methods when the file is not a store this package can read:
// not a bbolt database, truncated, damaged pages, an unknown format version,
// or a record that does not decode. The error names the file (and the key,
// for a bad record). Reset moves such a file aside.
var ErrCorrupt = errors.New("filestore: store file is corrupt")

// DefaultLockTimeout is the Options.LockTimeout used when it is zero.
const DefaultLockTimeout = 2 * time.Second

// The file's layout, format version 1. Three buckets:
//
//	meta:   "version" → one byte, fileFormat
//	bans:   prefix key → ban record
//	forget: forget time + prefix key → empty (an index of bans by forget time)
//
// A prefix key is the family (4 or 6), the prefix length and the masked
// address bytes (4 or 16), so one network has exactly one key. A ban record
// is recVersion, then Until, Since and Forget as big-endian UnixNano, then
// Count as a varint and Reason as a uvarint length and its bytes: about 30
// bytes. The forget index holds, for each record, the time it may be
// dropped (Forget, or Until if Forget is zero) as a big-endian UnixNano with
// the sign bit flipped (so that keys sort by time), then the prefix key.
// SaveBan walks it from the start to prune, so pruning never scans the bans.
var (
	bucketMeta   = []byte("meta")
	bucketBans   = []byte("bans")
	bucketForget = []byte("forget")
	keyVersion   = []byte("version")
)

const (
	fileFormat = 1 // the meta bucket's version: the buckets and their keys
	recVersion = 1 // the first byte of a ban record

	// pruneBatch bounds the records one SaveBan forgets, so the latency of
	// a save stays flat however many bans expired since the last one.
	pruneBatch = 64

	// zeroNano stands for the zero time.Time, which has no UnixNano.
	zeroNano = math.MinInt64

	// resetLockTimeout is how long Reset waits for the file lock.
	resetLockTimeout = 500 * time.Millisecond
)

// Options tunes Open. The zero value gives the defaults.
type Options struct {
	// LockTimeout bounds the wait for the file's exclusive lock, which
	// another process using the same file (another ftpguard) holds
	// (default DefaultLockTimeout; a negative value also means the default).
	// Open then fails with an error that names the file.
	LockTimeout time.Duration
	// MaxBans bounds the records kept (limiter.Config.MaxTracked: the
	// limiter keeps no more): beyond it, each SaveBan drops at most 64 of
	// the records due to be forgotten first, and Open drops all the excess.
	// 0: no bound.
	MaxBans int
	// PruneBefore: Open forgets the records whose forget time is not after
	// it (the zero time: none), before anything loads them, and then
	// compacts the file if free space is most of it (see Compact).
	PruneBefore time.Time
}

// Store is a Store kept in a bbolt file (go.etcd.io/bbolt): bans and
// their escalation counts survive a restart of the process and of the host.
// Every SaveBan and DeleteBan is a transaction committed with fdatasync, so
// it is durable when it returns: a crash (kill -9, power loss on a disk that
// honours flushes) right after loses nothing. The price is a disk flush per
// ban, which is fine for bans (they are rare; budgets are not stored).
//
// Keys are stored normalised as the Limiter makes them (masked, IPv4-mapped
// IPv6 turned into IPv4). Times are stored as UnixNano and come back in UTC,
// without monotonic reading; times after 2262 are saved as 2262 (a ban that
// long is forever). Records past their Forget time are pruned without a full
// scan: each SaveBan drops at most 64 of those due first.
//
// One process at a time may open a file: Open takes an exclusive
// lock (flock), so a second ftpguard on the same file fails to start. If
// the process panics or faults on a damaged file (bbolt maps it in memory),
// the panic is recovered and the call returns an error wrapping
// ErrCorrupt; the store then refuses further calls with that error, as
// bbolt's state may be broken.
//
// A Store is safe for concurrent use. The zero value is not usable; use
// Open. After Close, methods return limiter.ErrStoreClosed.
type Store struct {
	path   string
	max    int          // Options.MaxBans; 0: no bound
	count  atomic.Int64 // records in the bans bucket
	db     *bolt.DB
	mu     sync.RWMutex // held for reading by calls, for writing by Close
	closed bool
	broken atomic.Pointer[error] // set when a call recovered a panic
}

var _ limiter.Store = (*Store)(nil)

// Open opens the store in the file at path, creating it with mode
// 0600 if it does not exist. Its directory must exist. A zero-length file is
// treated as a new store (a file created but never written, e.g. by touch).
//
// It fails with an error naming the file if another process holds the file
// (after opt.LockTimeout), and with an error wrapping ErrCorrupt if the
// file is not a store this package can read: not a bbolt database, truncated,
// with damaged pages, or of an unknown format version. Open reads
// every page of the file once to find damage before the proxy relies on it;
// it does not decode records (LoadBans reports bad ones and still returns
// the others). Reset is the way out of a corrupt file.
func Open(path string, opt Options) (*Store, error) {
	timeout := opt.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("filestore: directory of store file %s: %w", path, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("filestore: directory of store file %s: %s is not a directory", path, dir)
	}
	if poisoned.has(path) {
		return nil, fmt.Errorf("%w: %s: bbolt failed on it earlier in this process, which holds its lock until it exits", ErrCorrupt, path)
	}
	created := false
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		created = true
	}
	db, err := openBolt(path, &bolt.Options{Timeout: timeout})
	if err != nil {
		return nil, err
	}
	f := &Store{path: path, db: db, max: opt.MaxBans}
	if err := f.validate(); err != nil {
		db.Close()
		return nil, err
	}
	if err := f.tidy(opt); err != nil {
		f.Close()
		return nil, err
	}
	if created {
		// bbolt flushes the file but not its directory entry: without
		// this, a new store could vanish in a power loss.
		if err := syncDir(dir); err != nil {
			db.Close()
			return nil, fmt.Errorf("filestore: sync directory of store file %s: %w", path, err)
		}
	}
	return f, nil
}

// validate checks the file (a new one gets its buckets) and reads every page.
func (f *Store) validate() error {
	empty := false
	err := f.view(func(tx *bolt.Tx) error {
		if st, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("filestore: open store file %s: %w", f.path, err)
		} else if st.Size() < tx.Size() {
			return f.corrupt("truncated to %d bytes; the database needs %d", st.Size(), tx.Size())
		}
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			n := 0
			if err := tx.ForEach(func([]byte, *bolt.Bucket) error { n++; return nil }); err != nil {
				return err
			}
			if n > 0 {
				return f.corrupt("a bbolt database but not an ftpguard store (no %q bucket)", bucketMeta)
			}
			empty = true
			return nil
		}
		if v := meta.Get(keyVersion); len(v) != 1 || v[0] != fileFormat {
			return f.corrupt("format version %x unknown (this ftpguard reads %d; written by a newer one?)", v, fileFormat)
		}
		for _, name := range [][]byte{bucketBans, bucketForget} {
			b := tx.Bucket(name)
			if b == nil {
				return f.corrupt("no %q bucket", name)
			}
			// Touch every page now, so that damage shows here
			// rather than in the middle of serving.
			c := b.Cursor()
			n := int64(0)
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				n++
			}
			if bytes.Equal(name, bucketBans) {
				f.count.Store(n)
			}
		}
		return nil
	})
	if err != nil || !empty {
		return err
	}
	return f.update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keyVersion, []byte{fileFormat}); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketBans); err != nil {
			return err
		}
		_, err = tx.CreateBucket(bucketForget)
		return err
	})
}

// Path returns the file's path, as given to Open.
func (f *Store) Path() string { return f.path }

// SaveBan records b as the ban of b.Key, replacing any earlier one, and
// forgets at most 64 records whose forget time is not after b.Since (none
// if Since is zero), in the same transaction. It is durable when it
// returns. An invalid b.Key is an error wrapping limiter.ErrInvalidPrefix.
func (f *Store) SaveBan(b limiter.Ban) error {
	p, err := prefix.Norm(b.Key)
	if err != nil {
		return err
	}
	b.Key = p
	k := encodePrefix(p)
	v := encodeBan(b)
	ik := indexKey(forgetAt(b), k)
	var delta int64
	err = f.update(func(tx *bolt.Tx) error {
		delta = 0
		bans, forget, err := f.buckets(tx)
		if err != nil {
			return err
		}
		if !b.Since.IsZero() {
			n, err := prune(bans, forget, b.Since, pruneBatch)
			if err != nil {
				return err
			}
			delta -= int64(n)
		}
		old := bans.Get(k)
		if old == nil {
			delta++
			if f.max > 0 {
				over := int(f.count.Load()+delta) - f.max
				if over > 0 {
					n, err := trim(bans, forget, min(over, pruneBatch))
					if err != nil {
						return err
					}
					delta -= int64(n)
				}
			}
		}
		if old != nil {
			// An old record that does not decode leaves its index
			// entry dangling; prune drops it when it comes due.
			if ob, err := decodeBan(p, old); err == nil {
				if err := forget.Delete(indexKey(forgetAt(ob), k)); err != nil {
					return err
				}
			}
		}
		if err := bans.Put(k, v); err != nil {
			return err
		}
		return forget.Put(ik, []byte{})
	})
	if err != nil {
		return fmt.Errorf("filestore: save ban of %v in %s: %w", p, f.path, err)
	}
	f.count.Add(delta)
	return nil
}

// DeleteBan removes the ban of key, if any; it is durable when it returns.
// An invalid key is an error wrapping limiter.ErrInvalidPrefix.
func (f *Store) DeleteBan(key netip.Prefix) error {
	p, err := prefix.Norm(key)
	if err != nil {
		return err
	}
	k := encodePrefix(p)
	deleted := false
	err = f.update(func(tx *bolt.Tx) error {
		deleted = false
		bans, forget, err := f.buckets(tx)
		if err != nil {
			return err
		}
		old := bans.Get(k)
		if old == nil {
			return nil
		}
		if ob, err := decodeBan(p, old); err == nil {
			if err := forget.Delete(indexKey(forgetAt(ob), k)); err != nil {
				return err
			}
		}
		deleted = true
		return bans.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("filestore: delete ban of %v in %s: %w", p, f.path, err)
	}
	if deleted {
		f.count.Add(-1)
	}
	return nil
}

// LoadBans returns the bans whose forget time (Forget, or Until if Forget is
// zero) is after now, sorted by Until; the zero now returns every ban. It
// reads the whole file, then deletes the records it found stale.
//
// A record that does not decode is skipped: LoadBans then returns the bans
// it could read together with an error wrapping ErrCorrupt that names
// the file and the first bad key (the Limiter still enforces the bans it is
// given).
func (f *Store) LoadBans(now time.Time) ([]limiter.Ban, error) {
	var (
		out     []limiter.Ban
		stale   []limiter.Ban
		corrupt error
	)
	err := f.view(func(tx *bolt.Tx) error {
		bans, _, err := f.buckets(tx)
		if err != nil {
			return err
		}
		c := bans.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			b, err := f.decode(k, v)
			if err != nil {
				if corrupt == nil {
					corrupt = err
				}
				continue
			}
			if !now.IsZero() && !now.Before(forgetAt(b)) {
				stale = append(stale, b)
				continue
			}
			out = append(out, b)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("filestore: load bans from %s: %w", f.path, err)
	}
	slices.SortFunc(out, compareBans)
	if len(stale) > 0 {
		if err := f.forgetStale(now, stale); err != nil {
			corrupt = errors.Join(corrupt, err)
		}
	}
	return out, corrupt
}

// forgetStale deletes the records of stale that are still stale at now (a
// SaveBan may have replaced some since they were read).
func (f *Store) forgetStale(now time.Time, stale []limiter.Ban) error {
	var n int64
	err := f.update(func(tx *bolt.Tx) error {
		n = 0
		bans, forget, err := f.buckets(tx)
		if err != nil {
			return err
		}
		for _, sb := range stale {
			k := encodePrefix(sb.Key)
			b, err := decodeBan(sb.Key, bans.Get(k))
			if err != nil || now.Before(forgetAt(b)) {
				continue
			}
			if err := forget.Delete(indexKey(forgetAt(b), k)); err != nil {
				return err
			}
			if err := bans.Delete(k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("filestore: prune bans in %s: %w", f.path, err)
	}
	f.count.Add(-n)
	return nil
}

// Close closes the file and releases its lock. Later calls return
// limiter.ErrStoreClosed; closing again does nothing.
func (f *Store) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if err := f.db.Close(); err != nil {
		return fmt.Errorf("filestore: close store file %s: %w", f.path, err)
	}
	return nil
}

// view runs fn in a read transaction; see guard.
func (f *Store) view(fn func(*bolt.Tx) error) error {
	return f.guard(func() error { return f.db.View(fn) })
}

// update runs fn in a write transaction, committed with fdatasync; see guard.
func (f *Store) update(fn func(*bolt.Tx) error) error {
	return f.guard(func() error { return f.db.Update(fn) })
}

// guard runs op unless the store is closed or broken. A panic or a memory
// fault in op (bbolt on a damaged page) becomes an error wrapping
// ErrCorrupt, and the store is broken from then on: bbolt rolls back
// the transaction, but its in-memory state is no longer to be trusted.
func (f *Store) guard(op func() error) (err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return limiter.ErrStoreClosed
	}
	if p := f.broken.Load(); p != nil {
		return *p
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, f.path, r)
			sticky := err
			f.broken.CompareAndSwap(nil, &sticky)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return op()
}

// buckets returns the bans and forget buckets of tx.
func (f *Store) buckets(tx *bolt.Tx) (bans, forget *bolt.Bucket, err error) {
	bans, forget = tx.Bucket(bucketBans), tx.Bucket(bucketForget)
	if bans == nil || forget == nil {
		return nil, nil, f.corrupt("a bucket is missing")
	}
	return bans, forget, nil
}

// corrupt returns an error wrapping ErrCorrupt that names the file.
func (f *Store) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrCorrupt, f.path, fmt.Sprintf(format, args...))
}

// decode decodes the record v of key k, or returns an error naming both.
func (f *Store) decode(k, v []byte) (limiter.Ban, error) {
	p, err := decodePrefix(k)
	if err != nil {
		return limiter.Ban{}, f.corrupt("key %s: %v", hex.EncodeToString(k), err)
	}
	b, err := decodeBan(p, v)
	if err != nil {
		return limiter.Ban{}, f.corrupt("key %v: %v", p, err)
	}
	return b, nil
}

// prune forgets at most n records whose forget time is not after now,
// those due first, walking the forget index from its start. It returns
// how many records it deleted.
func prune(bans, forget *bolt.Bucket, now time.Time, n int) (int, error) {
	bound := indexTime(now)
	var due [][]byte
	c := forget.Cursor()
	for k, _ := c.First(); k != nil && len(due) < n; k, _ = c.Next() {
		if len(k) >= 8 && binary.BigEndian.Uint64(k) > bound {
			break
		}
		due = append(due, bytes.Clone(k)) // k is not valid after a Delete
	}
	return dropIndexed(bans, forget, due)
}

// trim forgets the n records due to be forgotten first, whatever their
// time (the store is over its bound). It returns how many it deleted.
func trim(bans, forget *bolt.Bucket, n int) (int, error) {
	var due [][]byte
	c := forget.Cursor()
	for k, _ := c.First(); k != nil && len(due) < n; k, _ = c.Next() {
		due = append(due, bytes.Clone(k))
	}
	return dropIndexed(bans, forget, due)
}

// dropIndexed deletes the forget-index entries due and their records.
func dropIndexed(bans, forget *bolt.Bucket, due [][]byte) (int, error) {
	deleted := 0
	for _, ik := range due {
		if err := forget.Delete(ik); err != nil {
			return deleted, err
		}
		if len(ik) < 8 {
			continue
		}
		// Delete the record only if this entry is its index entry.
		k := ik[8:]
		p, err := decodePrefix(k)
		if err != nil {
			continue
		}
		b, err := decodeBan(p, bans.Get(k))
		if err != nil || !bytes.Equal(indexKey(forgetAt(b), k), ik) {
			continue
		}
		if err := bans.Delete(k); err != nil {
			return deleted, err
		}
		deleted++
	}
	return deleted, nil
}
