package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

//go:embed status.html
var statusHTML string

// statusTmpl is the status page. html/template escapes every value:
// usernames, keys and reasons come from clients and admins.
var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes":  humanBytes,
	"ago":    func(t, now time.Time) string { return humanDuration(now.Sub(t)) + " ago" },
	"clock":  func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"step":   func(w SeriesWindow) string { return shortDuration(time.Duration(w.StepSeconds * float64(time.Second))) },
	"window": func(w SeriesWindow) string { return shortDuration(time.Duration(w.SpanSeconds * float64(time.Second))) },
	"hot":    func(name string) bool { return name != "logins_ok" && name != "bytes" && name != "sessions" },
}).Parse(statusHTML))

// statusBansMax bounds the bans listed on the status page (the soonest to
// end first); the count of the others is shown.
const statusBansMax = 200

// Status is what the status page and GET /status show (and `ftpguard
// status` reads).
type Status struct {
	Version  string        `json:"version"`
	Mode     string        `json:"mode"`
	Started  time.Time     `json:"started"`
	Uptime   string        `json:"uptime"`
	Now      time.Time     `json:"now"`
	Listen   string        `json:"listen"`
	Backend  string        `json:"backend"`
	Health   Health        `json:"health"`
	Counters snapshot      `json:"counters"`
	Rejects  []reasonCount `json:"-"`
	Bans     []banView     `json:"bans"`
	MoreBans int           `json:"more_bans"`
	// Throttled usernames: logins to them from new addresses are paused.
	Users     []userView  `json:"throttled_users"`
	MoreUsers int         `json:"more_throttled_users"`
	Events    []Event     `json:"events"`
	Settings  []setting   `json:"settings"`
	History   HistoryView `json:"history"`
	Charts    []chartRow  `json:"-"` // History drawn
}

type reasonCount struct {
	Reason string
	N      uint64
}

type banView struct {
	banJSON
	Left string `json:"left"`
}

type userView struct {
	userJSON
	Retry string `json:"retry_in"`
	Full  string `json:"full_in"`
}

type setting struct {
	Group string `json:"group"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// status gathers the status page's data. The backend check waits at most
// a second, so that the page never hangs.
func (a *Server) status(r *http.Request) Status {
	now := time.Now()
	info := a.opt.Info()
	s := Status{
		Version: a.opt.Version, Mode: info.Mode, Started: a.opt.Start, Now: now,
		Uptime: humanDuration(now.Sub(a.opt.Start)), Listen: info.Listen, Backend: info.Backend,
		Health:   a.checkHealth(r.Context(), time.Second),
		Counters: a.m.snapshot(),
		Events:   a.opt.Events.List(),
		Settings: settingsView(info),
		History:  a.h.View(),
	}
	s.Charts = chartRows(s.History)
	for _, reason := range sortedReasons(s.Counters.Rejects) {
		s.Rejects = append(s.Rejects, reasonCount{reason, s.Counters.Rejects[reason]})
	}
	// One bounded page of the bans (the bans due first come early in it),
	// not the whole table: the page reloads every 5 s. No-auth penalties
	// and [geo] budget bans are included.
	bans, _ := a.lim.BansPage(now, 0, statusBansMax)
	pen := a.sideBans(now) // no-auth penalties, [geo] budget bans
	s.Counters.BansActive = max(a.lim.Stats().Banned, len(bans)) + len(pen)
	if len(pen) > 0 {
		bans = append(bans, pen...)
		slices.SortStableFunc(bans, func(x, y limiter.Ban) int { return x.Until.Compare(y.Until) })
		bans = bans[:min(len(bans), statusBansMax)]
	}
	s.MoreBans = s.Counters.BansActive - len(bans)
	for _, b := range bans {
		s.Bans = append(s.Bans, banView{toBanJSON(b, now), humanDuration(b.Until.Sub(now))})
	}
	users := a.throttledUsers(now)
	if len(users) > statusBansMax {
		s.MoreUsers = len(users) - statusBansMax
		users = users[:statusBansMax]
	}
	for _, u := range users {
		s.Users = append(s.Users, userView{u, humanDuration(time.Duration(u.RetryInSeconds) * time.Second),
			humanDuration(time.Duration(u.FullInSeconds) * time.Second)})
	}
	return s
}

// settingsView lists the budget settings in force.
func settingsView(info Info) []setting {
	l, u := info.Limits, info.Users
	allow := "none"
	if len(l.Allow) > 0 {
		var a []string
		for _, x := range l.Allow {
			a = append(a, x.String())
		}
		allow = strings.Join(a, ", ")
	}
	users := "off"
	if u.Failures > 0 {
		users = fmt.Sprintf("%d failures per username per %s; known-good pairs kept %s; at most %d names per key",
			u.Failures, shortDuration(u.Window), shortDuration(u.KnownGoodTTL), u.MaxNamesPerKey)
	}
	tarpit := "off"
	if l.FailureDelay > 0 {
		tarpit = fmt.Sprintf("%s, doubling per failure, up to %s", shortDuration(l.FailureDelay), shortDuration(max(l.MaxFailureDelay, l.FailureDelay)))
	}
	widen := "off"
	if l.WidenIPv6Prefix > 0 || l.WidenIPv4Prefix > 0 {
		var nets []string
		if l.WidenIPv4Prefix > 0 {
			nets = append(nets, fmt.Sprintf("IPv4 /%d", l.WidenIPv4Prefix))
		}
		if l.WidenIPv6Prefix > 0 {
			nets = append(nets, fmt.Sprintf("IPv6 /%d", l.WidenIPv6Prefix))
		}
		after := l.WidenAfter
		if after == 0 {
			after = limiter.DefaultWidenAfter
		}
		widen = fmt.Sprintf("to the %s once %d keys in it are banned within %s", strings.Join(nets, ", "),
			after, shortDuration(l.Window))
	}
	traps := "none"
	if n := len(u.TrapUsernames); n > 0 {
		traps = fmt.Sprintf("%d name(s): a guess for one bans the key at once", n)
	}
	connRate := "off"
	if info.ConnRate > 0 {
		connRate = fmt.Sprintf("%g a second per key, bursts of %d", info.ConnRate, info.ConnBurst)
	}
	noauth := "off"
	if na := info.NoAuth; na.Penalty > 0 {
		noauth = fmt.Sprintf("%s after %d connections without a login attempt, × %g per repeat, up to %s",
			shortDuration(na.Penalty), na.After, na.Factor, shortDuration(max(na.MaxPenalty, na.Penalty)))
	}
	out := []setting{
		{"limits", "budget", fmt.Sprintf("%d failures per key, refilled over %s", l.Failures, shortDuration(l.Window))},
		{"limits", "bans", fmt.Sprintf("%s, × %g per repeat offence, up to %s", shortDuration(l.BanTime), l.BanFactor, shortDuration(l.MaxBanTime))},
		{"limits", "keys", fmt.Sprintf("IPv4 /%d, IPv6 /%d; at most %d tracked", l.IPv4Prefix, l.IPv6Prefix, l.MaxTracked)},
		{"limits", "allowlist", allow},
		{"limits", "success resets the budget", fmt.Sprint(l.SuccessResets)},
		{"limits", "tarpit", tarpit},
		{"limits", "logins waiting per key", fmt.Sprint(l.MaxLoginWaiters)},
		{"limits", "bans widen", widen},
		{"limits", "a ban ends sessions", endSessionsView(info.EndSessionsOnBan)},
		{"user_limits", "username budgets", users},
		{"user_limits", "trap usernames", traps},
		{"sessions", "connections", fmt.Sprintf("at most %d (pre-login ones shed when full), %d per address key", info.MaxConns, info.MaxConnsPerIP)},
		{"sessions", "connection rate", connRate},
		{"sessions", "no-auth penalty", noauth},
		{"sessions", "timeouts", fmt.Sprintf("login %s, idle %s", shortDuration(info.LoginTimeout), shortDuration(info.IdleTimeout))},
		{"store", "kind", info.Store},
	}
	if len(info.GeoRefusals) > 0 {
		var parts []string
		for _, c := range sortedReasons(info.GeoRefusals) {
			parts = append(parts, fmt.Sprintf("%s %d", c, info.GeoRefusals[c]))
		}
		out = append(out, setting{"geo", "refusals by country", strings.Join(parts, ", ")})
	}
	return out
}

// endSessionsView says which sessions a new ban ends
// ([limits] end_sessions_on_ban).
func endSessionsView(mode string) string {
	switch mode {
	case "off":
		return "none (refused at their next login command)"
	case "all":
		return "all, logged-in ones after their current reply"
	case "all-now":
		return "all, at once"
	default:
		return "those not logged in"
	}
}

func (a *Server) handleStatusPage(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if err := statusTmpl.Execute(&buf, a.status(r)); err != nil {
		a.log.Error("status page", "err", err)
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	// Nothing external, nothing inline but the style sheet.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(buf.Bytes())
}

func (a *Server) handleStatusJSON(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.status(r))
}

// shortDuration formats a setting's duration without zero tails: "1h",
// "10m", "1h30m", "500ms".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// humanDuration formats d to the second, in at most two units: "3d4h",
// "2h5m", "4m12s", "9s".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d.Round(time.Second) / time.Second)
	days, s := s/86400, s%86400
	h, s := s/3600, s%3600
	m, s := s/60, s%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd%dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh%dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%ds", m, s)
	default:
		return fmt.Sprintf("%ds", s)
	}
}

// humanBytes formats n bytes in binary units: "512 B", "1.5 MiB".
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
