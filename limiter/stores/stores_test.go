package stores

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/filestore"
	"github.com/ftpguard/ftpguard/limiter/redisstore"
)

func TestDefault(t *testing.T) {
	want := Config{Kind: "file", Path: "ftpguard.db", OnCorrupt: "fail", Prefix: "ftpguard:", Timeout: 200 * time.Millisecond,
		SentinelAddrs: []string{}}
	if got := Default(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Default() = %+v, want %+v", got, want)
	}
	var p conf.Problems
	Default().Validate(&p)
	if !p.OK() {
		t.Fatalf("the default has problems: %v", p.List)
	}
}

// TestValidate: each bad key is one problem, worded as cmd/ftpguard's
// config tests expect.
func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Config)
		wants []string
	}{
		{"memory", func(c *Config) { c.Kind, c.Path = "memory", "" }, nil},
		{"redis", func(c *Config) { c.Kind, c.URL = "redis", "rediss://h:6380/1" }, nil},
		{"kind", func(c *Config) { c.Kind = "sqlite" }, []string{`store.kind: must be "memory", "file" or "redis", got "sqlite"`}},
		{"path", func(c *Config) { c.Path = "" }, []string{`store.path: must name the state file for kind = "file"`}},
		{"url", func(c *Config) { c.Kind, c.URL = "redis", "http://x" },
			[]string{`store.url: must be "redis://host:port/db" (or rediss://) for kind = "redis", got "http://x"`}},
		{"timeout", func(c *Config) { c.Kind, c.URL, c.Timeout = "redis", "redis://h:6379/0", 0 },
			[]string{`store.timeout: must be a positive duration such as "30s", got 0s`}},
		{"on_corrupt", func(c *Config) { c.OnCorrupt = "ignore" }, []string{`store.on_corrupt: must be "fail" or "reset", got "ignore"`}},
		{"sentinel", func(c *Config) {
			c.Kind, c.SentinelAddrs, c.SentinelMaster = "redis", []string{"127.0.0.1:26379", "[::1]:26380"}, "mymaster"
		}, nil},
		{"sentinel with a url for the db", func(c *Config) {
			c.Kind, c.URL, c.SentinelAddrs, c.SentinelMaster = "redis", "redis://ignored:6379/3", []string{"127.0.0.1:26379"}, "m"
		}, nil},
		{"sentinel without master", func(c *Config) { c.Kind, c.SentinelAddrs = "redis", []string{"127.0.0.1:26379", "nope"} },
			[]string{`store.sentinel_addrs: must be host:port, got "nope"…`, `store.sentinel_master: must name the master…`}},
		{"master without sentinels", func(c *Config) { c.Kind, c.URL, c.SentinelMaster = "redis", "redis://h:6379/0", "m" },
			[]string{`store.sentinel_master: is set but sentinel_addrs is not`}},
		{"password file missing", func(c *Config) { c.Kind, c.URL, c.PasswordFile = "redis", "redis://h:6379/0", "/nonexistent/pw" },
			[]string{`store.password_file: cannot be read…`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			var p conf.Problems
			c.Validate(&p)
			var got []string
			for _, q := range p.List {
				got = append(got, q.Error())
			}
			ok := len(got) == len(tt.wants)
			for i := 0; ok && i < len(got); i++ {
				if w, prefix := strings.CutSuffix(tt.wants[i], "…"); prefix {
					ok = strings.HasPrefix(got[i], w)
				} else {
					ok = got[i] == w
				}
			}
			if !ok {
				t.Fatalf("problems %q, want %q", got, tt.wants)
			}
		})
	}
}

func TestOpen(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	st, err := Open(Config{Kind: "memory"}, log)
	if _, ok := st.(*limiter.MemoryStore); err != nil || !ok {
		t.Fatalf("memory: %T, %v", st, err)
	}
	st.Close()

	path := filepath.Join(t.TempDir(), "state.db")
	st, err = Open(Config{Kind: "file", Path: path, OnCorrupt: "fail"}, log)
	if fs, ok := st.(*filestore.Store); err != nil || !ok || fs.Path() != path {
		t.Fatalf("file: %T, %v", st, err)
	}
	st.Close()

	st, err = Open(Config{Kind: "redis", URL: "redis://127.0.0.1:1/0", Prefix: "x:", Timeout: time.Second}, log)
	if _, ok := st.(*redisstore.Store); err != nil || !ok {
		t.Fatalf("redis (not contacted): %T, %v", st, err)
	}
	st.Close()
	if st, err := Open(Config{Kind: "redis", URL: "http://x"}, log); err == nil || st != nil {
		t.Fatalf("redis with a bad URL: %v, %v", st, err)
	}
}

// TestOpenCorrupt: a corrupt state file stops the start with on_corrupt =
// "fail", and is moved aside (and logged) with "reset".
func TestOpenCorrupt(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	path := filepath.Join(t.TempDir(), "state.db")
	junk := bytes.Repeat([]byte("not a bbolt file "), 1000)
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Kind: "file", Path: path, OnCorrupt: "fail"}, log)
	if !errors.Is(err, filestore.ErrCorrupt) || !strings.Contains(err.Error(), `on_corrupt = "reset"`) {
		t.Fatalf("fail: %v", err)
	}
	st, err := Open(Config{Kind: "file", Path: path, OnCorrupt: "reset"}, log)
	if err != nil {
		t.Fatalf("reset: %v", err)
	}
	defer st.Close()
	if bans, err := st.LoadBans(time.Time{}); err != nil || len(bans) != 0 {
		t.Fatalf("the new store holds %v, %v", bans, err)
	}
	moved, _ := filepath.Glob(path + ".corrupt-*")
	if len(moved) != 1 || !strings.Contains(logs.String(), "moved aside") {
		t.Fatalf("moved %v; log:\n%s", moved, logs.String())
	}
	if data, err := os.ReadFile(moved[0]); err != nil || !bytes.Equal(data, junk) {
		t.Fatalf("the corrupt file was not kept as it was: %v", err)
	}
}

// TestAttemptTTL: the time a guess in flight holds its place in a shared
// budget follows login_timeout (a PASS lives at most that long), never
// below the default. Before, it was 2 minutes whatever login_timeout said:
// with login_timeout = "10m" the place of a slow guess expired while it
// was still in flight.
func TestAttemptTTL(t *testing.T) {
	for _, tc := range []struct{ login, want time.Duration }{
		{30 * time.Second, redisstore.DefaultAttemptTTL},
		{time.Minute, redisstore.DefaultAttemptTTL},
		{90 * time.Second, 150 * time.Second},
		{10 * time.Minute, 11 * time.Minute},
	} {
		if got := AttemptTTLFor(tc.login); got != tc.want {
			t.Errorf("AttemptTTLFor(%v) = %v, want %v", tc.login, got, tc.want)
		}
	}
	c := Default()
	c.Kind, c.URL, c.AttemptTTL = "redis", "redis://127.0.0.1:1/0", AttemptTTLFor(10*time.Minute)
	st, err := Open(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := st.(*redisstore.Store).AttemptTTL(); got != 11*time.Minute {
		t.Fatalf("the store's AttemptTTL = %v, want 11m", got)
	}
}

// TestValidateHidesURLPassword: a store.url that is refused is quoted in
// the problem (printed by ftpguard check, logged by a rejected reload)
// without the password it may hold.
func TestValidateHidesURLPassword(t *testing.T) {
	for _, u := range []string{
		"http://user:s3cret@h:6379/0",  // parses, wrong scheme
		"redis://:s3cret@/0",           // parses, no host
		"redis://:s3cret@h:port/0",     // does not parse (port)
		"redis://u:s3%zzcret@h:6379/0", // does not parse (escape)
		":s3cret@h:6379",               // no scheme
	} {
		c := Default()
		c.Kind, c.URL = "redis", u
		var p conf.Problems
		c.Validate(&p)
		if p.OK() {
			t.Fatalf("%q: no problem", u)
		}
		for _, q := range p.List {
			if strings.Contains(q.Error(), "s3") {
				t.Errorf("%q: the password is in the problem: %s", u, q.Error())
			}
		}
	}
}
