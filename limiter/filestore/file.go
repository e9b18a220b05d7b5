package filestore

// The file itself: opening it through bbolt without trusting its content,
// the files bbolt failed on in this process, moving a corrupt one aside.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// openBolt opens the bbolt database at path, turning a panic or a memory
// fault (SIGBUS/SIGSEGV on a truncated or damaged file: bbolt reads it
// through mmap, and v1.5.0 reads the freelist page within Open) into an
// error wrapping ErrCorrupt.
func openBolt(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	var (
		file    *os.File
		openErr error
	)
	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		file, openErr = os.OpenFile(name, flag, perm)
		return file, openErr
	}
	defer func() {
		if r := recover(); r != nil {
			// Open panicked after taking the lock and mapping the
			// file. The mapping (tens of KiB) is lost with the DB, and
			// it keeps the lock held even once the file is closed.
			if file != nil {
				poisoned.add(file)
				file.Close()
			}
			db, err = nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	db, err = bolt.Open(path, 0o600, opts)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("filestore: store file %s is locked by another process (another ftpguard running?): %w", path, err)
	case openErr != nil || isIOError(err):
		return nil, fmt.Errorf("filestore: open store file %s: %w", path, err)
	default: // bad meta pages, "file size too small", …
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
}

// poisoned is the set of files on which bbolt panicked within Open in this
// process: bbolt's mapping of such a file, which cannot be unmapped, holds
// its lock (flock) until the process exits. Open reports them as
// corrupt at once, rather than as locked after LockTimeout, and
// Reset moves them although they are locked.
var poisoned fileSet

// fileSet is a set of files, by identity (device and inode on Unix).
type fileSet struct {
	mu    sync.Mutex
	files []os.FileInfo
}

func (s *fileSet) add(f *os.File) {
	if st, err := f.Stat(); err == nil {
		s.mu.Lock()
		s.files = append(s.files, st)
		s.mu.Unlock()
	}
}

func (s *fileSet) has(path string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.files, func(fi os.FileInfo) bool { return os.SameFile(fi, st) })
}

// isIOError reports whether err came from the operating system rather than
// from bbolt finding the file's content invalid.
func isIOError(err error) bool {
	var (
		pe    *fs.PathError
		errno syscall.Errno
	)
	return errors.As(err, &pe) || errors.As(err, &errno)
}

// Reset moves the file at path aside, to path + ".corrupt-" + the
// UTC time (and a counter if that name is taken), and returns the new name.
// It is the way out of a file that Open reports as corrupt (config
// [store] on_corrupt = "reset"): the next Open starts an empty
// store, so the bans and escalation counts of the old file are lost (the old
// file is kept for inspection, e.g. with the bbolt command).
//
// It refuses to move a file that another process holds open (a running
// ftpguard), waiting at most half a second for the lock. It does not look at
// the file's content: it moves a good store too.
func Reset(path string) (moved string, err error) {
	if _, err := os.Lstat(path); err != nil {
		return "", fmt.Errorf("filestore: reset store file %s: %w", path, err)
	}
	// Probe the lock: a read-only open takes a shared lock, which fails
	// while another process holds the exclusive one. A file on which
	// bbolt panicked in this process stays locked by this process.
	if !poisoned.has(path) {
		db, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: resetLockTimeout})
		if errors.Is(err, berrors.ErrTimeout) {
			return "", fmt.Errorf("filestore: reset store file: %w", err)
		}
		if db != nil {
			db.Close()
		}
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	moved = path + ".corrupt-" + stamp
	for i := 1; ; i++ {
		if _, err := os.Lstat(moved); errors.Is(err, fs.ErrNotExist) {
			break
		}
		moved = fmt.Sprintf("%s.corrupt-%s.%d", path, stamp, i)
	}
	if err := os.Rename(path, moved); err != nil {
		return "", fmt.Errorf("filestore: reset store file %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return moved, fmt.Errorf("filestore: reset store file %s: sync directory: %w", path, err)
	}
	return moved, nil
}

// syncDir flushes the directory dir, so that a file created or renamed in
// it survives a power loss. Windows cannot flush a directory.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
