//go:build integration

package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needNft skips t (fails it in CI) without nft or kernel nftables, and
// returns a table name of t's own, deleted in cleanup even on failure
// (registered before anything that could fail).
func needNft(t *testing.T) string {
	t.Helper()
	return nftTableOf(t, fmt.Sprintf("ftpguard-test-%d", os.Getpid()))
}

// nftTableOf skips t (fails it in CI) without nft or kernel nftables, and
// returns name, a table of t's own deleted in cleanup even on failure.
func nftTableOf(t *testing.T, name string) string {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if _, err := exec.LookPath("nft"); err != nil {
		fail("nft CLI missing (apt-get install nftables): %v", err)
	}
	if out, err := exec.Command("nft", "list", "tables", "inet").CombinedOutput(); err != nil {
		fail("no nftables support: %v: %s", err, out)
	}
	t.Cleanup(func() { deleteNftTable(t, name) })
	return name
}

// deleteNftTable deletes table inet name if present, and nothing else.
func deleteNftTable(t *testing.T, name string) {
	if out, err := exec.Command("nft", "list", "table", "inet", name).CombinedOutput(); err != nil {
		return // absent
	} else if !strings.Contains(string(out), "table inet "+name) {
		return
	}
	if out, err := exec.Command("nft", "delete", "table", "inet", name).CombinedOutput(); err != nil {
		t.Errorf("cleanup: nft delete table inet %s: %v: %s", name, err, out)
	}
}

// nftSetElems returns the elements of set inet table name as nft -j
// prints them (nil: no such set, or table, yet).
func nftSetElems(t *testing.T, table, name string) []json.RawMessage {
	t.Helper()
	out, err := exec.Command("nft", "-j", "list", "set", "inet", table, name).Output()
	if err != nil {
		return nil
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j list set: %v: %s", err, out)
	}
	var elems []json.RawMessage
	for _, o := range doc.Nftables {
		if o.Set != nil {
			elems = append(elems, o.Set.Elem...)
		}
	}
	return elems
}

// nftElems returns the elements of set inet table name: value → timeout
// (seconds). Values are as nft -j prints single addresses and prefixes.
func nftElems(t *testing.T, table, name string) map[string]int {
	t.Helper()
	elems := nftSetElems(t, table, name)
	if elems == nil {
		return nil // no such table (yet)
	}
	m := map[string]int{}
	for _, r := range elems {
		var e struct {
			Elem struct {
				Val     json.RawMessage `json:"val"`
				Timeout int             `json:"timeout"`
			} `json:"elem"`
		}
		if json.Unmarshal(r, &e) != nil || e.Elem.Val == nil {
			m[strings.Trim(string(r), `"`)] = 0
			continue
		}
		var v string
		if json.Unmarshal(e.Elem.Val, &v) != nil {
			v = string(e.Elem.Val) // a prefix or range object, kept raw
		}
		m[v] = e.Elem.Timeout
	}
	return m
}

// synAnswered reports whether a TCP connection from src to addr is
// answered within 1 s (false: it timed out, no SYN-ACK; a refusal fails).
func synAnswered(t *testing.T, src, addr string) bool {
	t.Helper()
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err == nil {
		c.Close()
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	t.Fatalf("dial %s from %s: %v", addr, src, err)
	return false
}

// TestNftables: [firewall] kind = "nftables" with the real binary, vsftpd
// and the kernel's nftables, in a table of the test's own: ports left
// empty are the proxy's (listen, passive); a key ftpguard bans gets no
// SYN-ACK on the proxy's port while another address connects and logs in;
// the element's timeout is the ban's; after a restart (with the table gone,
// as after a reboot) the table is re-created with the ban from the state
// file.
func TestNftables(t *testing.T) {
	table := needNft(t)
	const budget = 3
	const attacker, bystander = "127.0.0.94", "127.0.0.95"
	d := startVsftpd(t)
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	o := guardOpts{Failures: budget, BanTime: "1h", Dir: dir, Listen: listen,
		Extra: fmt.Sprintf("[firewall]\nkind = \"nftables\"\ntable = %q\n", table)}
	g := startGuard(t, d.Addr, o)
	waitFor(t, "the table synced", func() bool { return g.Count(t, "nftables table synced", "table", table) == 1 })
	if !synAnswered(t, attacker, g.Addr) {
		t.Fatal("the attacker's address is dropped before any ban")
	}

	bruteForce(t, g.Addr, attacker, 1, budget+1)
	waitFor(t, "ftpguard's ban", func() bool { return g.Count(t, "ban", "key", attacker+"/32") >= 1 })
	banned := time.Now()
	var timeout int
	waitFor(t, "the ban in banned4", func() bool {
		var ok bool
		timeout, ok = nftElems(t, table, "banned4")[attacker]
		return ok
	})
	t.Logf("ban → element in banned4 after %v (timeout %ds)", time.Since(banned).Round(time.Millisecond), timeout)
	if timeout < 3600-10 || timeout > 3600 {
		t.Errorf("element timeout %ds, want ≈ 3600 (ban_time 1h)", timeout)
	}
	start := time.Now()
	if synAnswered(t, attacker, g.Addr) {
		t.Fatal("the banned address still gets a SYN-ACK on the proxy's port")
	}
	t.Logf("banned %s: connect timed out after %v (no SYN-ACK)", attacker, time.Since(start).Round(time.Millisecond))
	if n := len(nftElems(t, table, "banned4")); n != 1 {
		t.Errorf("banned4 holds %d elements, want 1", n)
	}
	// Legitimate users first: another address connects and logs in.
	c, err := ftpClient(t, bystander, g.Addr)
	if err != nil {
		t.Fatalf("bystander: %v", err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatalf("bystander login: %v", err)
	}
	c.Quit()
	port, _ := strconv.Atoi(strings.Split(listen, ":")[1])
	if !portInSet(t, table, port) {
		out, _ := exec.Command("nft", "list", "table", "inet", table).CombinedOutput()
		t.Errorf("the drop rule's ports do not cover the proxy's port %s:\n%s", listen, out)
	}

	// Restart: stop ftpguard, lose the table (a reboot), start again.
	g.cmd.Process.Signal(syscall.SIGTERM)
	err = <-g.exited
	g.exited <- err // for the harness's cleanup
	deleteNftTable(t, table)
	if nftElems(t, table, "banned4") != nil {
		t.Fatal("the table is still there")
	}
	restarted := time.Now()
	g2 := startGuard(t, d.Addr, o)
	waitFor(t, "the table re-created", func() bool { _, ok := nftElems(t, table, "banned4")[attacker]; return ok })
	timeout = nftElems(t, table, "banned4")[attacker]
	left := int(time.Until(banned.Add(time.Hour)).Seconds())
	t.Logf("restart → table re-created with the ban after %v (timeout %ds, ban has %ds left)",
		time.Since(restarted).Round(time.Millisecond), timeout, left)
	if timeout < left-10 || timeout > left+10 {
		t.Errorf("after restart the element's timeout is %ds, want ≈ %ds", timeout, left)
	}
	if synAnswered(t, attacker, g2.Addr) {
		t.Error("after restart the banned address gets a SYN-ACK")
	}
	if !synAnswered(t, bystander, g2.Addr) {
		t.Error("after restart the bystander gets no SYN-ACK")
	}
}

// portInSet reports whether the set "ports" of table holds port: as a
// port, or inside a range (nft merges neighbouring ports into a range, so
// the proxy's port may show only inside one, e.g. the passive range's).
func portInSet(t *testing.T, table string, port int) bool {
	t.Helper()
	for _, r := range nftSetElems(t, table, "ports") {
		var one int
		var rng struct {
			Range [2]int `json:"range"`
		}
		switch {
		case json.Unmarshal(r, &one) == nil:
			if one == port {
				return true
			}
		case json.Unmarshal(r, &rng) == nil:
			if rng.Range[0] <= port && port <= rng.Range[1] {
				return true
			}
		}
	}
	return false
}
