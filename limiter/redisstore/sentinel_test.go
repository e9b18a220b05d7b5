package redisstore

import (
	"strings"
	"testing"
)

// TestBaseOptions: with sentinels the URL only gives the db (and may be
// ""), sentinel_master is required, and Password replaces the URL's.
func TestBaseOptions(t *testing.T) {
	sent := []string{"127.0.0.1:26379"}
	for _, c := range []struct {
		name     string
		opt      Options
		err      string
		db       int
		password string
	}{
		{"plain", Options{URL: "redis://:pw@127.0.0.1:6379/2"}, "", 2, "pw"},
		{"plain, password file", Options{URL: "redis://:pw@127.0.0.1:6379/2", Password: "file"}, "", 2, "file"},
		{"no url", Options{}, "url is required", 0, ""},
		{"sentinel, no url", Options{SentinelAddrs: sent, SentinelMaster: "m"}, "", 0, ""},
		{"sentinel, url for the db", Options{URL: "redis://ignored:1/5", SentinelAddrs: sent, SentinelMaster: "m", Password: "s"}, "", 5, "s"},
		{"sentinel without master", Options{SentinelAddrs: sent}, "sentinel_master is required", 0, ""},
		{"bad url", Options{URL: "http://x", SentinelAddrs: sent, SentinelMaster: "m"}, "url", 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := baseOptions(c.opt)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.DB != c.db || o.Password != c.password {
				t.Fatalf("options db %d password %q, want db %d password %q", o.DB, o.Password, c.db, c.password)
			}
			st, err := New(c.opt)
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
		})
	}
}
