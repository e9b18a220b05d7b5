package stores

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOpenWarnsEviction: Open of a Redis store warns when the server may
// evict keys (maxmemory-policy other than noeviction): an evicted ban: key
// would otherwise be a ban silently lost. A real redis-server.
func TestOpenWarnsEviction(t *testing.T) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" || os.Getenv("FTPGUARD_REQUIRE_DAEMONS") == "1" {
			t.Fatalf("redis-server is needed: %v", err)
		}
		t.Skip("redis-server not installed")
	}
	for _, tc := range []struct {
		policy string
		warn   bool
	}{{"noeviction", false}, {"allkeys-lru", true}, {"volatile-ttl", true}} {
		t.Run(tc.policy, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
				"--appendonly", "no", "--dir", t.TempDir(), "--maxmemory-policy", tc.policy)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			for deadline := time.Now().Add(10 * time.Second); ; {
				if c, err := net.Dial("tcp", addr); err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("redis-server did not listen")
				}
				time.Sleep(10 * time.Millisecond)
			}
			var logs bytes.Buffer
			c := Default()
			c.Kind, c.URL, c.Timeout = "redis", "redis://"+addr+"/0", 2*time.Second
			st, err := Open(c, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
			if got := strings.Contains(logs.String(), "maxmemory-policy is not noeviction"); got != tc.warn {
				t.Fatalf("warned %v, want %v:\n%s", got, tc.warn, logs.String())
			}
		})
	}
}
