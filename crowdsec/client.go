// Package crowdsec joins ftpguard to a CrowdSec Local API (LAPI) both ways:
// a Bouncer pulls the LAPI's ban decisions (the decision stream) into a table
// the gate looks addresses up in, and a Watcher pushes ftpguard's own bans to
// the LAPI as alerts, so that every other bouncer of the installation (a
// firewall, a web server) enforces them too.
//
// The package speaks the few LAPI endpoints it needs with net/http and
// encoding/json (Client); it does not depend on CrowdSec's Go modules. Its
// config section is [crowdsec] (Section).
package crowdsec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// Bounds on what a Client reads from the LAPI. A broken or hostile LAPI (or
// whatever answers at its address) must not make ftpguard allocate without
// limit: every body is read through an io.LimitReader.
const (
	// DefaultMaxStreamBody bounds a decision stream answer. A startup answer
	// with the community blocklists holds some 10⁵ decisions of ~200 bytes.
	DefaultMaxStreamBody = 64 << 20
	// maxSmallBody bounds the other answers (login, alerts, error bodies).
	maxSmallBody = 1 << 20
	// DefaultTimeout bounds one request when Client.Timeout is zero.
	DefaultTimeout = 5 * time.Second
	// tokenMargin: a JWT this close to its expiry is renewed before use.
	tokenMargin = 30 * time.Second
)

// ErrTooLarge is returned (wrapped) when an answer exceeds its bound.
var ErrTooLarge = errors.New("crowdsec: answer too large")

// StatusError is the error for an answer whose HTTP status is not 2xx. The
// LAPI's body usually says why ({"message":"…"}); it is kept, shortened.
type StatusError struct {
	Op   string // "decisions stream", "login", "alerts"
	Code int    // HTTP status
	Body string // start of the answer's body
}

// Error returns "crowdsec: OP: HTTP CODE: BODY".
func (e *StatusError) Error() string {
	return fmt.Sprintf("crowdsec: %s: HTTP %d: %s", e.Op, e.Code, e.Body)
}

// Client speaks to one LAPI. Set the fields before first use and do not
// change them afterwards; its methods are then safe for concurrent use (the
// watcher's JWT is kept under a mutex).
//
// The zero Client has no URL and every request fails.
type Client struct {
	// URL is the LAPI's base URL, e.g. "http://127.0.0.1:8080/".
	URL string
	// APIKey is the bouncer key (cscli bouncers add), for DecisionStream.
	APIKey string
	// MachineID and Password are the watcher's credentials (cscli machines
	// add), for Login and PushAlerts.
	MachineID, Password string
	// Scenarios are the scenarios the watcher declares at login.
	Scenarios []string
	// HTTP sends the requests; nil means a client of this package's own,
	// without proxies from the environment (the LAPI is local) and without
	// following redirects (the key would follow them).
	HTTP *http.Client
	// Timeout bounds each request, on top of the caller's context (zero:
	// DefaultTimeout).
	Timeout time.Duration
	// MaxStreamBody bounds a decision stream answer (zero:
	// DefaultMaxStreamBody).
	MaxStreamBody int64
	// UserAgent is sent with every request (zero: "ftpguard/VERSION"). It
	// must read NAME/VERSION: the LAPI (1.4.6) refuses a watcher login whose
	// User-Agent does not, with 401 "incorrect Username or Password".
	UserAgent string

	mu     sync.Mutex
	token  string
	expire time.Time
	logins int
}

// defaultUserAgent is "ftpguard/" and the module's version ("dev" in a
// build without one).
var defaultUserAgent = func() string {
	v := "dev"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = strings.ReplaceAll(bi.Main.Version, "/", "-")
	}
	return "ftpguard/" + v
}()

// defaultHTTP follows no redirect: net/http would forward the X-Api-Key
// header to wherever a redirect points (it strips only Authorization and
// cookies), so a 3xx is an error, like any other non-2xx answer.
var defaultHTTP = &http.Client{
	Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// RawDecision is a decision as the LAPI sends it in the decision stream.
type RawDecision struct {
	ID       int64  `json:"id"`
	Duration string `json:"duration"` // time left: "3h59m12.5s", negative once expired
	Origin   string `json:"origin"`   // "cscli", "crowdsec", "CAPI", "lists", …
	Scenario string `json:"scenario"`
	Scope    string `json:"scope"` // "Ip", "Range", …
	Type     string `json:"type"`  // "ban", "captcha", …
	Value    string `json:"value"` // "1.2.3.4", "10.0.0.0/16", …
}

// Stream is one answer of the decision stream: the decisions that are new
// since the previous poll (all of them at startup) and those deleted or
// expired since. The LAPI sends null for an empty list; both are then nil.
type Stream struct {
	New     []RawDecision `json:"new"`
	Deleted []RawDecision `json:"deleted"`
}

// DecisionStream polls GET /v1/decisions/stream with the bouncer key. With
// startup the LAPI sends all decisions in force (and forgets what this
// bouncer had been sent); without it, the changes since the previous poll.
// scopes and origins, if not empty, ask the LAPI to filter (comma-joined).
func (c *Client) DecisionStream(ctx context.Context, startup bool, scopes, origins []string) (*Stream, error) {
	q := url.Values{}
	q.Set("startup", fmt.Sprint(startup))
	if len(scopes) > 0 {
		q.Set("scopes", strings.Join(scopes, ","))
	}
	if len(origins) > 0 {
		q.Set("origins", strings.Join(origins, ","))
	}
	max := c.MaxStreamBody
	if max <= 0 {
		max = DefaultMaxStreamBody
	}
	var s Stream
	err := c.do(ctx, "decisions stream", http.MethodGet, "v1/decisions/stream?"+q.Encode(),
		func(h http.Header) { h.Set("X-Api-Key", c.APIKey) }, nil, max, &s)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// Alert is one alert pushed to POST /v1/alerts, with the decisions the LAPI
// is to make from it. Every field without omitempty is required by the LAPI
// (it answers 422 naming the missing one).
type Alert struct {
	Scenario        string            `json:"scenario"`
	ScenarioHash    string            `json:"scenario_hash"`
	ScenarioVersion string            `json:"scenario_version"`
	Message         string            `json:"message"`
	EventsCount     int32             `json:"events_count"`
	StartAt         string            `json:"start_at"` // RFC 3339
	StopAt          string            `json:"stop_at"`
	Capacity        int32             `json:"capacity"`
	Leakspeed       string            `json:"leakspeed"`
	Simulated       bool              `json:"simulated"`
	Remediation     bool              `json:"remediation"`
	Events          []json.RawMessage `json:"events"` // required, may be empty (never null)
	Source          AlertSource       `json:"source"`
	Decisions       []AlertDecision   `json:"decisions"`
}

// AlertSource is the offender of an Alert.
type AlertSource struct {
	Scope string `json:"scope"` // "Ip" or "Range"
	Value string `json:"value"`
	IP    string `json:"ip,omitempty"`
	Range string `json:"range,omitempty"`
}

// AlertDecision is a decision to make from an Alert.
type AlertDecision struct {
	Duration string `json:"duration"` // Go duration syntax, "2h0m0s"
	Origin   string `json:"origin"`
	Scenario string `json:"scenario"`
	Scope    string `json:"scope"`
	Type     string `json:"type"`
	Value    string `json:"value"`
}

// Login logs the watcher in (POST /v1/watchers/login) and keeps the JWT
// for PushAlerts. PushAlerts calls it when needed.
func (c *Client) Login(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loginLocked(ctx)
}

func (c *Client) loginLocked(ctx context.Context) error {
	req := struct {
		MachineID string   `json:"machine_id"`
		Password  string   `json:"password"`
		Scenarios []string `json:"scenarios"`
	}{c.MachineID, c.Password, c.Scenarios}
	if req.Scenarios == nil {
		req.Scenarios = []string{}
	}
	var resp struct {
		Code   int    `json:"code"`
		Expire string `json:"expire"`
		Token  string `json:"token"`
	}
	if err := c.do(ctx, "login", http.MethodPost, "v1/watchers/login", nil, req, maxSmallBody, &resp); err != nil {
		return err
	}
	if resp.Token == "" {
		return errors.New("crowdsec: login: answer has no token")
	}
	c.token = resp.Token
	c.logins++
	// A token whose expiry is unreadable is used until the LAPI answers 401.
	c.expire = time.Time{}
	if t, err := time.Parse(time.RFC3339, resp.Expire); err == nil {
		c.expire = t
	}
	return nil
}

// bearer returns a JWT that is not about to expire, logging in if needed.
func (c *Client) bearer(ctx context.Context, renew bool) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if renew || c.token == "" || (!c.expire.IsZero() && time.Until(c.expire) < tokenMargin) {
		if err := c.loginLocked(ctx); err != nil {
			return "", err
		}
	}
	return c.token, nil
}

// Logins reports how many times the Client has logged in (for tests and
// metrics).
func (c *Client) Logins() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logins
}

// PushAlerts sends alerts (POST /v1/alerts) as the logged-in watcher and
// returns the ids the LAPI gave them. It logs in first if it holds no valid
// JWT, and logs in again once if the LAPI answers 401 (an expired or revoked
// token).
func (c *Client) PushAlerts(ctx context.Context, alerts []Alert) ([]string, error) {
	for i := range alerts {
		if alerts[i].Events == nil {
			alerts[i].Events = []json.RawMessage{}
		}
	}
	var ids []string
	for attempt := 0; ; attempt++ {
		tok, err := c.bearer(ctx, attempt > 0)
		if err != nil {
			return nil, err
		}
		err = c.do(ctx, "alerts", http.MethodPost, "v1/alerts",
			func(h http.Header) { h.Set("Authorization", "Bearer "+tok) }, alerts, maxSmallBody, &ids)
		var se *StatusError
		if attempt == 0 && errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			continue
		}
		return ids, err
	}
}

// do sends one request (body, if not nil, as JSON) and decodes a 2xx answer
// of at most max bytes into out.
func (c *Client) do(ctx context.Context, op, method, path string, header func(http.Header), body any, max int64, out any) error {
	base, err := url.Parse(c.URL)
	if err != nil || base.Scheme == "" || base.Host == "" {
		return fmt.Errorf("crowdsec: %s: bad LAPI URL %q", op, c.URL)
	}
	if !strings.HasSuffix(base.Path, "/") {
		base.Path += "/"
	}
	u, err := base.Parse(path)
	if err != nil {
		return fmt.Errorf("crowdsec: %s: %w", op, err)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("crowdsec: %s: %w", op, err)
		}
		rd = bytes.NewReader(b)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("crowdsec: %s: %w", op, err)
	}
	ua := c.UserAgent
	if ua == "" {
		ua = defaultUserAgent
	}
	req.Header.Set("User-Agent", ua)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if header != nil {
		header(req.Header)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("crowdsec: %s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &StatusError{Op: op, Code: resp.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	// One byte more than allowed tells a body at the bound from one beyond.
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return fmt.Errorf("crowdsec: %s: reading answer: %w", op, err)
	}
	if int64(len(b)) > max {
		return fmt.Errorf("%w: %s: more than %d bytes", ErrTooLarge, op, max)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("crowdsec: %s: decoding answer: %w", op, err)
	}
	return nil
}
