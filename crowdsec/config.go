package crowdsec

import (
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// maxSecretFile bounds a key or password file: it holds one line.
const maxSecretFile = 4096

// Section is the [crowdsec] section of ftpguard's config file. Start from
// Defaults(), decode the file over it, then call Settings.
type Section struct {
	// LAPIURL is the LAPI's base URL, "http://127.0.0.1:8080/" ("" turns
	// the CrowdSec link off).
	LAPIURL string `toml:"lapi_url"`
	// BouncerKeyFile holds the bouncer API key (cscli bouncers add NAME -o
	// raw). "" turns the bouncer off.
	BouncerKeyFile string `toml:"bouncer_key_file"`
	// PollInterval between two polls of the decision stream (default 10s).
	PollInterval time.Duration `toml:"poll_interval"`
	// Scopes of decisions to enforce: "ip", "range" (default both).
	Scopes []string `toml:"scopes"`
	// Origins of decisions to enforce, e.g. ["cscli", "crowdsec", "CAPI",
	// "lists"] (default [] = all).
	Origins []string `toml:"origins"`
	// MachineID is the watcher's machine name (cscli machines add). ""
	// turns the watcher off.
	MachineID string `toml:"machine_id"`
	// PasswordFile holds the watcher's password.
	PasswordFile string `toml:"password_file"`
	// Timeout bounds each request to the LAPI (default 5s).
	Timeout time.Duration `toml:"timeout"`
}

// Defaults returns the section with its default values (and the link off).
func Defaults() Section {
	return Section{
		PollInterval: DefaultPollInterval,
		Scopes:       []string{"ip", "range"},
		Origins:      []string{},
		Timeout:      DefaultTimeout,
	}
}

// Settings is a validated [crowdsec] section, secrets read, ready to run.
// The zero Settings has both halves off.
type Settings struct {
	// BouncerClient is nil when the bouncer is off; otherwise it has the
	// URL, key and timeout set.
	BouncerClient *Client
	// Bouncer is the bouncer's poll interval, scopes and origins (set the
	// Logger before NewBouncer).
	Bouncer BouncerConfig
	// WatcherClient is nil when the watcher is off; otherwise it has the
	// URL, machine id, password, scenario and timeout set.
	WatcherClient *Client
	// Watcher is the watcher's queue and backoff (defaults; set the Logger
	// before NewWatcher).
	Watcher WatcherConfig
}

// Enabled reports whether anything of the CrowdSec link is on.
func (s Settings) Enabled() bool { return s.BouncerClient != nil || s.WatcherClient != nil }

// NewBouncer returns the configured Bouncer, nil when it is off.
func (s Settings) NewBouncer() *Bouncer {
	if s.BouncerClient == nil {
		return nil
	}
	return NewBouncer(s.BouncerClient, s.Bouncer)
}

// NewWatcher returns the configured Watcher, nil when it is off.
func (s Settings) NewWatcher() *Watcher {
	if s.WatcherClient == nil {
		return nil
	}
	return NewWatcher(s.WatcherClient, s.Watcher)
}

// Settings validates the section into p (keys "crowdsec.…") and returns the
// settings; it reads the key and password files. With LAPIURL "" it checks
// nothing and returns settings with everything off. The result is only
// meaningful when p has no new problem.
func (c Section) Settings(p *conf.Problems) Settings {
	var s Settings
	if c.LAPIURL == "" {
		return s
	}
	u, err := url.Parse(c.LAPIURL)
	shown := conf.RedactURL(c.LAPIURL) // a password in it is never printed
	switch {
	case err != nil:
		why := ""
		if ue, ok := err.(*url.Error); ok && !strings.Contains(c.LAPIURL, "@") {
			why = ": " + ue.Err.Error() // with an "@", it may quote a part of the password
		}
		p.Add("crowdsec.lapi_url", "must be a URL such as \"http://127.0.0.1:8080/\", got %q%s", shown, why)
	case u.Scheme != "http" && u.Scheme != "https":
		p.Add("crowdsec.lapi_url", "must be an http:// or https:// URL, got %q", shown)
	case u.Host == "":
		p.Add("crowdsec.lapi_url", "must name a host, got %q", shown)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		p.Add("crowdsec.lapi_url", "must have no user, query or fragment, got %q", shown)
	default:
		p.HostPort("crowdsec.lapi_url", hostPort(u))
	}
	p.Positive("crowdsec.poll_interval", c.PollInterval)
	p.Positive("crowdsec.timeout", c.Timeout)
	scopes := make([]string, 0, len(c.Scopes))
	if len(c.Scopes) == 0 {
		p.Add("crowdsec.scopes", "must list \"ip\", \"range\" or both, got none")
	}
	for _, sc := range c.Scopes {
		sc = strings.ToLower(strings.TrimSpace(sc))
		p.OneOf("crowdsec.scopes", sc, "ip", "range")
		if !slices.Contains(scopes, sc) {
			scopes = append(scopes, sc)
		}
	}
	var origins []string
	for _, o := range c.Origins {
		if o = strings.TrimSpace(o); o == "" || strings.Contains(o, ",") {
			p.Add("crowdsec.origins", "must be origin names such as \"cscli\" or \"CAPI\", got %q", o)
			continue
		}
		origins = append(origins, o)
	}
	if c.BouncerKeyFile == "" && c.MachineID == "" {
		p.Add("crowdsec.bouncer_key_file", "lapi_url is set but neither bouncer_key_file nor machine_id is: set one, or lapi_url = \"\"")
	}
	base := func() *Client {
		return &Client{URL: c.LAPIURL, Timeout: c.Timeout}
	}
	if c.BouncerKeyFile != "" {
		if key, ok := readSecret(p, "crowdsec.bouncer_key_file", c.BouncerKeyFile); ok {
			s.BouncerClient = base()
			s.BouncerClient.APIKey = key
			s.Bouncer = BouncerConfig{Interval: c.PollInterval, Scopes: scopes, Origins: origins}
		}
	}
	if c.MachineID != "" {
		if c.PasswordFile == "" {
			p.Add("crowdsec.password_file", "must be set when machine_id is")
		} else if pw, ok := readSecret(p, "crowdsec.password_file", c.PasswordFile); ok {
			s.WatcherClient = base()
			s.WatcherClient.MachineID, s.WatcherClient.Password = c.MachineID, pw
			s.WatcherClient.Scenarios = []string{Scenario}
		}
	} else if c.PasswordFile != "" {
		p.Add("crowdsec.password_file", "is set but machine_id is not")
	}
	return s
}

// hostPort returns u's host with the scheme's default port when it has none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return u.Hostname() + ":" + port
}

// readSecret reads a one-line secret file; problems go to p under key.
func readSecret(p *conf.Problems, key, path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		p.Add(key, "cannot be read: %v", err)
		return "", false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		p.Add(key, "cannot be read: %v", err)
		return "", false
	}
	if len(b) > maxSecretFile {
		p.Add(key, "must hold one line, got more than %d bytes in %s", maxSecretFile, path)
		return "", false
	}
	v := strings.TrimSpace(string(b))
	if v == "" || strings.ContainsAny(v, "\r\n") {
		p.Add(key, "must hold one non-empty line, in %s", path)
		return "", false
	}
	return v, true
}
