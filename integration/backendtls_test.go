//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// TestBackendTLS: with [tls] backend_tls ftpguard speaks explicit FTPS to
// a vsftpd that insists on it (force_local_logins_ssl, force_local_data_ssl,
// and require_ssl_reuse: every data connection must resume the control
// connection's TLS session), whatever the client speaks; seven data
// connections in one session; failed logins still counted.
func TestBackendTLS(t *testing.T) {
	lines := testCert(t, "off")
	m := regexp.MustCompile(`cert = "([^"]+)"\nkey = "([^"]+)"`).FindStringSubmatch(lines)
	d := startVsftpd(t, "ssl_enable=YES", "rsa_cert_file="+m[1], "rsa_private_key_file="+m[2],
		"ssl_ciphers=HIGH", "ssl_tlsv1=YES", "ssl_sslv2=NO", "ssl_sslv3=NO",
		"force_local_logins_ssl=YES", "force_local_data_ssl=YES", "require_ssl_reuse=YES")
	g := startGuard(t, d.Addr, guardOpts{Failures: 3,
		Extra: fmt.Sprintf("[tls]\nmode = \"explicit\"\ncert = %q\nkey = %q\nbackend_tls = true\n", m[1], m[2])})
	name := fmt.Sprintf("btls-%d.bin", time.Now().UnixNano())
	path, want := randomFile(t, testHome, name, 2<<20)
	t.Cleanup(func() { os.Remove(path) })
	url := fmt.Sprintf("ftp://%s:%s@%s/", testUser, testPass, g.Addr)

	t.Run("plain client", func(t *testing.T) {
		checkCurlTransfers(t, url, name, want, "--interface", "127.0.0.110")
	})
	t.Run("FTPS client", func(t *testing.T) {
		checkCurlTransfers(t, url, name, want, "--ssl-reqd", "-k", "--interface", "127.0.0.110")
	})
	t.Run("active mode", func(t *testing.T) {
		checkCurlTransfers(t, url, name, want, "--interface", "127.0.0.110", "--ftp-port", "127.0.0.110")
	})
	t.Run("seven data connections", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		lftp(t, "127.0.0.111", g.Addr, "set ftp:ssl-allow no; set cache:enable no; cls; cls; cls; cls; cls; cls; get "+name+" -o "+out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("download: %d bytes; want %d identical bytes", len(got), len(want))
		}
	})
	t.Run("failures counted", func(t *testing.T) {
		offend(t, g, "127.0.0.112", 3)
		waitFor(t, "the ban", func() bool { return g.Count(t, "ban", "key", "127.0.0.112/32") == 1 })
	})
}
