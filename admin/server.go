// Package admin is ftpguard's admin HTTP API and its command-line client:
// bans (list, add, lift), throttled usernames (list, reset), reload,
// health, Prometheus metrics, and a status page with the recent events. It owns the [admin] section of the config
// file (config.go); the daemon feeds a Server with the limiter, the
// metrics and funcs for what only it knows (reload, the settings in force).
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ftpguard/ftpguard/crowdsec"
	"github.com/ftpguard/ftpguard/limiter"
)

// Options are what a Server is fed with. Limiter, Metrics, Reload and Info
// are required.
type Options struct {
	Limiter *limiter.Limiter
	Users   *limiter.Users // per-username budgets; nil: none (GET /users lists nothing)
	Metrics *Metrics
	Events  *EventRing   // the status page's recent events; nil: none
	Log     *slog.Logger // nil: slog.Default()
	Version string
	Start   time.Time // when the daemon started
	// Reload re-reads the config file, as SIGHUP does (POST /reload). An
	// error says why the file was refused; the old settings stay.
	Reload func() error
	// Info returns the settings in force, as the status page, the health
	// check and POST /reload show them.
	Info func() Info
	// CrowdSec is the CrowdSec link, whose Bouncer's decisions GET /bans
	// lists (source "crowdsec") and DELETE /bans refuses to lift (they are
	// CrowdSec's); nil: off.
	CrowdSec *crowdsec.Link
	// MoreBans are bans of ftpguard's own kept outside Limiter (the [geo]
	// budget rules' limiters): GET /bans and the status page list them
	// with the Limiter's (source "ftpguard"), DELETE /bans lifts them.
	// nil: none.
	MoreBans BanTable
}

// BanTable is a table of bans of ftpguard's own kept apart from the
// Limiter (a *geo.Geo: its budget rules' bans). Its methods must be safe
// for concurrent use.
type BanTable interface {
	// Bans returns the bans in force at now, sorted by Until.
	Bans(now time.Time) []limiter.Ban
	// Unban lifts the ban of key and reports whether there was one.
	Unban(key netip.Prefix) bool
}

// Info is what the admin API shows of the settings in force.
type Info struct {
	Config      string // the config file's path
	Mode        string // "enforce" or "observe"
	Listen      string
	Backend     string
	DialTimeout time.Duration // of the backend: bounds the health check's dial
	Store       string        // [store] kind
	Limits      limiter.Config
	Users       limiter.UserConfig
	// [sessions]
	MaxConns, MaxConnsPerIP   int
	LoginTimeout, IdleTimeout time.Duration
	ConnRate                  float64 // new connections a second per key; 0: off
	ConnBurst                 int
	NoAuth                    limiter.NoAuthConfig
	// EndSessionsOnBan is [limits] end_sessions_on_ban.
	EndSessionsOnBan string
	// GeoRefusals are the connections [geo] rules refused, per country
	// label (the countries the rules name, and "other"); nil: no rules.
	GeoRefusals map[string]uint64
}

// Server is the admin API of a running ftpguard. Make it with New; safe
// for concurrent use.
type Server struct {
	opt Options
	lim *limiter.Limiter
	m   *Metrics
	log *slog.Logger
	st  atomic.Pointer[Settings] // token and pprof in force
	h   *History                 // sampled while serving (startHistory)

	health backendCheck // the cached health dial (health.go)

	mu     sync.Mutex
	hs     []*http.Server // of Serve
	closed bool           // by Shutdown
	hstop  func()         // ends the history's sampler; nil: not started
}

// New returns the admin API with the [admin] settings s.
func New(s Settings, o Options) *Server {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Events == nil {
		o.Events = new(EventRing)
	}
	a := &Server{opt: o, lim: o.Limiter, m: o.Metrics, log: o.Log, h: NewHistory(o.Metrics, s.HistoryInterval)}
	a.st.Store(&s)
	return a
}

// SetSettings applies reloaded [admin] settings: the token and pprof (a new
// listen address takes effect on restart).
func (a *Server) SetSettings(s Settings) { a.st.Store(&s) }

// Serve serves the admin API on l until Shutdown, then returns
// http.ErrServerClosed. Its timeouts bound slow clients
// (ReadHeaderTimeout: slow-loris), while leaving room for a 30s pprof
// profile.
func (a *Server) Serve(l net.Listener) error {
	hs := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		l.Close()
		return http.ErrServerClosed
	}
	a.hs = append(a.hs, hs)
	a.startHistory()
	a.mu.Unlock()
	return hs.Serve(l)
}

// Shutdown stops every Serve: it closes the listeners and waits, until ctx
// ends, for the requests in flight.
func (a *Server) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	hs := a.hs
	a.closed = true
	a.stopHistory()
	a.mu.Unlock()
	var errs []error
	for _, h := range hs {
		errs = append(errs, h.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Handler routes the admin API:
//
//	GET    /                 status page (HTML)
//	GET    /status           the same, as JSON
//	GET    /healthz          backend and store reachable, bans saved? 200 (ok, degraded) or 503 (never needs the token)
//	GET    /metrics          Prometheus metrics
//	GET    /bans             bans in force (JSON list); ?limit=N&after=C: one page, next cursor in X-Next-After
//	POST   /bans             ban an IP or CIDR (JSON or form: ip, duration, reason)
//	DELETE /bans/{ip-or-cidr} lift a ban
//	GET    /users            throttled usernames (JSON list)
//	DELETE /users/{name}     lift a username's throttle (any spelling)
//	POST   /reload           re-read the config (as SIGHUP)
//	       /debug/pprof/     with [admin] pprof = true
func (a *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.handleStatusPage)
	mux.HandleFunc("GET /status", a.handleStatusJSON)
	mux.HandleFunc("GET /healthz", a.handleHealthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn), MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("GET /bans", a.handleBansList)
	mux.HandleFunc("POST /bans", a.handleBanAdd)
	mux.HandleFunc("DELETE /bans/{key...}", a.handleBanDel)
	mux.HandleFunc("GET /users", a.handleUsersList)
	mux.HandleFunc("DELETE /users/{name...}", a.handleUserReset)
	mux.HandleFunc("POST /reload", a.handleReload)
	pp := http.NewServeMux()
	pp.HandleFunc("/debug/pprof/", pprof.Index)
	pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/", func(w http.ResponseWriter, r *http.Request) {
		if !a.st.Load().Pprof {
			http.NotFound(w, r)
			return
		}
		pp.ServeHTTP(w, r)
	})
	// A browser page must not make the operator's browser ban, unban or
	// reload by a cross-site form post.
	return a.guard(http.NewCrossOriginProtection().Handler(mux))
}

// guard checks the bearer token (every route but /healthz) and, without a
// token, that the Host header names an address: a DNS-rebinding page
// could otherwise reach a loopback listener from the operator's browser.
func (a *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		if why := crossOrigin(r); why != "" {
			writeError(w, http.StatusForbidden, "admin: cross-origin request refused (%s): open the admin pages directly, or use ftpguard status|bans|top", why)
			return
		}
		token := a.st.Load().Token
		if token == "" {
			if !hostIsAddress(r.Host) {
				writeError(w, http.StatusMisdirectedRequest, "admin: Host %q is not an IP address or localhost", r.Host)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if !tokenOK(r, token) {
			w.Header().Add("WWW-Authenticate", `Bearer realm="ftpguard admin"`)
			// Basic (any user, the token as password) lets a browser open the status page.
			w.Header().Add("WWW-Authenticate", `Basic realm="ftpguard admin", charset="UTF-8"`)
			writeError(w, http.StatusUnauthorized, "admin: a valid token is needed (Authorization: Bearer TOKEN)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// crossOrigin says why r comes from another site's page in a browser, or
// "" when it does not: a same-origin request, a user's own navigation
// (Sec-Fetch-Site: none), or a client that is no browser (no Sec-Fetch-Site,
// no Origin: the CLI, curl, Prometheus). Every admin route but /healthz
// refuses such requests, GETs too, whatever the token: pprof, /status, /
// and /metrics cost CPU, and a page the operator has open must not be able
// to make the browser spend it (a basic-auth password the browser cached
// would go along). A top-level navigation to the status page (a link from
// a dashboard) is let through: it reads nothing back and runs no profile.
func crossOrigin(r *http.Request) string {
	site := r.Header.Get("Sec-Fetch-Site")
	switch site {
	case "", "same-origin", "none":
	default:
		if r.URL.Path == "/" && r.Method == http.MethodGet && r.Header.Get("Sec-Fetch-Mode") == "navigate" &&
			r.Header.Get("Sec-Fetch-Dest") == "document" {
			return ""
		}
		return "Sec-Fetch-Site: " + logSafe(site)
	}
	origin := r.Header.Get("Origin")
	if origin == "" || site == "same-origin" {
		return ""
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) { // no host: never this one's
		return "Origin: " + logSafe(origin)
	}
	return ""
}

// logSafe bounds a client-chosen string before it is echoed.
func logSafe(v string) string {
	if len(v) > 64 {
		v = v[:64] + "…"
	}
	return strings.Map(func(c rune) rune {
		if c < 0x20 || c == 0x7f {
			return '?'
		}
		return c
	}, v)
}

// tokenOK reports whether r carries token, as a bearer token or as the
// password of basic authentication, compared in constant time.
func tokenOK(r *http.Request, token string) bool {
	h := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	switch strings.ToLower(scheme) {
	case "bearer":
	case "basic":
		b, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return false
		}
		_, cred, _ = strings.Cut(string(b), ":")
	default:
		return false
	}
	return subtle.ConstantTimeCompare([]byte(cred), []byte(token)) == 1
}

// hostIsAddress reports whether a Host header names an IP address or
// localhost (or is empty, as over a unix socket).
func hostIsAddress(host string) bool {
	if host == "" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h // brackets, if any, were taken off with the port
	} else if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// writeJSON writes v as JSON with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeError writes {"error": message} with status code.
func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (a *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if err := a.opt.Reload(); err != nil {
		writeError(w, http.StatusBadRequest, "reload rejected; the old config stays: %v", err)
		return
	}
	info := a.opt.Info()
	writeJSON(w, http.StatusOK, map[string]string{"status": "reloaded", "config": info.Config, "mode": info.Mode})
}

// Health is the answer of /healthz.
type Health struct {
	// Status is "ok"; "degraded" (still serving, but something is not as
	// it should be: bans in force that are not yet in the store; HTTP 200);
	// or "unhealthy" (backend or shared store unreachable; HTTP 503).
	Status  string        `json:"status"`
	Reasons []string      `json:"reasons,omitempty"` // why not "ok", one line each
	Backend backendHealth `json:"backend"`
	Store   storeHealth   `json:"store"`
}

type backendHealth struct {
	Address string  `json:"address"`
	OK      bool    `json:"ok"`
	DialMS  float64 `json:"dial_ms"`
	Error   string  `json:"error,omitempty"`
	Note    string  `json:"note,omitempty"`
}

type storeHealth struct {
	Kind       string `json:"kind"`
	OK         bool   `json:"ok"`
	SharedDown bool   `json:"shared_down"`
	Errors     uint64 `json:"errors"`
	LastError  string `json:"last_error,omitempty"`
	// Unsaved: ban changes the store failed to write (a full disk), being
	// retried; Unsynced: ban changes queued while the shared store is down.
	Unsaved  int `json:"unsaved"`
	Unsynced int `json:"unsynced"`
}

// checkHealth dials the backend (within dial_timeout, at most limit; at
// most once a second for all callers, never with the session table full:
// health.go) and
// looks at the store: a shared store (Redis) is healthy while reachable;
// a local one always is (its last error is reported).
func (a *Server) checkHealth(ctx context.Context, limit time.Duration) Health {
	info := a.opt.Info()
	h := Health{Status: "ok"}
	h.Backend = a.backendHealth(ctx, info, limit) // health.go: ≤ 1 dial a second, within max_conns
	ls := a.lim.Stats()
	h.Store = storeHealth{Kind: info.Store, OK: !ls.SharedDown, SharedDown: ls.SharedDown, Errors: ls.StoreErrors,
		Unsaved: ls.Unsaved, Unsynced: ls.Unsynced}
	if err := a.lim.LastStoreError(); err != nil {
		h.Store.LastError = err.Error()
	}
	if !h.Backend.OK {
		h.Reasons = append(h.Reasons, "backend unreachable: "+h.Backend.Error)
	}
	if ls.SharedDown {
		h.Reasons = append(h.Reasons, "shared store unreachable: deciding locally")
	}
	if ls.Unsaved > 0 {
		h.Reasons = append(h.Reasons, fmt.Sprintf("%d ban change(s) in force but not saved (retrying): %s", ls.Unsaved,
			h.Store.LastError))
	}
	if ls.Unsynced > 0 {
		h.Reasons = append(h.Reasons, fmt.Sprintf("%d ban change(s) queued for the shared store", ls.Unsynced))
	}
	switch {
	case !h.Backend.OK || !h.Store.OK:
		h.Status = "unhealthy"
	case len(h.Reasons) > 0:
		h.Status = "degraded"
	}
	return h
}

func (a *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	h := a.checkHealth(r.Context(), time.Minute)
	code := http.StatusOK
	if h.Status == "unhealthy" { // degraded still serves
		code = http.StatusServiceUnavailable
	}
	if tok := a.st.Load().Token; !hostIsAddress(r.Host) && (tok == "" || !tokenOK(r, tok)) {
		// Probes need no token, but a DNS-rebinding page (Host: its own
		// name) must not read the daemon's address or the store's errors:
		// the status and the code only.
		writeJSON(w, code, map[string]string{"status": h.Status,
			"note": "details only for a Host that is an IP address or localhost, or with the token"})
		return
	}
	writeJSON(w, code, h)
}
