package main

import (
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/admin"
	"github.com/ftpguard/ftpguard/firewall"
	"github.com/ftpguard/ftpguard/geo"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/proxy"
)

// daemon is a running ftpguard: the parts that the signal loop and the
// admin API share, wired together. Each part keeps its own settings; the
// daemon only holds the file's for what is main's (mode, log level) and
// for what the admin API shows. Safe for concurrent use.
type daemon struct {
	path   string                   // the config file, re-read by reload
	st     atomic.Pointer[Settings] // the settings in force
	lim    *limiter.Limiter
	users  *limiter.Users
	srv    *proxy.Server
	level  *slog.LevelVar
	log    *slog.Logger
	events *admin.EventRing
	m      *admin.Metrics
	fw     *firewall.Runner
	geo    *geo.Geo
	adm    *admin.Server

	reloadMu sync.Mutex // one reload at a time (SIGHUP and POST /reload)
}

// newDaemon wires the parts of a daemon with the settings st around lim:
// the proxy server, the username budgets, the metrics, the firewall runner
// (not started: see firewall.Runner.Run) and the admin API (not
// listening).
func newDaemon(path string, st *Settings, lim *limiter.Limiter, log *slog.Logger, level *slog.LevelVar,
	events *admin.EventRing) (*daemon, error) {
	srv, err := proxy.New(st.Proxy.Config, lim, log)
	if err != nil {
		return nil, err
	}
	users, err := limiter.NewUsers(st.Users)
	if err != nil {
		return nil, err
	}
	if sh := lim.SharedUsers(); sh != nil {
		users.SetShared(sh) // one budget a username for the whole fleet
	}
	srv.SetUsers(users)
	d := &daemon{path: path, lim: lim, users: users, srv: srv, level: level, log: log, events: events}
	d.st.Store(st)
	d.fw = firewall.New(st.Firewall, d.observe, log)
	d.m = admin.NewMetrics(lim, users, versionString(), d.mode)
	if err := d.m.Register(d.fw); err != nil {
		return nil, err
	}
	srv.SetObserver(d.m)
	lim.SetBanHook(d.onBanChange)
	if d.geo, err = geo.Open(st.Geo, st.Limiter); err != nil {
		return nil, err
	}
	d.geo.SetBanHook(d.onBanChange)
	srv.SetGate(d.geo.Gate)
	srv.SetLimiterFor(d.geo.LimiterFor)
	if err := d.m.Register(d.geo); err != nil {
		return nil, err
	}
	d.adm = admin.New(st.Admin, admin.Options{Limiter: lim, Users: users, Metrics: d.m, Events: events, Log: log,
		Version: versionString(), Start: time.Now(), Reload: d.reload, Info: d.info})
	return d, nil
}

// settings returns the settings in force.
func (d *daemon) settings() *Settings { return d.st.Load() }

// observe reports whether the daemon is in observe mode.
func (d *daemon) observe() bool { return d.settings().Proxy.Observe }

// mode returns "enforce" or "observe".
func (d *daemon) mode() string {
	if d.observe() {
		return "observe"
	}
	return "enforce"
}

// info is what the admin API shows of the settings in force.
func (d *daemon) info() admin.Info {
	st := d.settings()
	p := st.Proxy
	return admin.Info{Config: d.path, Mode: d.mode(), Listen: p.Listen, Backend: p.Backend, DialTimeout: p.DialTimeout,
		Store: st.File.Store.Kind, Limits: st.Limiter, Users: st.Users, MaxConns: p.MaxConns,
		MaxConnsPerIP: p.MaxConnsPerIP, LoginTimeout: p.LoginTimeout, IdleTimeout: p.IdleTimeout,
		GeoRefusals: d.geoRefusals(st)}
}

// geoRefusals is the [geo] refusals per country, nil without rules.
func (d *daemon) geoRefusals(st *Settings) map[string]uint64 {
	if !st.Geo.Enabled() {
		return nil
	}
	return d.geo.Refusals()
}

// reload re-reads the config file and hands each part its new settings,
// for later decisions, without dropping a session: limits, allowlist,
// timeouts, mode, log level, firewall commands, the admin token, pprof and
// the TLS key pair (held by the proxy server, put in use only here, once
// the whole file is accepted). listen, admin.listen, tls.implicit_listen,
// [store], log.format and proxy_protocol.header_timeout take effect on
// restart. An invalid file changes nothing: the error says why, and is
// logged. SIGHUP and POST /reload both come here.
func (d *daemon) reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	st, err := LoadConfig(d.path)
	if err == nil {
		err = d.geo.Reload(st.Geo, st.Limiter) // the databases re-read; on error the old ones stay
	}
	if err == nil {
		err = d.lim.Reload(st.Limiter)
	}
	if err == nil {
		err = d.users.Reload(st.Users)
	}
	d.m.Reloaded(err)
	if err != nil {
		d.log.Error("reload rejected; keeping the old config", "err", err)
		return err
	}
	old := d.settings()
	if st.Proxy.Listen != old.Proxy.Listen {
		d.log.Warn("reload: listen changed; it takes effect on restart", "listen", st.Proxy.Listen)
	}
	if st.Admin.Network != old.Admin.Network || st.Admin.Address != old.Admin.Address {
		d.log.Warn("reload: admin.listen changed; it takes effect on restart", "admin", st.File.Admin.Listen)
	}
	d.srv.SetConfig(st.Proxy.Config)
	d.level.Set(st.LogLevel)
	d.fw.SetConfig(st.Firewall)
	d.adm.SetSettings(st.Admin)
	d.st.Store(st)
	d.log.Info("reloaded", "config", d.path, "mode", d.mode())
	return nil
}

// onBanChange is the limiter's ban hook: it logs the bans and unbans
// learned from the shared store and the bans widened to a network (this
// instance's other bans are logged where they are made), ends the open
// sessions a new ban covers ([limits] end_sessions_on_ban) and hands every
// change to the firewall runner.
func (d *daemon) onBanChange(c limiter.BanChange) {
	if !c.Remote && !c.Lifted && strings.HasPrefix(c.Ban.Reason, limiter.ReasonWidened) {
		d.log.Warn("ban", "key", c.Ban.Key.String(), "until", c.Ban.Until.Format(time.RFC3339),
			"count", c.Ban.Count, "reason", c.Ban.Reason, "origin", "widened")
	}
	if mode := d.settings().File.Limits.EndSessionsOnBan; !c.Lifted && mode != "off" {
		d.srv.EndSessions(c.Ban.Key, c.Ban.Reason, mode != "pre-login", mode == "all-now")
	}
	if c.Remote {
		if c.Lifted {
			d.log.Info("unban", "key", c.Ban.Key.String(), "origin", "shared store")
		} else {
			d.log.Warn("ban", "key", c.Ban.Key.String(), "until", c.Ban.Until.Format(time.RFC3339),
				"count", c.Ban.Count, "reason", c.Ban.Reason, "origin", "shared store")
		}
	}
	d.fw.Hook(c)
}
