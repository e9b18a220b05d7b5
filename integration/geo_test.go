//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftpguard/ftpguard/internal/geotest"
)

// TestGeoRules: country and ASN rules over test databases built here
// (127.0.x.0/24 and PROXY-supplied documentation addresses mapped to test
// countries). A denied country is refused at the gate, IPv4 and IPv6 (the
// daemon never sees it); a budget rule bans after its own budget; other
// countries keep the [limits] budget; the allowlist wins over a deny; a
// reload re-reads the database, and a corrupt one is refused with its name
// while the old one stays in use; the refusals are counted per country.
func TestGeoRules(t *testing.T) {
	dir := t.TempDir()
	country, asn := filepath.Join(dir, "country.mmdb"), filepath.Join(dir, "asn.mmdb")
	nets := map[string]string{"127.0.3.0/24": "XA", "127.0.4.0/24": "XB", "127.0.5.0/24": "XC",
		"198.51.100.0/24": "XC", "2001:db8::/32": "XA"}
	if err := geotest.Country(country, nets); err != nil {
		t.Fatal(err)
	}
	if err := geotest.ASN(asn, map[string]string{"127.0.7.0/24": "64496"}); err != nil {
		t.Fatal(err)
	}
	d := startVsftpd(t)
	g := adminGuard(t, d.Addr, guardOpts{Failures: 5, Extra: fmt.Sprintf(`
[proxy_protocol]
trusted = ["127.0.0.30/32"]

[geo]
country_database = %q
asn_database = %q

[[geo.rule]]
action = "deny"
countries = ["XA"]
asns = [64496]

[[geo.rule]]
action = "budget"
countries = ["XB"]
failures = 1
ban_time = "1h"
`, country, asn)})
	gate := func(r *raw) int { code, _ := r.reply(); return code }
	try := func(r *raw, pass string) int {
		r.expect(220)
		r.send("USER "+testUser, "PASS "+pass)
		r.expect(331)
		code, _ := r.reply()
		r.c.Close()
		return code
	}
	for _, src := range []string{"127.0.3.7", "127.0.7.7"} { // XA; AS64496
		if code := gate(dialRaw(t, src, g.Addr)); code != 421 {
			t.Fatalf("denied %s: %d, want 421 at the gate", src, code)
		}
	}
	if code := gate(dialViaBalancer(t, "127.0.0.30", g.Addr, "[2001:db8::7]:4000")); code != 421 {
		t.Fatalf("denied 2001:db8::7 through the balancer: %d", code)
	}
	if code := try(dialViaBalancer(t, "127.0.0.30", g.Addr, "198.51.100.7:4000"), testPass); code != 230 {
		t.Fatalf("198.51.100.7 (XC, no rule): %d, want 230", code)
	}
	// The budget rule: one failure bans 127.0.4.7; XC keeps [limits]' 5.
	if code := try(dialRaw(t, "127.0.4.7", g.Addr), "wrong"); code != 530 {
		t.Fatalf("XB's first guess: %d", code)
	}
	if code := gate(dialRaw(t, "127.0.4.7", g.Addr)); code != 421 {
		t.Fatalf("XB after its budget rule's one failure: %d, want 421", code)
	}
	// The budget rule's ban is listed with its rule (GET /bans, bans list),
	// and bans del lifts it.
	if code, body := g.admin(t, "GET", "/bans", adminToken, ""); code != 200 || !strings.Contains(body, `"key": "127.0.4.7/32"`) ||
		!strings.Contains(body, "geo rule 2 (budget XB): budget") {
		t.Fatalf("GET /bans: %d %s, want the budget rule's ban of 127.0.4.7", code, body)
	}
	rc, out, errs := ftpguardCLI(t, "bans", "list", "-config", g.Config, "-admin", g.AdminAddr)
	if rc != 0 || !strings.Contains(out, "127.0.4.7/32") || !strings.Contains(out, "geo rule 2 (budget XB): budget") {
		t.Fatalf("bans list: %d\n%s%s", rc, out, errs)
	}
	t.Logf("ftpguard bans list:\n%s", out)
	if rc, out, errs := ftpguardCLI(t, "bans", "del", "-config", g.Config, "-admin", g.AdminAddr, "127.0.4.7"); rc != 0 {
		t.Fatalf("bans del of the budget rule's ban: %d %s%s", rc, out, errs)
	}
	if code := try(dialRaw(t, "127.0.4.7", g.Addr), testPass); code != 230 {
		t.Fatalf("127.0.4.7 after bans del: %d, want 230", code)
	}
	for range 2 {
		if code := try(dialRaw(t, "127.0.5.7", g.Addr), "wrong"); code != 530 {
			t.Fatalf("XC's guess: %d, want 530 (its budget is [limits]')", code)
		}
	}
	if n := d.FailedLogins(t); n != 3 {
		t.Fatalf("vsftpd saw %d failed logins, want 3 (XB's one, XC's two; none of the denied)", n)
	}
	// Reload: a new database (127.0.6.0/24 now XA) and the allowlist.
	nets["127.0.6.0/24"] = "XA"
	if err := geotest.Country(country, nets); err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(g.Config)
	os.WriteFile(g.Config, bytes.Replace(conf, []byte(`failure_delay = "0s"`),
		[]byte(`failure_delay = "0s"`+"\nallow = [\"127.0.3.9/32\"]"), 1), 0o600)
	if code, out, errs := ftpguardCLI(t, "reload", "-config", g.Config, "-admin", g.AdminAddr); code != 0 {
		t.Fatalf("reload: %d %q %q", code, out, errs)
	}
	if code := gate(dialRaw(t, "127.0.6.7", g.Addr)); code != 421 {
		t.Fatalf("127.0.6.7 after the database was re-read: %d, want 421", code)
	}
	if code := try(dialRaw(t, "127.0.3.9", g.Addr), testPass); code != 230 {
		t.Fatalf("allowlisted 127.0.3.9 in a denied country: %d, want 230 (the allowlist wins)", code)
	}
	// A corrupt database at reload: refused with its name, the old one stays.
	os.WriteFile(country, []byte("garbage"), 0o600)
	code, _, errs := ftpguardCLI(t, "reload", "-config", g.Config, "-admin", g.AdminAddr)
	if code != 1 || !strings.Contains(errs, "country_database "+country) {
		t.Fatalf("reload with a corrupt database: %d %q", code, errs)
	}
	if code := gate(dialRaw(t, "127.0.3.7", g.Addr)); code != 421 {
		t.Fatalf("after the rejected reload: %d, want 421 (old database in use)", code)
	}
	if got := g.metric(t, `ftpguard_geo_refusals_total{country="XA"}`); got != 4 {
		t.Errorf("refusals{XA}: %v, want 4", got)
	}
	if got := g.metric(t, `ftpguard_geo_refusals_total{country="other"}`); got != 1 {
		t.Errorf("refusals{other}: %v, want 1 (AS64496)", got)
	}
	if got := g.metric(t, `ftpguard_geo_refusals_total{country="XB"}`); got != 1 {
		t.Errorf("refusals{XB}: %v, want 1", got)
	}
	if n := g.Count(t, "reject", "reason", "geo"); n != 6 {
		t.Errorf("%d geo rejects logged, want 6", n)
	}
}
