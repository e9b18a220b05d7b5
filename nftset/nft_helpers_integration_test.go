//go:build integration

// Helpers of the integration tests (nft_integration_test.go).

package nftset

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
)

var tableSeq atomic.Int32

// need skips t (fails it in CI) when nft or kernel nftables is missing.
func need(t *testing.T) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if _, err := exec.LookPath("nft"); err != nil {
		fail("nft CLI missing (apt-get install nftables): %v", err)
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	if err != nil {
		fail("no nftables support: %v", err)
	}
}

// testConfig returns a config for a table of t's own, deleted in cleanup.
func testConfig(t *testing.T, ports ...int) Config {
	t.Helper()
	need(t)
	cfg := DefaultConfig()
	cfg.Table = fmt.Sprintf("ftpguard-test-%d-%d", os.Getpid(), tableSeq.Add(1))
	for _, p := range ports {
		cfg.Ports = append(cfg.Ports, strconv.Itoa(p))
	}
	t.Cleanup(func() { deleteTable(t, cfg.Table) })
	return cfg
}

// deleteTable deletes table inet name if present, and nothing else.
func deleteTable(t *testing.T, name string) {
	c, err := nftables.New()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(tb)
	c.DelTable(tb)
	if err := c.Flush(); err != nil {
		t.Errorf("cleanup: delete table inet %s: %v", name, err)
	}
}

func open(t *testing.T, cfg Config) *Set {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// listen returns a TCP listener on addr that accepts and closes.
func listen(t *testing.T, addr string) (net.Listener, int) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, l.Addr().(*net.TCPAddr).Port
}

// connects reports whether from can connect to l within ~1 s.
func connects(t *testing.T, from string, l net.Listener) bool {
	t.Helper()
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", l.Addr().String())
	if err == nil {
		c.Close()
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	t.Fatalf("dial %s from %s: %v", l.Addr(), from, err)
	return false
}

// nftJSON runs nft -j with args and decodes its output.
func nftJSON(t *testing.T, args ...string) []map[string]json.RawMessage {
	t.Helper()
	out, err := exec.Command("nft", append([]string{"-j"}, args...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("nft -j %v: %v: %s", args, err, ee.Stderr)
		}
		t.Fatalf("nft -j %v: %v", args, err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j %v: %v: %s", args, err, out)
	}
	return doc.Nftables
}

// elem is one element of a listed set.
type elem struct {
	Val     string // "127.0.0.2", "10.0.0.0/24" or "10.0.0.1-10.0.0.4"
	Timeout int    // seconds, 0 for none
	Expires int
}

// listSet returns the elements of set name of table, as nft lists them.
func listSet(t *testing.T, table, name string) []elem {
	t.Helper()
	var out []elem
	for _, o := range nftJSON(t, "list", "set", "inet", table, name) {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var set struct {
			Elem []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &set); err != nil {
			t.Fatal(err)
		}
		for _, r := range set.Elem {
			var e struct {
				Elem *struct {
					Val     json.RawMessage `json:"val"`
					Timeout int             `json:"timeout"`
					Expires int             `json:"expires"`
				} `json:"elem"`
			}
			if err := json.Unmarshal(r, &e); err != nil {
				t.Fatal(err)
			}
			if e.Elem == nil { // a bare value: no timeout
				out = append(out, elem{Val: val(t, r)})
				continue
			}
			out = append(out, elem{Val: val(t, e.Elem.Val), Timeout: e.Elem.Timeout, Expires: e.Elem.Expires})
		}
	}
	return out
}

// val formats an nft JSON value: an address, {"prefix": …} or {"range": …}.
func val(t *testing.T, r json.RawMessage) string {
	var s string
	if json.Unmarshal(r, &s) == nil {
		return s
	}
	var v struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
	}
	if err := json.Unmarshal(r, &v); err != nil {
		t.Fatalf("element value %s: %v", r, err)
	}
	switch {
	case v.Prefix != nil:
		return v.Prefix.Addr + "/" + strconv.Itoa(v.Prefix.Len)
	case len(v.Range) == 2:
		return v.Range[0] + "-" + v.Range[1]
	}
	t.Fatalf("element value %s: unknown shape", r)
	return ""
}

func vals(es []elem) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Val)
	}
	slices.Sort(out)
	return out
}

// tables returns "family name handle" of every table.
func tables(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, o := range nftJSON(t, "list", "tables") {
		raw, ok := o["table"]
		if !ok {
			continue
		}
		var tb struct {
			Family string `json:"family"`
			Name   string `json:"name"`
			Handle int    `json:"handle"`
		}
		if err := json.Unmarshal(raw, &tb); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s %d", tb.Family, tb.Name, tb.Handle))
	}
	slices.Sort(out)
	return out
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// tableText returns nft list table with handles, timeouts and counters cut.
func tableText(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("nft", "-s", "list", "table", "inet", name).Output()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v", name, err)
	}
	return volatile.ReplaceAllString(string(out), "$1 …")
}

// volatile matches what changes between two listings of the same bans.
var volatile = regexp.MustCompile(`(timeout|expires|packets|bytes) [0-9a-z.]+`)

// tableHandle returns the handle of table inet name (a re-created table
// gets a new one).
func tableHandle(t *testing.T, name string) string {
	t.Helper()
	for _, tb := range tables(t) {
		if strings.HasPrefix(tb, "inet "+name+" ") {
			return tb
		}
	}
	t.Fatalf("table inet %s missing", name)
	return ""
}

// objects returns "chain NAME" and "set NAME" of table inet name.
func objects(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	for _, o := range nftJSON(t, "list", "table", "inet", name) {
		for _, kind := range []string{"chain", "set"} {
			if raw, ok := o[kind]; ok {
				var v struct {
					Name string `json:"name"`
				}
				if err := json.Unmarshal(raw, &v); err != nil {
					t.Fatal(err)
				}
				out = append(out, kind+" "+v.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}
