package geo

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/internal/geotest"
	"github.com/ftpguard/ftpguard/limiter"
)

func testDBs(t *testing.T) (country, asn string) {
	t.Helper()
	dir := t.TempDir()
	country, asn = filepath.Join(dir, "country.mmdb"), filepath.Join(dir, "asn.mmdb")
	if err := geotest.Country(country, map[string]string{
		"127.0.0.0/24": "XA", "127.0.1.0/24": "XB", "198.51.100.0/24": "XC", "2001:db8::/32": "XA"}); err != nil {
		t.Fatal(err)
	}
	if err := geotest.ASN(asn, map[string]string{"127.0.2.0/24": "64496", "2001:db8:5::/48": "64497"}); err != nil {
		t.Fatal(err)
	}
	return country, asn
}

func settings(t *testing.T, c Config) Settings {
	t.Helper()
	var p conf.Problems
	s := c.Settings(&p)
	if !p.OK() {
		t.Fatalf("problems: %v", p.List)
	}
	return s
}

// TestRules: lookups of IPv4 and IPv6 test addresses, first match wins,
// allow skips the rest, a budget rule has a limiter of its own, and the
// refusals are counted per configured country, else "other".
func TestRules(t *testing.T) {
	country, asn := testDBs(t)
	s := settings(t, Config{CountryDatabase: country, ASNDatabase: asn, CacheSize: 100, Rules: []RuleConfig{
		{Action: "allow", ASNs: []int64{64497}},
		{Action: "deny", Countries: []string{"XA"}, ASNs: []int64{64496}},
		{Action: "budget", Countries: []string{"XB"}, Failures: 1, BanTime: time.Hour},
	}})
	g, err := Open(s, limiter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	tests := []struct {
		addr    string
		info    Info
		refuse  bool
		limiter bool
	}{
		{"127.0.0.7", Info{Country: "XA"}, true, false},
		{"::ffff:127.0.0.8", Info{Country: "XA"}, true, false},
		{"127.0.1.7", Info{Country: "XB"}, false, true},
		{"127.0.2.7", Info{ASN: 64496}, true, false},
		{"198.51.100.7", Info{Country: "XC"}, false, false},
		{"2001:db8::7", Info{Country: "XA"}, true, false},
		{"2001:db8:5::7", Info{Country: "XA", ASN: 64497}, false, false}, // allow first
		{"127.0.9.9", Info{}, false, false},
	}
	for _, tt := range tests {
		for range 2 { // the second from the cache
			a := netip.MustParseAddr(tt.addr)
			if got := g.Lookup(a); got != tt.info {
				t.Errorf("Lookup(%s) = %+v, want %+v", tt.addr, got, tt.info)
			}
			if refuse, why := g.Gate(a); refuse != tt.refuse || refuse && !strings.Contains(why, "rule") {
				t.Errorf("Gate(%s) = %v %q, want %v", tt.addr, refuse, why, tt.refuse)
			}
			if refuse, why := g.Peek(a); refuse != tt.refuse || refuse && !strings.Contains(why, "rule") {
				t.Errorf("Peek(%s) = %v %q, want %v (and not counted)", tt.addr, refuse, why, tt.refuse)
			}
			if l := g.LimiterFor(a); (l != nil) != tt.limiter {
				t.Errorf("LimiterFor(%s) = %v", tt.addr, l)
			}
		}
	}
	// The budget rule: one failure bans, and the gate then refuses.
	a := netip.MustParseAddr("127.0.1.7")
	l := g.LimiterFor(a)
	at, _ := l.Begin(time.Now(), a, "", nil)
	if d := at.Settle(time.Now(), limiter.OutcomeFailure); !d.NewBan {
		t.Fatalf("budget rule: %+v", d)
	}
	if refuse, why := g.Gate(a); !refuse || !strings.Contains(why, "banned") {
		t.Fatalf("Gate after the budget rule's ban: %v %q", refuse, why)
	}
	// Listed with its rule, for the admin API's bans list; lifted by Unban.
	bans := g.Bans(time.Now())
	if len(bans) != 1 || bans[0].Key.String() != "127.0.1.7/32" || bans[0].Reason != "geo rule 3 (budget XB): budget" {
		t.Fatalf("Bans = %+v, want the budget rule's ban of 127.0.1.7/32", bans)
	}
	key := netip.MustParsePrefix("127.0.1.7/32")
	if !g.Unban(key) || g.Unban(key) {
		t.Fatal("Unban: want true once, then false")
	}
	if refuse, _ := g.Gate(a); refuse {
		t.Fatal("Gate refuses after Unban")
	}
	if len(g.Bans(time.Now())) != 0 {
		t.Fatal("Bans lists a lifted ban")
	}
	want := map[string]uint64{"XA": 6, "XB": 1, "other": 2} // the lifted ban refuses no more
	got := g.Refusals()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("refusals %v, want %v", got, want)
			break
		}
	}
}

// TestDatabaseErrors: a missing or corrupt database is an error naming the
// file, at start-up; at reload the old databases stay in use.
func TestDatabaseErrors(t *testing.T) {
	country, _ := testDBs(t)
	bad := filepath.Join(t.TempDir(), "corrupt.mmdb")
	os.WriteFile(bad, []byte("not a database"), 0o600)
	for _, path := range []string{"/nonexistent/GeoLite2-Country.mmdb", bad} {
		_, err := Open(settings(t, Config{CountryDatabase: path, CacheSize: 1}), limiter.Config{})
		if err == nil || !strings.Contains(err.Error(), "country_database "+path) {
			t.Errorf("Open(%s): %v", path, err)
		}
	}
	rules := []RuleConfig{{Action: "deny", Countries: []string{"XA"}}}
	g, err := Open(settings(t, Config{CountryDatabase: country, CacheSize: 10, Rules: rules}), limiter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Reload(settings(t, Config{CountryDatabase: bad, CacheSize: 10, Rules: rules}), limiter.Config{}); err == nil ||
		!strings.Contains(err.Error(), bad) {
		t.Fatalf("Reload with a corrupt database: %v", err)
	}
	if refuse, _ := g.Gate(netip.MustParseAddr("127.0.0.1")); !refuse {
		t.Fatal("after a failed reload the old database is not in use")
	}
}

// TestSettingsProblems: each bad [geo] key gets one clear message.
func TestSettingsProblems(t *testing.T) {
	tests := []struct {
		c    Config
		want string
	}{
		{Config{CacheSize: 0}, "geo.cache_size: must be ≥ 1, got 0"},
		{Config{CacheSize: 1, Rules: []RuleConfig{{Action: "block", Countries: []string{"XA"}}}}, `rule 1: action must be "allow", "deny" or "budget", got "block"`},
		{Config{CacheSize: 1, Rules: []RuleConfig{{Action: "deny"}}}, "rule 1: give countries, asns or both"},
		{Config{CacheSize: 1, CountryDatabase: "x", Rules: []RuleConfig{{Action: "deny", Countries: []string{"de"}}}}, `rule 1: country "de" is not an ISO 3166-1 alpha-2 code`},
		{Config{CacheSize: 1, Rules: []RuleConfig{{Action: "deny", Countries: []string{"DE"}}}}, "geo.country_database: rule 1 matches countries: a country database is needed"},
		{Config{CacheSize: 1, ASNDatabase: "x", Rules: []RuleConfig{{Action: "deny", ASNs: []int64{0}}}}, "rule 1: asn 0 is not in 1..4294967295"},
		{Config{CacheSize: 1, ASNDatabase: "x", Rules: []RuleConfig{{Action: "budget", ASNs: []int64{1}}}}, "rule 1: a budget rule needs failures ≥ 1, got 0"},
		{Config{CacheSize: 1, ASNDatabase: "x", Rules: []RuleConfig{{Action: "deny", ASNs: []int64{1}, Failures: 2}}}, `rule 1: failures and ban_time are for action = "budget" only`},
	}
	for _, tt := range tests {
		var p conf.Problems
		tt.c.Settings(&p)
		if len(p.List) != 1 || !strings.Contains(p.List[0].Error(), tt.want) {
			t.Errorf("%+v: problems %v, want one with %q", tt.c, p.List, tt.want)
		}
	}
}

// TestReloadKeepsBudgetsByRule: a budget rule's limiter follows the rule,
// not its position: with the rules reordered by a reload, the ban a rule
// made stays that rule's (listed with its new name), and the rule now in
// its old place does not inherit it; a rule that matches something new
// starts with no bans.
func TestReloadKeepsBudgetsByRule(t *testing.T) {
	country, _ := testDBs(t)
	xa := RuleConfig{Action: "budget", Countries: []string{"XA"}, Failures: 1, BanTime: time.Hour}
	xb := RuleConfig{Action: "budget", Countries: []string{"XB"}, Failures: 1, BanTime: time.Hour}
	g, err := Open(settings(t, Config{CountryDatabase: country, CacheSize: 10, Rules: []RuleConfig{xa, xb}}), limiter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	a := netip.MustParseAddr("127.0.0.7") // XA
	at, _ := g.LimiterFor(a).Begin(time.Now(), a, "", nil)
	if d := at.Settle(time.Now(), limiter.OutcomeFailure); !d.NewBan {
		t.Fatalf("rule XA: %+v", d)
	}
	if err := g.Reload(settings(t, Config{CountryDatabase: country, CacheSize: 10, Rules: []RuleConfig{xb, xa}}), limiter.Config{}); err != nil {
		t.Fatal(err)
	}
	if refuse, why := g.Gate(a); !refuse || !strings.Contains(why, "banned") {
		t.Fatalf("Gate(XA address) after the reorder: %v %q; want its ban kept", refuse, why)
	}
	bans := g.Bans(time.Now())
	if len(bans) != 1 || bans[0].Reason != "geo rule 2 (budget XA): budget" {
		t.Fatalf("Bans after the reorder = %+v; want the XA rule's ban under its new name", bans)
	}
	if l := g.LimiterFor(netip.MustParseAddr("127.0.1.7")); l == nil || len(l.Bans(time.Now())) != 0 {
		t.Fatalf("the XB rule, now first, holds %v; want no bans", l)
	}
	xc := RuleConfig{Action: "budget", Countries: []string{"XC"}, Failures: 1, BanTime: time.Hour}
	if err := g.Reload(settings(t, Config{CountryDatabase: country, CacheSize: 10, Rules: []RuleConfig{xc, xb}}), limiter.Config{}); err != nil {
		t.Fatal(err)
	}
	if len(g.Bans(time.Now())) != 0 {
		t.Fatalf("Bans after the XA rule left = %+v; want none", g.Bans(time.Now()))
	}
}
