package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeKeyPair writes a self-signed certificate for cn and its key as PEM
// files in dir and returns their paths.
func writeKeyPair(t *testing.T, dir, cn string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+".key")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	return cert, key
}

// TestCertInstalledOnlyWithAcceptedFile: loading a file puts no key pair
// in use; the proxy server holds the pair in use, and a reload hands it a
// new one; a file refused for any other key (here a user limit beyond its
// range) leaves the pair in use as it was, even though its own key pair is
// valid.
func TestCertInstalledOnlyWithAcceptedFile(t *testing.T) {
	dir := t.TempDir()
	tlsTable := func(cn string) string {
		cert, key := writeKeyPair(t, dir, cn)
		return fmt.Sprintf("[tls]\nmode = \"explicit\"\ncert = %q\nkey = %q\n", cert, key)
	}
	first := tlsTable("first")
	td := newTestDaemon(t, first)
	orig, _ := os.ReadFile(td.path)
	inUse := func() string {
		c := td.srv.KeyPair()
		if c == nil {
			return ""
		}
		x, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return x.Subject.CommonName
	}
	if got := inUse(); got != "first" {
		t.Fatalf("at start: %q in use, want first", got)
	}
	if _, err := LoadConfig(writeConfig(t, tlsTable("second"))); err != nil {
		t.Fatal(err)
	}
	if got := inUse(); got != "first" {
		t.Fatalf("after loading a second file: %q in use, want first (not installed yet)", got)
	}
	write := func(s string) {
		if err := os.WriteFile(td.path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	third := strings.Replace(string(orig), first, tlsTable("third"), 1) + "[user_limits]\nmax_names_per_key = 5000\n"
	write(third)
	if err := td.reload(); err == nil {
		t.Fatal("max_names_per_key = 5000 accepted")
	}
	if got := inUse(); got != "first" {
		t.Fatalf("after a refused file: %q in use, want first", got)
	}
	write(strings.Replace(string(orig), first, tlsTable("second"), 1))
	if err := td.reload(); err != nil {
		t.Fatal(err)
	}
	if got := inUse(); got != "second" {
		t.Fatalf("after installing the second: %q in use", got)
	}
}
