package main

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/proxy"
)

// daemon is a running ftpguard: the parts that the signal loop, the admin
// listener and the status page share. Safe for concurrent use.
type daemon struct {
	path   string                   // the config file, re-read by reload
	st     atomic.Pointer[Settings] // the settings in force
	lim    *limiter.Limiter
	users  *limiter.Users
	srv    *proxy.Server
	level  *slog.LevelVar
	log    *slog.Logger
	m      *metrics
	events *eventRing
	fw     *firewall
	start  time.Time

	reloadMu sync.Mutex // one reload at a time (SIGHUP and POST /reload)
}

// settings returns the settings in force.
func (d *daemon) settings() *Settings { return d.st.Load() }

// mode returns "enforce" or "observe".
func (d *daemon) mode() string {
	if d.settings().Proxy.Observe {
		return "observe"
	}
	return "enforce"
}

// reload re-reads the config file and applies it to later decisions
// without dropping a session: limits, allowlist, timeouts, mode, log level,
// firewall commands, the admin token, pprof and the TLS key pair. listen,
// admin.listen, tls.implicit_listen, [store], log.format and
// proxy_protocol.header_timeout take effect on restart. An invalid file
// changes nothing (its key pair included): the error says why, and is
// logged. SIGHUP and POST /reload both come here.
func (d *daemon) reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	st, err := LoadConfig(d.path)
	if err == nil {
		err = d.lim.Reload(st.Limiter)
	}
	if err == nil {
		err = d.users.Reload(st.Users)
	}
	if d.m != nil {
		d.m.reloaded(err)
	}
	if err != nil {
		d.log.Error("reload rejected; keeping the old config", "err", err)
		return err
	}
	old := d.settings()
	if st.Listen != old.Listen {
		d.log.Warn("reload: listen changed; it takes effect on restart", "listen", st.Listen)
	}
	if st.Admin.Network != old.Admin.Network || st.Admin.Address != old.Admin.Address {
		d.log.Warn("reload: admin.listen changed; it takes effect on restart", "admin", st.File.Admin.Listen)
	}
	st.installCert()
	d.srv.SetConfig(st.Proxy)
	d.level.Set(st.LogLevel)
	if d.fw != nil {
		d.fw.setConfig(st.Firewall, st.Proxy.Observe)
	}
	d.st.Store(st)
	d.log.Info("reloaded", "config", d.path, "mode", d.mode())
	return nil
}

// onBanChange is the limiter's ban hook: it logs the bans and unbans
// learned from the shared store (this instance's own are logged where they
// are made) and hands every change to the firewall push.
func (d *daemon) onBanChange(c limiter.BanChange) {
	if c.Remote {
		if c.Lifted {
			d.log.Info("unban", "key", c.Ban.Key.String(), "origin", "shared store")
		} else {
			d.log.Warn("ban", "key", c.Ban.Key.String(), "until", c.Ban.Until.Format(time.RFC3339),
				"count", c.Ban.Count, "reason", c.Ban.Reason, "origin", "shared store")
		}
	}
	if d.fw != nil {
		d.fw.hook(c)
	}
}

// listenAdmin opens the admin listener of s ("" network: none). A stale
// unix socket file is replaced; a new one is made readable and writable by
// the owner and group only.
func listenAdmin(s AdminSettings) (net.Listener, error) {
	switch s.Network {
	case "":
		return nil, nil
	case "unix":
		if fi, err := os.Lstat(s.Address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", s.Address); err == nil {
				c.Close()
				return nil, fmt.Errorf("admin.listen: %s is in use by another process", s.Address)
			}
			os.Remove(s.Address)
		}
		ln, err := net.Listen("unix", s.Address)
		if err != nil {
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		if err := os.Chmod(s.Address, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		return ln, nil
	default:
		ln, err := net.Listen(s.Network, s.Address)
		if err != nil {
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		return ln, nil
	}
}

// newAdminServer returns the admin HTTP server. Its timeouts bound slow
// clients (ReadHeaderTimeout: slow-loris), while leaving room for a 30s
// pprof profile.
func (d *daemon) newAdminServer() *http.Server {
	return &http.Server{
		Handler:           d.adminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
	}
}

// adminHandler routes the admin API:
//
//	GET    /                 status page (HTML)
//	GET    /status           the same, as JSON
//	GET    /healthz          backend and store reachable? 200 or 503 (never needs the token)
//	GET    /metrics          Prometheus metrics
//	GET    /bans             bans in force (JSON list)
//	POST   /bans             ban an IP or CIDR (JSON or form: ip, duration, reason)
//	DELETE /bans/{ip-or-cidr} lift a ban
//	POST   /reload           re-read the config (as SIGHUP)
//	       /debug/pprof/     with [admin] pprof = true
func (d *daemon) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.handleStatusPage)
	mux.HandleFunc("GET /status", d.handleStatusJSON)
	mux.HandleFunc("GET /healthz", d.handleHealthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn), MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("GET /bans", d.handleBansList)
	mux.HandleFunc("POST /bans", d.handleBanAdd)
	mux.HandleFunc("DELETE /bans/{key...}", d.handleBanDel)
	mux.HandleFunc("POST /reload", d.handleReload)
	pp := http.NewServeMux()
	pp.HandleFunc("/debug/pprof/", pprof.Index)
	pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/", func(w http.ResponseWriter, r *http.Request) {
		if !d.settings().Admin.Pprof {
			http.NotFound(w, r)
			return
		}
		pp.ServeHTTP(w, r)
	})
	// A browser page must not make the operator's browser ban, unban or
	// reload by a cross-site form post.
	return d.guard(http.NewCrossOriginProtection().Handler(mux))
}

// guard checks the bearer token (every route but /healthz) and, without a
// token, that the Host header names an address: a DNS-rebinding page
// could otherwise reach a loopback listener from the operator's browser.
func (d *daemon) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		token := d.settings().Admin.Token
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
		host = h
	}
	host = strings.Trim(host, "[]")
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

// banJSON is a ban as the admin API shows it.
type banJSON struct {
	Key         string    `json:"key"`
	Until       time.Time `json:"until"`
	Since       time.Time `json:"since"`
	Reason      string    `json:"reason"`
	Count       int       `json:"count"`
	SecondsLeft int64     `json:"seconds_left"`
	Warning     string    `json:"warning,omitempty"`
}

func toBanJSON(b limiter.Ban, now time.Time) banJSON {
	left := int64(math.Ceil(b.Until.Sub(now).Seconds()))
	return banJSON{Key: b.Key.String(), Until: b.Until.UTC(), Since: b.Since.UTC(), Reason: b.Reason,
		Count: b.Count, SecondsLeft: max(left, 0)}
}

func (d *daemon) handleBansList(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	bans := d.lim.Bans(now)
	out := make([]banJSON, 0, len(bans))
	for _, b := range bans {
		out = append(out, toBanJSON(b, now))
	}
	writeJSON(w, http.StatusOK, out)
}

// banRequest is the body of POST /bans.
type banRequest struct {
	IP       string `json:"ip"`       // an address or a CIDR
	Duration string `json:"duration"` // "" = the escalated ban time
	Reason   string `json:"reason"`   // "" = "admin"
}

// maxAdminBody bounds the body of an admin request.
const maxAdminBody = 4096

// maxAdminBan bounds a ban's duration (ten years).
const maxAdminBan = 10 * 365 * 24 * time.Hour

func (d *daemon) handleBanAdd(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	var req banRequest
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "body: not a JSON object {\"ip\", \"duration\", \"reason\"}: %v", err)
			return
		}
	} else {
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "body: %v", err)
			return
		}
		req = banRequest{IP: r.Form.Get("ip"), Duration: r.Form.Get("duration"), Reason: r.Form.Get("reason")}
	}
	key, err := d.parseTarget(req.IP)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	dur, err := parseBanDuration(req.Duration)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	reason := strings.TrimSpace(req.Reason)
	if len(reason) > 64 || strings.IndexFunc(reason, func(c rune) bool { return c < 0x20 || c > 0x7e }) >= 0 {
		writeError(w, http.StatusBadRequest, "reason: at most 64 printable ASCII characters")
		return
	}
	now := time.Now()
	ban, err := d.lim.BanKey(now, key, dur, reason)
	switch {
	case errors.Is(err, limiter.ErrAllowlisted):
		writeError(w, http.StatusBadRequest, "ip: %v is allowlisted ([limits] allow): it is never banned", key)
		return
	case errors.Is(err, limiter.ErrInvalidPrefix):
		writeError(w, http.StatusBadRequest, "ip: %v", err)
		return
	}
	out := toBanJSON(ban, now)
	if err != nil { // ErrStore: in force, not saved
		out.Warning = fmt.Sprintf("the ban is in force but was not saved: %v", err)
		d.log.Error("admin ban not saved", "key", key.String(), "err", err)
	}
	d.log.Warn("ban", "key", key.String(), "until", ban.Until.Format(time.RFC3339),
		"for", ban.Until.Sub(now).Round(time.Second), "count", ban.Count, "reason", ban.Reason,
		"origin", "admin", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusCreated, out)
}

func (d *daemon) handleBanDel(w http.ResponseWriter, r *http.Request) {
	key, err := d.parseTarget(r.PathValue("key"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	lifted, err := d.lim.Unban(key)
	if !lifted && err == nil {
		msg := fmt.Sprintf("no ban of %v in force", key)
		if c := d.lim.Check(time.Now(), key.Addr()); !c.Allowed && c.Ban.Key.IsValid() && c.Ban.Key != key {
			msg += fmt.Sprintf(" (the ban of %v covers it: lift that one)", c.Ban.Key)
		}
		writeError(w, http.StatusNotFound, "%s", msg)
		return
	}
	if err != nil {
		d.log.Error("admin unban: store", "key", key.String(), "err", err)
		writeError(w, http.StatusInternalServerError, "the ban of %v is lifted here, but the store still has it: %v", key, err)
		return
	}
	d.log.Info("unban", "key", key.String(), "origin", "admin", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]string{"unbanned": key.String()})
}

// parseTarget reads the ip of a ban request: a CIDR is taken as it is
// (masked); a bare address is taken as its key ([limits] ipv4_prefix and
// ipv6_prefix), the prefix its budget bans.
func (d *daemon) parseTarget(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return netip.Prefix{}, errors.New("ip: missing (an IP address or CIDR)")
	}
	if strings.Contains(v, "/") {
		p, err := parsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("ip: %q is not an IP address or CIDR", v)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip: %q is not an IP address or CIDR (names are never resolved)", v)
	}
	return d.lim.Key(a), nil
}

// parseBanDuration reads a ban duration: "" (0: the escalated ban time),
// a Go duration ("90m", "2h"), or whole days ("7d").
func parseBanDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	var dur time.Duration
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("duration: %q is not a duration such as \"90m\", \"12h\" or \"7d\"", v)
		}
		dur = time.Duration(min(days, 100_000)) * 24 * time.Hour
	} else {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Errorf("duration: %q is not a duration such as \"90m\", \"12h\" or \"7d\"", v)
		}
	}
	if dur <= 0 {
		return 0, fmt.Errorf("duration: must be positive, got %q", v)
	}
	if dur > maxAdminBan {
		return 0, fmt.Errorf("duration: at most %v (ten years), got %q", maxAdminBan, v)
	}
	return dur, nil
}

func (d *daemon) handleReload(w http.ResponseWriter, r *http.Request) {
	if err := d.reload(); err != nil {
		writeError(w, http.StatusBadRequest, "reload rejected; the old config stays: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "reloaded", "config": d.path, "mode": d.mode()})
}

// health is the answer of /healthz.
type health struct {
	Status  string        `json:"status"` // "ok" or "unhealthy"
	Backend backendHealth `json:"backend"`
	Store   storeHealth   `json:"store"`
}

type backendHealth struct {
	Address string  `json:"address"`
	OK      bool    `json:"ok"`
	DialMS  float64 `json:"dial_ms"`
	Error   string  `json:"error,omitempty"`
}

type storeHealth struct {
	Kind       string `json:"kind"`
	OK         bool   `json:"ok"`
	SharedDown bool   `json:"shared_down"`
	Errors     uint64 `json:"errors"`
	LastError  string `json:"last_error,omitempty"`
}

// checkHealth dials the backend (within dial_timeout, at most limit) and
// looks at the store: a shared store (Redis) is healthy while reachable;
// a local one always is (its last error is reported).
func (d *daemon) checkHealth(ctx context.Context, limit time.Duration) health {
	st := d.settings()
	h := health{Status: "ok"}
	h.Backend.Address = st.Proxy.Backend
	ctx, cancel := context.WithTimeout(ctx, min(st.Proxy.DialTimeout, limit))
	defer cancel()
	start := time.Now()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", st.Proxy.Backend)
	h.Backend.DialMS = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		h.Backend.Error = err.Error()
	} else {
		c.Close()
		h.Backend.OK = true
	}
	ls := d.lim.Stats()
	h.Store = storeHealth{Kind: st.File.Store.Kind, OK: !ls.SharedDown, SharedDown: ls.SharedDown, Errors: ls.StoreErrors}
	if err := d.lim.LastStoreError(); err != nil {
		h.Store.LastError = err.Error()
	}
	if !h.Backend.OK || !h.Store.OK {
		h.Status = "unhealthy"
	}
	return h
}

func (d *daemon) handleHealthz(w http.ResponseWriter, r *http.Request) {
	h := d.checkHealth(r.Context(), time.Minute)
	code := http.StatusOK
	if h.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}
