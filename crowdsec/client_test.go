package crowdsec

// These tests run against an in-process fake LAPI (httptest), for answers a
// real LAPI does not give: garbage JSON, huge bodies, 500s, tokens that
// expire on demand. lapi_integration_test.go checks the real one.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeLAPI answers the decision stream with whatever stream is set to, and
// logs watchers in with tokens "tok1", "tok2", … that stay valid until
// expire is called.
type fakeLAPI struct {
	srv *httptest.Server

	mu       sync.Mutex
	stream   func(startup bool) (code int, body string)
	startups []bool     // the startup flag of each stream poll
	logins   int        // successful logins
	valid    string     // the token in force
	alerts   [][]Alert  // each POST /v1/alerts
	raw      []string   // their bodies
	alertErr func() int // if set, the status to answer an alert POST with (0: accept)
	agents   []string
}

func newFakeLAPI(t *testing.T) *fakeLAPI {
	f := &fakeLAPI{stream: func(bool) (int, string) { return 200, `{"new":null,"deleted":null}` }}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/decisions/stream", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != "key" {
			http.Error(w, `{"message":"access forbidden"}`, http.StatusForbidden)
			return
		}
		startup := r.URL.Query().Get("startup") == "true"
		f.mu.Lock()
		f.startups = append(f.startups, startup)
		f.agents = append(f.agents, r.UserAgent())
		stream := f.stream
		f.mu.Unlock()
		code, body := stream(startup)
		w.WriteHeader(code)
		io.WriteString(w, body)
	})
	mux.HandleFunc("POST /v1/watchers/login", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			MachineID string   `json:"machine_id"`
			Password  string   `json:"password"`
			Scenarios []string `json:"scenarios"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.MachineID != "m" || req.Password != "pw" || req.Scenarios == nil {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"code":401,"message":"incorrect Username or Password"}`)
			return
		}
		f.mu.Lock()
		f.logins++
		f.valid = fmt.Sprintf("tok%d", f.logins)
		tok := f.valid
		f.mu.Unlock()
		fmt.Fprintf(w, `{"code":200,"expire":%q,"token":%q}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339), tok)
	})
	mux.HandleFunc("POST /v1/alerts", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		valid, alertErr := f.valid, f.alertErr
		f.mu.Unlock()
		if valid == "" || r.Header.Get("Authorization") != "Bearer "+valid {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"code":401,"message":"Token is expired"}`)
			return
		}
		if alertErr != nil {
			if code := alertErr(); code != 0 {
				w.WriteHeader(code)
				io.WriteString(w, `{"message":"broken"}`)
				return
			}
		}
		body, _ := io.ReadAll(r.Body)
		var alerts []Alert
		if err := json.Unmarshal(body, &alerts); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.alerts = append(f.alerts, alerts)
		f.raw = append(f.raw, string(body))
		f.mu.Unlock()
		ids := make([]string, len(alerts))
		for i := range ids {
			ids[i] = fmt.Sprint(i + 1)
		}
		json.NewEncoder(w).Encode(ids)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// expire invalidates the token in force, as a LAPI does when a JWT expires.
func (f *fakeLAPI) expire() {
	f.mu.Lock()
	f.valid = "expired"
	f.mu.Unlock()
}

func (f *fakeLAPI) setStream(fn func(startup bool) (int, string)) {
	f.mu.Lock()
	f.stream = fn
	f.mu.Unlock()
}

func (f *fakeLAPI) client() *Client {
	return &Client{URL: f.srv.URL, APIKey: "key", MachineID: "m", Password: "pw", Timeout: 2 * time.Second}
}

func TestDecisionStream(t *testing.T) {
	huge := `{"new":[` + strings.Repeat(`{"id":1,"duration":"1h","scope":"Ip","type":"ban","value":"1.2.3.4"},`, 20_000) + `{}]}`
	tests := []struct {
		name    string
		code    int
		body    string
		max     int64
		wantErr func(error) bool
		wantNew int
	}{
		{name: "null lists", code: 200, body: `{"new":null,"deleted":null}`},
		{name: "empty object", code: 200, body: `{}`},
		{name: "one new", code: 200, body: `{"new":[{"duration":"3h59m","id":1,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"1.2.3.4"}],"deleted":[]}`, wantNew: 1},
		{name: "garbage", code: 200, body: `<html>not json`, wantErr: func(err error) bool { return err != nil }},
		{name: "wrong shape", code: 200, body: `{"new":{"id":1}}`, wantErr: func(err error) bool { return err != nil }},
		{name: "500", code: 500, body: `{"message":"db locked"}`, wantErr: func(err error) bool {
			var se *StatusError
			return errors.As(err, &se) && se.Code == 500 && strings.Contains(se.Body, "db locked")
		}},
		{name: "huge body", code: 200, body: huge, max: 1 << 20, wantErr: func(err error) bool { return errors.Is(err, ErrTooLarge) }},
		{name: "huge body within bound", code: 200, body: huge, wantNew: 20_001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeLAPI(t)
			f.setStream(func(bool) (int, string) { return tt.code, tt.body })
			c := f.client()
			c.MaxStreamBody = tt.max
			s, err := c.DecisionStream(context.Background(), true, nil, nil)
			if tt.wantErr != nil {
				if !tt.wantErr(err) {
					t.Fatalf("err = %v", err)
				}
				if !strings.HasPrefix(err.Error(), "crowdsec: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.New) != tt.wantNew || len(s.Deleted) != 0 {
				t.Errorf("got %d new, %d deleted", len(s.New), len(s.Deleted))
			}
		})
	}
}

func TestDecisionStreamErrors(t *testing.T) {
	f := newFakeLAPI(t)
	c := f.client()
	c.APIKey = "wrong"
	var se *StatusError
	if _, err := c.DecisionStream(context.Background(), true, nil, nil); !errors.As(err, &se) || se.Code != 403 {
		t.Errorf("wrong key: %v", err)
	}

	// A LAPI that never answers: the Client's timeout ends the request.
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	c = &Client{URL: slow.URL, APIKey: "key", Timeout: 100 * time.Millisecond}
	start := time.Now()
	if _, err := c.DecisionStream(context.Background(), true, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging LAPI: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}

	// A redirect is not followed: the key would go along to its target.
	leaked := make(chan string, 1)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked <- r.Header.Get("X-Api-Key")
		io.WriteString(w, `{}`)
	}))
	defer target.Close()
	redirect := httptest.NewServer(http.RedirectHandler(target.URL+"/v1/decisions/stream", http.StatusFound))
	defer redirect.Close()
	c = &Client{URL: redirect.URL, APIKey: "key"}
	if _, err := c.DecisionStream(context.Background(), true, nil, nil); !errors.As(err, &se) || se.Code != http.StatusFound {
		t.Errorf("redirect: %v", err)
	}
	select {
	case k := <-leaked:
		t.Errorf("redirect followed, key %q sent to its target", k)
	default:
	}

	for _, u := range []string{"", "127.0.0.1:8080", "http://"} {
		if _, err := (&Client{URL: u}).DecisionStream(context.Background(), true, nil, nil); err == nil || !strings.HasPrefix(err.Error(), "crowdsec: ") {
			t.Errorf("URL %q: %v", u, err)
		}
	}
}

func TestDecisionStreamQuery(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.Path + "?" + r.URL.RawQuery
		io.WriteString(w, `{}`)
	}))
	defer srv.Close()
	c := &Client{URL: srv.URL + "/lapi", APIKey: "k"} // a base path without its slash
	if _, err := c.DecisionStream(context.Background(), false, []string{"ip", "range"}, []string{"cscli", "CAPI"}); err != nil {
		t.Fatal(err)
	}
	if want := "/lapi/v1/decisions/stream?origins=cscli%2CCAPI&scopes=ip%2Crange&startup=false"; got != want {
		t.Errorf("request %s, want %s", got, want)
	}
}

func TestPushAlertsRelogin(t *testing.T) {
	f := newFakeLAPI(t)
	c := f.client()
	c.Scenarios = []string{Scenario}
	ctx := context.Background()
	a, _ := alertFor(Ban{Key: mustPrefix("192.0.2.1/32"), Until: time.Now().Add(time.Hour), Count: 2}, time.Now())

	if _, err := c.PushAlerts(ctx, []Alert{a}); err != nil {
		t.Fatal(err)
	}
	if c.Logins() != 1 {
		t.Fatalf("logins = %d, want 1", c.Logins())
	}
	if _, err := c.PushAlerts(ctx, []Alert{a}); err != nil || c.Logins() != 1 {
		t.Fatalf("second push: %v, logins %d (the token is reused)", err, c.Logins())
	}
	f.expire() // the LAPI answers 401: the Client logs in again and retries once
	ids, err := c.PushAlerts(ctx, []Alert{a, a})
	if err != nil || len(ids) != 2 || c.Logins() != 2 {
		t.Fatalf("after expiry: ids %v, err %v, logins %d", ids, err, c.Logins())
	}
	if n := len(f.alerts); n != 3 {
		t.Errorf("LAPI got %d posts, want 3", n)
	}

	c.Password = "wrong"
	f.expire()
	var se *StatusError
	if _, err := c.PushAlerts(ctx, []Alert{a}); !errors.As(err, &se) || se.Code != 401 || se.Op != "login" {
		t.Errorf("bad password: %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	const maxDur = time.Duration(1<<63 - 1)
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "3h59m", want: 3*time.Hour + 59*time.Minute},
		{in: "3h59m12.5s", want: 3*time.Hour + 59*time.Minute + 12500*time.Millisecond},
		{in: "9m58.931964435s", want: 9*time.Minute + 58931964435*time.Nanosecond},
		{in: "-262.88001ms", want: -262880010 * time.Nanosecond},
		{in: "-1h2m3s", want: -(time.Hour + 2*time.Minute + 3*time.Second)},
		{in: "0s"},
		{in: "0"},
		{in: " 10m ", want: 10 * time.Minute},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "1.5h", want: 90 * time.Minute},
		{in: "3µs", want: 3 * time.Microsecond},
		{in: "100000000h", want: maxDur}, // beyond time.Duration: clamped
		{in: "", bad: true},
		{in: "-", bad: true},
		{in: "10", bad: true},
		{in: "h", bad: true},
		{in: "5x", bad: true},
		{in: "1..2s", bad: true},
		{in: "1h-2m", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseDuration(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
