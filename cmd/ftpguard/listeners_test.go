package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/proxy"
)

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestReloadListeners: the listeners follow the config on reload. Turning
// implicit TLS on opens its port, a port that cannot be opened rejects the
// reload (nothing changes), turning it off closes the port, and a new
// listen address is served while the old one closes — no restart. Before,
// a reload kept the listeners of the start: implicit TLS turned on was not
// served, turned off it stayed open (and its first ClientHello panicked).
func TestReloadListeners(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeKeyPair(t, dir, "ftp.test")
	tlsTable := func(mode, implicit string) string {
		return fmt.Sprintf("[tls]\nmode = %q\ncert = %q\nkey = %q\nimplicit_listen = %q\n", mode, cert, key, implicit)
	}
	first := tlsTable("explicit", "127.0.0.1:990")
	td := newTestDaemon(t, first)
	orig, _ := os.ReadFile(td.path)
	errc := make(chan error, 1)
	ports := proxy.NewListeners(td.srv, td.log, errc)
	plan, err := ports.Prepare(td.settings().Proxy.Listen, td.settings().Proxy.ImplicitListen)
	if err != nil {
		t.Fatal(err)
	}
	ports.Commit(plan)
	td.setListeners(ports)
	t.Cleanup(func() { td.srv.Close() })

	write := func(listen, tlsT string) {
		t.Helper()
		s := strings.Replace(string(orig), first, tlsT, 1)
		s = strings.Replace(s, `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", listen), 1)
		if err := os.WriteFile(td.path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	handshake := func(addr string) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake()
	}
	greets := func(addr string) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 64)) // the backend closes at once: a 421 from the proxy
		return err
	}
	plain, open := ports.Addrs()
	if open != "" {
		t.Fatal("implicit listener open with mode = \"explicit\"")
	}

	implicit := freeAddr(t)
	write("127.0.0.1:0", tlsTable("implicit", implicit))
	if err := td.reload(); err != nil {
		t.Fatal(err)
	}
	if err := handshake(implicit); err != nil {
		t.Fatalf("implicit TLS turned on by reload: %v", err)
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	write("127.0.0.1:0", tlsTable("implicit", taken.Addr().String()))
	if err := td.reload(); err == nil || !strings.Contains(err.Error(), "tls.implicit_listen") {
		t.Fatalf("reload to a taken implicit port: %v, want a tls.implicit_listen error", err)
	}
	if err := handshake(implicit); err != nil {
		t.Fatalf("after a rejected reload the implicit port changed: %v", err)
	}

	moved := freeAddr(t)
	write(moved, tlsTable("explicit", implicit))
	if err := td.reload(); err != nil {
		t.Fatal(err)
	}
	if err := handshake(implicit); err == nil {
		t.Fatal("implicit port still answers TLS after a reload to mode = \"explicit\"")
	}
	if c, err := net.Dial("tcp", plain); err == nil {
		c.Close()
		t.Fatal("old listen address still open after listen moved")
	}
	if err := greets(moved); err != nil {
		t.Fatalf("new listen address: %v", err)
	}
	select {
	case err := <-errc:
		t.Fatalf("a listener closed by reload ended run: %v", err)
	default:
	}
}
