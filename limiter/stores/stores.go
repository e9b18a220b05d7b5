// Package stores owns the [store] table of the config file: it validates
// it and opens the limiter.Store it names (a limiter.MemoryStore, a
// filestore.Store or a redisstore.Store).
package stores

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/filestore"
	"github.com/ftpguard/ftpguard/limiter/redisstore"
)

// Config is the [store] table of the config file. Its zero value is not the
// default: a file's missing keys keep the values of Default, so decode the
// file into Default().
type Config struct {
	// Kind is "memory", "file" or "redis".
	Kind string `toml:"kind"`
	// Path is the state file of kind "file".
	Path string `toml:"path"`
	// OnCorrupt is "fail" (a corrupt state file stops the start) or
	// "reset" (it is moved aside and a new one made).
	OnCorrupt string `toml:"on_corrupt"`
	// URL, Prefix and Timeout are redisstore.Options of kind "redis".
	URL     string        `toml:"url"`
	Prefix  string        `toml:"prefix"`
	Timeout time.Duration `toml:"timeout"`
	// FailClosed is limiter.Config.FailClosed: pass it to
	// limiter.LimitsConfig.Settings.
	FailClosed bool `toml:"fail_closed"`
	// SentinelAddrs and SentinelMaster make kind "redis" ask Redis
	// Sentinels for the master (redisstore.Options); URL then only gives
	// the db, user and TLS, and may be "".
	SentinelAddrs  []string `toml:"sentinel_addrs"`
	SentinelMaster string   `toml:"sentinel_master"`
	// PasswordFile holds the Redis password (one line), in place of one in
	// URL.
	PasswordFile string `toml:"password_file"`
	// AttemptTTL is redisstore.Options.AttemptTTL, not a key of the file:
	// the caller sets it from [sessions] login_timeout with AttemptTTLFor
	// (zero: redisstore.DefaultAttemptTTL).
	AttemptTTL time.Duration `toml:"-"`
	// MaxBans is filestore.Options.MaxBans, not a key of the file: the
	// caller sets it to the limiter's max_tracked (0: no bound).
	MaxBans int `toml:"-"`
	// PruneBefore is filestore.Options.PruneBefore, not a key of the
	// file: the caller passes the current time (the zero time: nothing is
	// pruned at open). Open never reads the clock itself.
	PruneBefore time.Time `toml:"-"`
}

// attemptTTLMargin is what AttemptTTLFor adds to login_timeout.
const attemptTTLMargin = time.Minute

// AttemptTTLFor is how long an attempt in flight holds its place in a
// shared budget (redisstore.Options.AttemptTTL) for a login_timeout: no
// PASS outlives its session's login_timeout (the session is then closed
// and the attempt settled), so login_timeout plus a minute, and at least
// redisstore.DefaultAttemptTTL. A place that expired while its guess was
// still in flight would let a key overrun its budget.
func AttemptTTLFor(loginTimeout time.Duration) time.Duration {
	return max(redisstore.DefaultAttemptTTL, loginTimeout+attemptTTLMargin)
}

// Default returns the [store] settings used for every key a file leaves
// out: a state file "ftpguard.db" that must not be corrupt.
func Default() Config {
	return Config{Kind: "file", Path: "ftpguard.db", OnCorrupt: "fail",
		Prefix: redisstore.DefaultPrefix, Timeout: redisstore.DefaultTimeout, SentinelAddrs: []string{}}
}

// Validate adds each bad key of c to p (as "store.url" and so on).
func (c Config) Validate(p *conf.Problems) {
	switch c.Kind {
	case "memory":
	case "file":
		if c.Path == "" {
			p.Add("store.path", "must name the state file for kind = \"file\"")
		}
	case "redis":
		sentinel := len(c.SentinelAddrs) > 0
		if sentinel && c.URL == "" {
			// the master's address comes from the sentinels
		} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			p.Add("store.url", "must be \"redis://host:port/db\" (or rediss://) for kind = \"redis\", got %q", conf.RedactURL(c.URL))
		}
		for _, a := range c.SentinelAddrs {
			p.HostPort("store.sentinel_addrs", a)
		}
		if sentinel && c.SentinelMaster == "" {
			p.Add("store.sentinel_master", "must name the master the sentinels monitor (sentinel monitor NAME …) when sentinel_addrs is set")
		}
		if !sentinel && c.SentinelMaster != "" {
			p.Add("store.sentinel_master", "is set but sentinel_addrs is not")
		}
		if c.PasswordFile != "" {
			if _, err := readPassword(c.PasswordFile); err != nil {
				p.Add("store.password_file", "%v", err)
			}
		}
		p.Positive("store.timeout", c.Timeout)
	default:
		p.OneOf("store.kind", c.Kind, "memory", "file", "redis")
	}
	p.OneOf("store.on_corrupt", c.OnCorrupt, "fail", "reset")
}

// Open opens the store c names (c passed Validate); log receives what
// happens to the state file and, for Redis, the store's own messages. The
// caller closes the store, after the limiter on it.
//
// A corrupt state file (filestore.ErrCorrupt) stops the start, as bans must
// not be forgotten silently, unless OnCorrupt is "reset": then it is moved
// aside (filestore.Reset), logged, and a new one is made. A Redis store is
// asked only its maxmemory-policy here (a warning unless noeviction; at
// most the store's timeout): a limiter starting while Redis is down
// decides locally until it is back.
func Open(c Config, log *slog.Logger) (limiter.Store, error) {
	if log == nil {
		log = slog.Default()
	}
	switch c.Kind {
	case "file":
		// Records past their forget time are dropped before anything loads
		// them, the excess over MaxBans too; a mostly free file is compacted.
		opt := filestore.Options{MaxBans: c.MaxBans, PruneBefore: c.PruneBefore}
		fs, err := filestore.Open(c.Path, opt)
		if errors.Is(err, filestore.ErrCorrupt) && c.OnCorrupt == "reset" {
			moved, merr := filestore.Reset(c.Path)
			if merr != nil {
				return nil, fmt.Errorf("%w (and moving it aside failed: %v)", err, merr)
			}
			log.Error("state file corrupt; moved aside, starting with no bans", "err", err, "moved_to", moved)
			fs, err = filestore.Open(c.Path, opt)
		}
		if errors.Is(err, filestore.ErrCorrupt) {
			return nil, fmt.Errorf("%w\nftpguard refuses to start rather than forget bans: repair or move the file, or set [store] on_corrupt = \"reset\"", err)
		}
		if err != nil {
			return nil, err
		}
		log.Info("state file", "path", fs.Path())
		return fs, nil
	case "redis":
		var pw string
		if c.PasswordFile != "" {
			var err error
			if pw, err = readPassword(c.PasswordFile); err != nil {
				return nil, fmt.Errorf("stores: store.password_file: %w", err)
			}
		}
		st, err := redisstore.New(redisstore.Options{URL: c.URL, Prefix: c.Prefix, Timeout: c.Timeout, Logger: log,
			AttemptTTL: c.AttemptTTL, SentinelAddrs: c.SentinelAddrs, SentinelMaster: c.SentinelMaster, Password: pw})
		if err != nil {
			return nil, err // not a nil *redisstore.Store in a non-nil Store
		}
		warnEviction(st, log)
		return st, nil
	default:
		return limiter.NewMemoryStore(), nil
	}
}

// maxPasswordFile bounds the password file: it holds one line.
const maxPasswordFile = 4096

// readPassword reads the one-line password file at path.
func readPassword(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot be read: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return "", fmt.Errorf("cannot be read: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if len(b) > maxPasswordFile || v == "" || strings.ContainsAny(v, "\r\n") {
		return "", fmt.Errorf("must hold one non-empty line of at most %d bytes, in %s", maxPasswordFile, path)
	}
	return v, nil
}

// warnEviction logs a warning when the Redis server may evict keys (its
// maxmemory-policy is not noeviction): an evicted ban record is a ban lost
// until a limiter that knows it writes it back. Redis unreachable: nothing
// is logged here (the limiter says so).
func warnEviction(st *redisstore.Store, log *slog.Logger) {
	p, err := st.EvictionPolicy(context.Background())
	switch {
	case err != nil && strings.Contains(err.Error(), "ERR"):
		log.Warn("redis: cannot read maxmemory-policy; make sure it is noeviction", "err", err)
	case err == nil && p != "noeviction":
		log.Warn("redis: maxmemory-policy is not noeviction: bans may be evicted under memory pressure; set maxmemory-policy noeviction",
			"maxmemory_policy", p)
	}
}
