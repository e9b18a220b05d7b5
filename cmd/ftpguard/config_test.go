package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/nftnat"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ftpguard.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExampleConfigLoads: config.example.toml is valid and equals the
// defaults, so the documentation cannot drift from the code.
func TestExampleConfigLoads(t *testing.T) {
	st, err := LoadConfig("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	var p conf.Problems
	def := DefaultConfig().settings(&p)
	if !p.OK() {
		t.Fatalf("defaults invalid: %v", p.List)
	}
	got, want := st.File, def.File
	want.Store.Path = "../../ftpguard.db" // relative paths are taken from the config file's directory
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config.example.toml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestEmptyConfigTakesDefaults(t *testing.T) {
	st, err := LoadConfig(writeConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if st.Proxy.Listen != "0.0.0.0:21" || st.Proxy.Backend != "127.0.0.1:2121" || st.Limiter.Failures != 5 ||
		st.Limiter.Window != 10*time.Minute || st.Proxy.MaxLine != 2048 || !st.Limiter.CountUserRejects {
		t.Fatalf("defaults not applied: %+v", st)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string // substrings of the error, after "PATH"
	}{
		{"unknown key", "[limits]\nfailure = 3\n", []string{":2 limits.failure: unknown key"}},
		{"geo rule", "[geo]\ncountry_database = \"/x.mmdb\"\n[[geo.rule]]\naction = \"deny\"\ncountries = [\"de\"]\n",
			[]string{`:3 geo.rule: rule 1: country "de" is not an ISO 3166-1 alpha-2 code in capitals`}},
		{"trap name", "[user_limits]\ntrap_usernames = [\"root\", \" admin\"]\n",
			[]string{`:2 user_limits.trap_usernames: entry 2 (" admin") has leading or trailing spaces`}},
		{"unknown table", "[bogus]\nx = 1\n", []string{":1 bogus: unknown key", ":2 bogus.x: unknown key"}},
		{"wrong type", "[limits]\nfailures = \"five\"\n", []string{":2 limits.failures:"}},
		{"bad duration", "[limits]\nwindow = \"ten minutes\"\n", []string{":2 limits.window:"}},
		{"zero failures", "[limits]\nfailures = 0\n", []string{":2 limits.failures: must be ≥ 1"}},
		{"negative duration", "[sessions]\nidle_timeout = \"-1s\"\n", []string{":2 sessions.idle_timeout: must be a positive duration"}},
		{"ban factor", "[limits]\nban_factor = 0.5\n", []string{":2 limits.ban_factor: must be ≥ 1"}},
		{"max ban below ban", "[limits]\nban_time = \"2h\"\nmax_ban_time = \"1h\"\n", []string{":3 limits.max_ban_time: must be ≥ ban_time"}},
		{"prefix", "[limits]\nipv6_prefix = 129\n", []string{":2 limits.ipv6_prefix: must be 1–128"}},
		{"allow", "[limits]\nallow = [\"10.0.0.0/8\", \"nope\"]\n", []string{":2 limits.allow: \"nope\" is not an IP address or CIDR"}},
		{"passive name", "[passive]\naddress = \"ftp.example.com\"\n", []string{":2 passive.address: must be an IP address (never a name"}},
		{"passive ports", "[passive]\nports = \"60000-50000\"\n", []string{":2 passive.ports: must be"}},
		{"privileged passive port", "[passive]\nports = \"21-30\"\n", []string{":2 passive.ports: must be"}},
		{"listen", "listen = \"nowhere\"\n", []string{":1 listen: must be host:port"}},
		{"backend", "[backend]\naddress = \"127.0.0.1:99999\"\n", []string{":2 backend.address: port must be"}},
		{"store kind", "[store]\nkind = \"sqlite\"\n", []string{":2 store.kind: must be \"memory\", \"file\" or \"redis\""}},
		{"redis url", "[store]\nkind = \"redis\"\nurl = \"http://x\"\n", []string{":3 store.url: must be \"redis://host:port/db\""}},
		{"on_corrupt", "[store]\non_corrupt = \"ignore\"\n", []string{":2 store.on_corrupt: must be \"fail\" or \"reset\""}},
		{"log", "[log]\nlevel = \"loud\"\nformat = \"xml\"\n", []string{":2 log.level:", ":3 log.format:"}},
		{"syntax", "listen = \n", []string{":1"}},
		{"send_proxy", "[backend]\nsend_proxy = \"v3\"\n", []string{":2 backend.send_proxy: must be \"off\", \"v1\" or \"v2\""}},
		{"trusted", "[proxy_protocol]\ntrusted = [\"lb.example\"]\n", []string{":2 proxy_protocol.trusted: \"lb.example\" is not an IP address or CIDR"}},
		{"timer slack", "timer_slack = \"1s\"\n", []string{":1 timer_slack: must be between 0s (the slack ftpguard started with) and 100ms, got 1s"}},
		{"negative timer slack", "timer_slack = \"-1ms\"\n", []string{":1 timer_slack: must be between 0s"}},
		{"all at once", "[limits]\nfailures = 0\nbogus = 1\n", []string{":2 limits.failures", ":3 limits.bogus: unknown key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeConfig(t, tt.text)
			_, err := LoadConfig(p)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), p+w) {
					t.Errorf("error lacks %q:\n%v", p+w, err)
				}
			}
		})
	}
}

func TestConfigValues(t *testing.T) {
	st, err := LoadConfig(writeConfig(t, `
[passive]
address = "::ffff:192.0.2.7"
ports = "40000-40009"
[limits]
allow = ["192.0.2.0/24", "2001:db8::1", "::ffff:198.51.100.0/120"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if st.Proxy.PassiveAddr.String() != "192.0.2.7" {
		t.Errorf("passive address %v; want unmapped 192.0.2.7", st.Proxy.PassiveAddr)
	}
	if st.Proxy.PassivePorts.Min != 40000 || st.Proxy.PassivePorts.Max != 40009 {
		t.Errorf("ports %+v", st.Proxy.PassivePorts)
	}
	var got []string
	for _, p := range st.Limiter.Allow {
		got = append(got, p.String())
	}
	if want := "192.0.2.0/24 2001:db8::1/128 198.51.100.0/24"; strings.Join(got, " ") != want {
		t.Errorf("allow %v; want %s", got, want)
	}
}

func TestCommands(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runMain([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ftpguard ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	out.Reset()
	if code := runMain([]string{"check", "-config", "../../config.example.toml"}, &out, &errb); code != 0 {
		t.Fatalf("check example: %d %s", code, errb.String())
	}
	errb.Reset()
	if code := runMain([]string{"check", "-config", "/nonexistent/ftpguard.toml"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "/nonexistent/ftpguard.toml") {
		t.Fatalf("missing file: %d %q", code, errb.String())
	}
	if code := runMain([]string{"frobnicate"}, &out, &errb); code != 2 {
		t.Fatalf("unknown command: %d", code)
	}
}

// TestCheckGeoDatabase: ftpguard check opens the [geo] databases, and
// names the one that is missing.
func TestCheckGeoDatabase(t *testing.T) {
	p := writeConfig(t, "[geo]\ncountry_database = \"/nonexistent/GeoLite2-Country.mmdb\"\n[[geo.rule]]\naction = \"deny\"\ncountries = [\"XA\"]\n")
	var out, errb bytes.Buffer
	if code := runMain([]string{"check", "-config", p}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "geo: country_database /nonexistent/GeoLite2-Country.mmdb") {
		t.Fatalf("check with a missing database: %d %q", code, errb.String())
	}
}

// TestDataPathConfig: [passive] data_path and nft_table are checked with
// the rest; the kernel data path's table cannot be the firewall's.
func TestDataPathConfig(t *testing.T) {
	st, err := LoadConfig(writeConfig(t, "[passive]\ndata_path = \"nftables\"\nnft_table = \"fg_data\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Proxy.DataPath != "nftables" || st.Proxy.NftTable != "fg_data" {
		t.Fatalf("data path %q table %q", st.Proxy.DataPath, st.Proxy.NftTable)
	}
	for _, c := range []struct{ text, want string }{
		{"[passive]\ndata_path = \"kernel\"\n", `:2 passive.data_path: must be "relay" or "nftables", got "kernel"`},
		{"[passive]\nnft_table = \"a;b\"\n", `:2 passive.nft_table: must be a letter`},
		{"[passive]\ndata_path = \"nftables\"\nnft_table = \"fg\"\n[firewall]\nkind = \"nftables\"\ntable = \"fg\"\n",
			`:3 passive.nft_table: must differ from firewall.table ("fg")`},
	} {
		_, err := LoadConfig(writeConfig(t, c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.text, err, c.want)
		}
	}
}

// TestDataPathReport: what `ftpguard check` says of the data path, for
// each reason transfers take one path or the other.
func TestDataPathReport(t *testing.T) {
	ok := func(string) error { return nil }
	fails := func(string) error { return errors.New("operation not permitted") }
	uncounted := func(string) error { return fmt.Errorf("%w: invalid argument", nftnat.ErrNoCounting) }
	for _, c := range []struct {
		name, text string
		probe      func(string) error
		want       string
	}{
		{"relay", "", ok, `data path: relay (passive.data_path = "relay")`},
		{"nftables", "[passive]\ndata_path = \"nftables\"\n", ok, "data path: nftables (table inet ftpguard_data): plain passive transfers by kernel NAT"},
		{"counted", "[passive]\ndata_path = \"nftables\"\n", ok, "  bytes: counted exactly, from TCP sequence numbers, into ftpguard_bytes_relayed_total"},
		{"uncounted", "[passive]\ndata_path = \"nftables\"\n", uncounted,
			"  bytes: NOT counted (nftnat: this table does not count bytes: invalid argument): ftpguard_bytes_relayed_total leaves out what the kernel carries"},
		{"no nftables", "[passive]\ndata_path = \"nftables\"\n", fails, "data path: relay: nftables NAT cannot be used by this process (operation not permitted)"},
		{"daemon on ::1", "[backend]\naddress = \"[::1]:2121\"\n[passive]\ndata_path = \"nftables\"\n", ok, "note: the daemon is on ::1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := LoadConfig(writeConfig(t, c.text))
			if err != nil {
				t.Fatal(err)
			}
			if got := dataPathReport(st, c.probe); !strings.Contains(got, c.want) {
				t.Errorf("report %q; want %q in it", got, c.want)
			}
		})
	}
}
