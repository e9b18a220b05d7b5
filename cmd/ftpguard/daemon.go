package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpguard/ftpguard/admin"
	"github.com/ftpguard/ftpguard/crowdsec"
	"github.com/ftpguard/ftpguard/firewall"
	"github.com/ftpguard/ftpguard/geo"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/stores"
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
	cs     *crowdsec.Link // nil: off
	geo    *geo.Geo
	adm    *admin.Server
	slack  *timerSlack // nil: timer_slack is not applied (tests)
	// adminAt is the [admin] listener in force: the one of the start, as a
	// reload does not move it.
	adminAt admin.Settings

	reloadMu sync.Mutex       // one reload at a time (SIGHUP and POST /reload)
	ports    *proxy.Listeners // guarded by reloadMu; nil until run serves (then reloads open and close listeners)
}

// setListeners hands the daemon the listeners that reloads keep in step
// with the config.
func (d *daemon) setListeners(l *proxy.Listeners) {
	d.reloadMu.Lock()
	d.ports = l
	d.reloadMu.Unlock()
}

// newDaemon wires the parts of a daemon with the settings st around lim:
// the proxy server, the username budgets, the metrics, the firewall runner
// (not started: see firewall.Runner.Run), the CrowdSec link (started: its
// decisions ban at the limiter's Check and Attempt and end the sessions
// they cover, ftpguard's bans are pushed to it; the caller stops it) and
// the admin API (not listening).
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
	d := &daemon{path: path, lim: lim, users: users, srv: srv, level: level, log: log, events: events,
		adminAt: admin.Settings{Network: st.Admin.Network, Address: st.Admin.Address}}
	d.st.Store(st)
	d.fw = firewall.New(st.Firewall, d.observe, log)
	d.m = admin.NewMetrics(lim, users, versionString(), d.mode)
	if err := d.m.Register(d.fw); err != nil {
		return nil, err
	}
	srv.SetObserver(d.m)
	d.cs = st.CrowdSec.Start(log) // stopped by run
	if c := admin.NewCrowdSecCollector(d.cs); c != nil {
		if err := d.m.Register(c); err != nil {
			d.cs.Stop()
			return nil, err
		}
	}
	lim.SetExternal(d.cs.External())
	d.cs.SetDecisionHook(d.onDecisions)
	lim.SetBanHook(d.onBanChange)
	if d.geo, err = geo.Open(st.Geo, st.Limiter); err != nil {
		return nil, err
	}
	d.geo.SetBanHook(d.onBanChange)
	srv.SetGate(d.geo.Gate)
	srv.SetGatePeek(d.geo.Peek)
	srv.SetLimiterFor(d.geo.LimiterFor)
	if err := d.m.Register(d.geo); err != nil {
		return nil, err
	}
	d.adm = admin.New(st.Admin, admin.Options{Limiter: lim, Users: users, Metrics: d.m, Events: events, Log: log,
		Version: versionString(), Start: time.Now(), Reload: d.reload, Info: d.info, CrowdSec: d.cs, MoreBans: d.geo})
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
		ConnRate: p.ConnRate, ConnBurst: p.ConnBurst, NoAuth: p.NoAuth, EndSessionsOnBan: st.File.Limits.EndSessionsOnBan,
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
// the whole file is accepted). The listeners follow the file too: a new
// listen or tls.implicit_listen address, or implicit TLS turned on or off,
// opens the new listener first (one that cannot be opened rejects the
// reload) and closes the old one once the new config is in force; open
// sessions go on (docs/operating.md, "Reload"). admin.listen, [store], [crowdsec], firewall.kind and its nftables keys,
// passive.data_path and passive.nft_table,
// log.format and proxy_protocol.header_timeout take effect on restart.
// Once the new config is in force, the open sessions it refuses and the
// old one did not (a [geo] deny rule, an address off the allowlist inside
// a banned network, the end of observe mode) end as under a new ban, per
// end_sessions_on_ban (proxy.Server.Recheck). An
// invalid file changes nothing: the error says why, and is logged. SIGHUP
// and POST /reload both come here.
func (d *daemon) reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	st, err := LoadConfig(d.path)
	if err == nil && st.Admin.Token == "" && d.adminAt.Reachable() {
		// The file's admin.listen may be loopback now, but the listener
		// open on every interface stays until a restart: without a token,
		// whoever reaches it could lift bans.
		err = fmt.Errorf("%s: admin.token_file: the admin listener in force, %s, is reachable from other hosts and stays open until a restart; it keeps needing a token",
			d.path, d.adminAt.Address)
	}
	refused := d.srv.Refusals() // the sessions refused before: Recheck ends only those the new config refuses
	var plan *proxy.PortPlan
	if err == nil && d.ports != nil {
		plan, err = d.ports.Prepare(st.Proxy.Listen, st.Proxy.ImplicitListen)
	}
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
		if plan != nil {
			d.ports.Abandon(plan)
		}
		d.log.Error("reload rejected; keeping the old config", "err", err)
		return err
	}
	old := d.settings()
	if st.File.Store.Kind == "redis" && stores.AttemptTTLFor(st.Proxy.LoginTimeout) > stores.AttemptTTLFor(old.Proxy.LoginTimeout) {
		d.log.Warn("reload: login_timeout raised; the Redis attempt TTL derived from it takes effect on restart",
			"login_timeout", st.Proxy.LoginTimeout, "attempt_ttl_in_force", stores.AttemptTTLFor(old.Proxy.LoginTimeout))
	}
	if st.Admin.Network != old.Admin.Network || st.Admin.Address != old.Admin.Address {
		d.log.Warn("reload: admin.listen changed; it takes effect on restart", "admin", st.File.Admin.Listen)
	}
	if !reflect.DeepEqual(st.File.CrowdSec, old.File.CrowdSec) {
		d.log.Warn("reload: [crowdsec] changed; it takes effect on restart")
	}
	if f, o := st.File.Firewall, old.File.Firewall; f.Kind != o.Kind || (f.Kind == firewall.KindNftables && !reflect.DeepEqual(f.Config, o.Config)) {
		d.log.Warn("reload: firewall.kind or the nftables keys changed; they take effect on restart", "kind", f.Kind)
	}
	if st.Proxy.DataPath != old.Proxy.DataPath || st.Proxy.NftTable != old.Proxy.NftTable {
		d.log.Warn("reload: passive.data_path or passive.nft_table changed; they take effect on restart",
			"data_path", st.Proxy.DataPath, "nft_table", st.Proxy.NftTable)
	}
	d.srv.SetConfig(st.Proxy.Config)
	if plan != nil {
		d.ports.Commit(plan) // after SetConfig: an implicit listener needs the new TLS config
	}
	d.level.Set(st.LogLevel)
	if d.slack != nil {
		d.slack.apply(st.File.TimerSlack, d.log)
	}
	d.fw.SetConfig(st.Firewall)
	d.adm.SetSettings(st.Admin)
	d.st.Store(st)
	d.log.Info("reloaded", "config", d.path, "mode", d.mode())
	if all, now, ok := d.endSessionsMode(); ok {
		// A ban that comes with the new settings (a [geo] deny rule, an
		// address taken off the allowlist inside a banned network, the
		// end of observe mode) ends the sessions it covers, as any other.
		if n := d.srv.Recheck(refused, all, now); n > 0 {
			d.log.Info("reload: sessions the new config refuses ended", "sessions", n)
		}
	}
	return nil
}

// endSessionsMode returns which sessions a ban ends ([limits]
// end_sessions_on_ban): none (ok false: "off", or observe mode), the
// logged-in ones too (all), at once (now).
func (d *daemon) endSessionsMode() (all, now, ok bool) {
	mode := d.settings().File.Limits.EndSessionsOnBan
	return mode != "pre-login", mode == "all-now", mode != "off" && !d.observe()
}

// endSessions ends the open sessions a new ban of p covers (reason: the
// ban's), per [limits] end_sessions_on_ban.
func (d *daemon) endSessions(p netip.Prefix, reason string) {
	if all, now, ok := d.endSessionsMode(); ok {
		d.srv.EndSessions(p, reason, all, now)
	}
}

// onDecisions is the CrowdSec bouncer's hook: the open sessions a new
// decision covers end as for a ban of ftpguard's own (allowlisted peers
// never; in observe mode none), with the reason "crowdsec". All the
// decisions of a poll are matched in one pass over the sessions
// (proxy.Server.EndBans): a blocklist pull brings tens of thousands.
func (d *daemon) onDecisions(fresh []crowdsec.Decision) {
	all, now, ok := d.endSessionsMode()
	if !ok {
		return
	}
	bans := make([]proxy.Ban, len(fresh))
	for i, c := range fresh {
		bans[i] = proxy.Ban{Prefix: c.Prefix, Reason: crowdsec.Source + ": " + c.Scenario}
	}
	d.srv.EndBans(bans, all, now)
}

// onBanChange is the limiter's ban hook: it logs the bans and unbans
// learned from the shared store (this instance's own are logged where they
// are made), logs as an error a ban of this instance's that the store
// failed to save (it is in force and retried: "ban not saved"), and once
// it is saved ("ban saved"), and hands every change to the firewall runner
// (not the "saved" report, which changes nothing in force), and this
// instance's own bans to the CrowdSec watcher (not in observe mode); it
// logs the bans widened to a network and ends the open sessions a new ban
// covers ([limits] end_sessions_on_ban) — a learned ban's through
// proxy.Server.EndBansSoon, which ends a resync's thousands in a few passes.
func (d *daemon) onBanChange(c limiter.BanChange) {
	switch {
	case c.Saved:
		d.log.Info("ban saved", "key", c.Ban.Key.String(), "until", c.Ban.Until.Format(time.RFC3339), "saved", true)
		return
	case c.Unsaved:
		d.log.Error("ban not saved; in force, retrying until saved", "key", c.Ban.Key.String(),
			"until", c.Ban.Until.Format(time.RFC3339), "saved", false, "err", d.lim.LastStoreError())
	}
	if !c.Remote && !c.Lifted && strings.HasPrefix(c.Ban.Reason, limiter.ReasonWidened) {
		d.log.Warn("ban", "key", c.Ban.Key.String(), "until", c.Ban.Until.Format(time.RFC3339),
			"count", c.Ban.Count, "reason", c.Ban.Reason, "origin", "widened")
	}
	if !c.Lifted {
		if c.Remote { // learned: a resync reports thousands, one at a time
			if all, now, ok := d.endSessionsMode(); ok {
				d.srv.EndBansSoon(proxy.Ban{Prefix: c.Ban.Key, Reason: c.Ban.Reason}, all, now)
			}
		} else {
			d.endSessions(c.Ban.Key, c.Ban.Reason)
		}
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
	if !d.observe() { // observe mode refuses nobody, through CrowdSec's bouncers neither
		d.cs.Hook(c) // this instance's own bans only
	}
}
