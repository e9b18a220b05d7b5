package crowdsec

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// exampleTOML is the block proposed for config.example.toml, with the keys
// uncommented.
const exampleTOML = `
[crowdsec]
lapi_url = "http://127.0.0.1:8080/"
bouncer_key_file = "KEYFILE"
poll_interval = "10s"
scopes = ["ip", "range"]
origins = []
machine_id = "ftpguard"
password_file = "PWFILE"
timeout = "5s"
`

func secrets(t *testing.T) (key, pw string) {
	dir := t.TempDir()
	key, pw = filepath.Join(dir, "key"), filepath.Join(dir, "pw")
	if err := os.WriteFile(key, []byte("0123abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pw, []byte("  s3cret  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return key, pw
}

func TestSectionExample(t *testing.T) {
	key, pw := secrets(t)
	var file struct {
		Crowdsec Section `toml:"crowdsec"`
	}
	file.Crowdsec = Defaults()
	src := strings.NewReplacer("KEYFILE", key, "PWFILE", pw).Replace(exampleTOML)
	md, err := toml.Decode(src, &file)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("undecoded keys %v", u)
	}
	var p conf.Problems
	s := file.Crowdsec.Settings(&p)
	if !p.OK() {
		t.Fatalf("problems: %v", p.List)
	}
	if s.BouncerClient == nil || s.BouncerClient.APIKey != "0123abcd" || s.BouncerClient.Timeout != 5*time.Second ||
		s.Bouncer.Interval != 10*time.Second || !slices.Equal(s.Bouncer.Scopes, []string{"ip", "range"}) || s.Bouncer.Origins != nil {
		t.Errorf("bouncer settings %+v %+v", s.BouncerClient, s.Bouncer)
	}
	if s.WatcherClient == nil || s.WatcherClient.MachineID != "ftpguard" || s.WatcherClient.Password != "s3cret" {
		t.Errorf("watcher client %+v", s.WatcherClient)
	}
	if !s.Enabled() || s.NewBouncer() == nil || s.NewWatcher() == nil {
		t.Error("settings do not enable both halves")
	}

	// The defaults: the link is off and nothing is checked.
	p = conf.Problems{}
	if s := Defaults().Settings(&p); !p.OK() || s.Enabled() || s.NewBouncer() != nil || s.NewWatcher() != nil {
		t.Errorf("defaults: %+v, problems %v", s, p.List)
	}
}

func TestSectionProblems(t *testing.T) {
	key, pw := secrets(t)
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(big, []byte(strings.Repeat("k", 5000)), 0o600)
	os.WriteFile(empty, []byte("\n"), 0o600)
	ok := func() Section {
		s := Defaults()
		s.LAPIURL, s.BouncerKeyFile, s.MachineID, s.PasswordFile = "http://127.0.0.1:8080", key, "m", pw
		return s
	}
	tests := []struct {
		name string
		edit func(*Section)
		want []string // problem keys
	}{
		{"valid", func(*Section) {}, nil},
		{"https without a port", func(s *Section) { s.LAPIURL = "https://lapi.example" }, nil},
		{"bouncer only", func(s *Section) { s.MachineID, s.PasswordFile = "", "" }, nil},
		{"watcher only", func(s *Section) { s.BouncerKeyFile = "" }, nil},
		{"no scheme", func(s *Section) { s.LAPIURL = "127.0.0.1:8080" }, []string{"crowdsec.lapi_url"}},
		{"ftp scheme", func(s *Section) { s.LAPIURL = "ftp://127.0.0.1/" }, []string{"crowdsec.lapi_url"}},
		{"bad port", func(s *Section) { s.LAPIURL = "http://127.0.0.1:99999/" }, []string{"crowdsec.lapi_url"}},
		{"query", func(s *Section) { s.LAPIURL = "http://127.0.0.1:8080/?x=1" }, []string{"crowdsec.lapi_url"}},
		{"zero interval", func(s *Section) { s.PollInterval = 0 }, []string{"crowdsec.poll_interval"}},
		{"negative timeout", func(s *Section) { s.Timeout = -time.Second }, []string{"crowdsec.timeout"}},
		{"bad scope", func(s *Section) { s.Scopes = []string{"IP", "country"} }, []string{"crowdsec.scopes"}},
		{"no scopes", func(s *Section) { s.Scopes = nil }, []string{"crowdsec.scopes"}},
		{"bad origin", func(s *Section) { s.Origins = []string{"cscli", "", "a,b"} }, []string{"crowdsec.origins", "crowdsec.origins"}},
		{"neither half", func(s *Section) { s.BouncerKeyFile, s.MachineID, s.PasswordFile = "", "", "" }, []string{"crowdsec.bouncer_key_file"}},
		{"missing key file", func(s *Section) { s.BouncerKeyFile = filepath.Join(dir, "nope") }, []string{"crowdsec.bouncer_key_file"}},
		{"huge key file", func(s *Section) { s.BouncerKeyFile = big }, []string{"crowdsec.bouncer_key_file"}},
		{"empty password", func(s *Section) { s.PasswordFile = empty }, []string{"crowdsec.password_file"}},
		{"machine without password", func(s *Section) { s.PasswordFile = "" }, []string{"crowdsec.password_file"}},
		{"password without machine", func(s *Section) { s.MachineID = "" }, []string{"crowdsec.password_file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok()
			tt.edit(&s)
			var p conf.Problems
			s.Settings(&p)
			var got []string
			for _, pr := range p.List {
				got = append(got, pr.Key)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems %v, want keys %v", p.List, tt.want)
			}
		})
	}
}

// TestLAPIURLPasswordHidden: a refused lapi_url is quoted in the problem
// (printed by ftpguard check, logged by a rejected reload) without the
// password it may hold.
func TestLAPIURLPasswordHidden(t *testing.T) {
	for _, u := range []string{"http://u:s3cret@127.0.0.1:8080/", "http://u:s3%zz@127.0.0.1:8080/", "ftp://u:s3cret@h/"} {
		s := Defaults()
		s.LAPIURL, s.BouncerKeyFile = u, "/nonexistent"
		var p conf.Problems
		s.Settings(&p)
		for _, pr := range p.List {
			if strings.Contains(pr.Error(), "s3") {
				t.Errorf("%q: the password is in the problem: %s", u, pr.Error())
			}
		}
	}
}
