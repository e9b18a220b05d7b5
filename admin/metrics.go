package admin

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ftpguard/ftpguard/limiter"
)

// rejectReasons are the reasons the proxy gives for a refusal (proxy
// Server.reject), the values of the reason label of ftpguard_rejects_total.
// Any other reason counts as "other", so that the label set stays bounded
// whatever the proxy logs.
var rejectReasons = []string{
	"banned",
	"budget exhausted",
	"attempts in flight",
	"too many logins waiting",
	"username throttled", // a PASS for a username whose budget is spent, from a new address: 530, no cost
	"too many usernames from key",
	"trap username", // a PASS for a trap username: never forwarded, the key banned
	"geo",           // a [geo] rule refused the connection at the gate
	"max_conns",
	"max_conns_per_ip",
	"shed",           // a pre-login session closed to make room at max_conns
	"noauth penalty", // a key whose connections keep ending without a login
	"conn_rate",      // a key over its connection rate
	"max_preauth_commands",
	"line too long",
	"shutting down",
	"store unreachable (fail_closed)",
	"PROXY header",
	"PROXY header from untrusted source",
	"data connection from foreign address",
	"active mode to a foreign address",
	"active mode to a privileged port",
	"plaintext after AUTH TLS",
	"replies not read",
	"reply out of step",
	"implicit TLS off", // a connection on the implicit listener while a reload closes it
	"observe",          // observe mode: a refusal that was only logged
	"other",
}

// rejectIndex maps a reason to its place in rejectReasons (read-only
// after init, so safe for concurrent reads).
var rejectIndex = func() map[string]int {
	m := make(map[string]int, len(rejectReasons))
	for i, r := range rejectReasons {
		m[r] = i
	}
	return m
}()

// Metrics is the proxy.Observer of a running ftpguard: it counts the
// proxy's events in atomics (its methods are on the proxy's hot paths) and,
// as a prometheus.Collector, reports them together with the limiter's and
// the username budgets' counters, read at scrape time; other packages'
// collectors join it with Register. It never sees a password or a
// username. Make it with NewMetrics; safe for concurrent use.
type Metrics struct {
	sessionsActive atomic.Int64
	sessionsTotal  atomic.Uint64
	loginsOK       atomic.Uint64
	loginsFailed   atomic.Uint64
	bytesUp        atomic.Uint64
	bytesDown      atomic.Uint64
	dataRelayed    atomic.Uint64
	dataKernel     atomic.Uint64
	dialErrors     atomic.Uint64
	rejects        []atomic.Uint64 // by rejectIndex
	reloadsOK      atomic.Uint64
	reloadsFailed  atomic.Uint64
	panics         atomic.Uint64
	dial           prometheus.Histogram

	lim     *limiter.Limiter
	users   *limiter.Users
	mode    func() string
	version string
	start   time.Time

	reg *prometheus.Registry
}

// dialBuckets span a loopback connect (≈100µs) to a dial timeout.
var dialBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewMetrics returns the metrics of a daemon, registered in a registry of
// their own (with the Go runtime and process collectors), never the global
// one. lim and users may be nil; mode reports the current mode ("enforce"
// or "observe"); version is the build_info label.
func NewMetrics(lim *limiter.Limiter, users *limiter.Users, version string, mode func() string) *Metrics {
	m := &Metrics{
		rejects: make([]atomic.Uint64, len(rejectReasons)),
		dial: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ftpguard_backend_dial_seconds",
			Help:    "Time to connect to the backend's control port (successful or not).",
			Buckets: dialBuckets,
		}),
		lim: lim, users: users, mode: mode, version: version, start: time.Now(),
		reg: prometheus.NewRegistry(),
	}
	m.reg.MustRegister(m, m.dial,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds the collector of another part of the daemon (the firewall
// runner's) to the metrics served.
func (m *Metrics) Register(c prometheus.Collector) error { return m.reg.Register(c) }

// The proxy.Observer methods.

// SessionStart counts a session admitted.
func (m *Metrics) SessionStart() {
	m.sessionsActive.Add(1)
	m.sessionsTotal.Add(1)
}

// SessionEnd counts a session ended.
func (m *Metrics) SessionEnd() { m.sessionsActive.Add(-1) }

// Reject counts a refusal by its reason (an unknown one as "other").
func (m *Metrics) Reject(reason string) {
	i, ok := rejectIndex[reason]
	if !ok {
		i = rejectIndex["other"]
	}
	m.rejects[i].Add(1)
}

// Login counts a login that succeeded or a password attempt that failed.
func (m *Metrics) Login(ok bool) {
	if ok {
		m.loginsOK.Add(1)
	} else {
		m.loginsFailed.Add(1)
	}
}

// Ban is counted by the limiter (Stats.BansCreated), which sees admin
// bans too.
func (m *Metrics) Ban() {}

// DataConn counts the data connections that began, by path.
func (m *Metrics) DataConn(kernel bool) {
	if kernel {
		m.dataKernel.Add(1)
	} else {
		m.dataRelayed.Add(1)
	}
}

// Bytes counts data-connection bytes relayed, or carried by the kernel.
func (m *Metrics) Bytes(upload bool, n int64) {
	if n <= 0 {
		return
	}
	if upload {
		m.bytesUp.Add(uint64(n))
	} else {
		m.bytesDown.Add(uint64(n))
	}
}

// BackendDial records a dial of the backend's control port.
func (m *Metrics) BackendDial(d time.Duration, err error) {
	m.dial.Observe(d.Seconds())
	if err != nil {
		m.dialErrors.Add(1)
	}
}

// Panic counts a panic recovered in a connection's goroutine (the
// connection ended, the process went on).
func (m *Metrics) Panic() { m.panics.Add(1) }

// Reloaded counts a reload (SIGHUP or POST /reload); err nil: accepted.
func (m *Metrics) Reloaded(err error) {
	if err != nil {
		m.reloadsFailed.Add(1)
	} else {
		m.reloadsOK.Add(1)
	}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descSessionsActive = desc("ftpguard_sessions_active", "Client sessions admitted and open now.")
	descSessionsTotal  = desc("ftpguard_sessions_total", "Client sessions admitted (backend dialed) since start.")
	descLogins         = desc("ftpguard_logins_total", "Logins that succeeded (result=ok) and password attempts that failed (result=failed).", "result")
	descBansActive     = desc("ftpguard_bans_active", "Bans in force (made here, by an admin, or learned from the shared store).")
	descBansTotal      = desc("ftpguard_bans_total", "Bans made by this instance (spent budgets and admin bans) since start.")
	descRejects        = desc("ftpguard_rejects_total", "Connections, commands and data connections refused, by reason (reason=\"observe\": only logged, in observe mode).", "reason")
	descBytes          = desc("ftpguard_bytes_relayed_total", "Data-connection bytes (TCP payload) relayed, and those of transfers the kernel carried ([passive] data_path = \"nftables\", counted at each one's end), by direction (upload: client to daemon).", "direction")
	descStoreErrors    = desc("ftpguard_store_errors_total", "Failed calls to the ban store.")
	descStoreDown      = desc("ftpguard_store_down", "1 while the shared store (Redis) is unreachable and decisions are local.")
	descBansUnsaved    = desc("ftpguard_bans_unsaved", "Ban changes in force but not saved by the store (a full disk, a store error), being retried.")
	descBansUnsynced   = desc("ftpguard_bans_unsynced", "Ban changes queued for the shared store while it is unreachable.")
	descDataConns      = desc("ftpguard_data_connections_total", "Data connections that began: relayed by ftpguard (path=relay; their bytes are in ftpguard_bytes_relayed_total) or carried by the kernel's NAT (path=kernel, [passive] data_path = \"nftables\"; their bytes are counted by the kernel, in ftpguard_bytes_relayed_total too).", "path")
	descDialErrors     = desc("ftpguard_backend_dial_errors_total", "Failed connections to the backend's control port.")
	descTracked        = desc("ftpguard_tracked_keys", "Address keys with budget state in memory.")
	descRemembered     = desc("ftpguard_remembered_bans", "Ended bans kept to escalate the next ban of their key.")
	descEvicted        = desc("ftpguard_evicted_keys_total", "Budgets forgotten to stay within limits.max_tracked.")
	descBansEvicted    = desc("ftpguard_bans_evicted_total", "Ban records dropped from memory to stay within limits.max_tracked: state=ended (kept only to escalate a repeat offender, dropped first) or state=in_force (a ban lifted early: the table is full of bans in force; alert on it).", "state")
	descUserThrottled  = desc("ftpguard_user_budgets_throttled_total", "Password attempts answered 530 by ftpguard because the username's budget was spent.")
	descUserNames      = desc("ftpguard_user_names_refused_total", "Password attempts refused because the address tried too many usernames.")
	descUserTracked    = desc("ftpguard_tracked_usernames", "Usernames with budget state in memory.")
	descReloads        = desc("ftpguard_config_reloads_total", "Config reloads (SIGHUP or POST /reload), by result (ok, failed: the old config stays).", "result")
	descPanics         = desc("ftpguard_panics_total", "Panics recovered in a connection's goroutines (that connection was closed, the process went on): a bug, please report it with the logged stack.")
	descObserve        = desc("ftpguard_observe_mode", "1 in observe mode (nothing is refused), 0 in enforce mode.")
	descBuildInfo      = desc("ftpguard_build_info", "Always 1; the version label says which ftpguard runs.", "version")
	descStart          = desc("ftpguard_start_time_seconds", "Unix time the daemon started.")
)

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessionsActive, descSessionsTotal, descLogins, descBansActive,
		descBansTotal, descRejects, descBytes, descStoreErrors, descStoreDown, descBansUnsaved, descBansUnsynced, descDataConns, descDialErrors, descTracked,
		descRemembered, descEvicted, descBansEvicted, descUserThrottled, descUserNames, descUserTracked, descReloads, descPanics, descObserve, descBuildInfo, descStart} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the proxy's counters, and the
// limiter's and username budgets' read now.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	gauge(descSessionsActive, float64(m.sessionsActive.Load()))
	counter(descSessionsTotal, m.sessionsTotal.Load())
	counter(descLogins, m.loginsOK.Load(), "ok")
	counter(descLogins, m.loginsFailed.Load(), "failed")
	for i, r := range rejectReasons {
		counter(descRejects, m.rejects[i].Load(), r)
	}
	counter(descBytes, m.bytesUp.Load(), "upload")
	counter(descBytes, m.bytesDown.Load(), "download")
	counter(descDataConns, m.dataRelayed.Load(), "relay")
	counter(descDataConns, m.dataKernel.Load(), "kernel")
	counter(descDialErrors, m.dialErrors.Load())
	counter(descReloads, m.reloadsOK.Load(), "ok")
	counter(descReloads, m.reloadsFailed.Load(), "failed")
	counter(descPanics, m.panics.Load())
	if m.lim != nil {
		st := m.lim.Stats()
		gauge(descBansActive, float64(st.Banned))
		counter(descBansTotal, st.BansCreated)
		counter(descStoreErrors, st.StoreErrors)
		gauge(descStoreDown, b2f(st.SharedDown))
		gauge(descBansUnsaved, float64(st.Unsaved))
		gauge(descBansUnsynced, float64(st.Unsynced))
		gauge(descTracked, float64(st.Tracked))
		gauge(descRemembered, float64(st.Remembered))
		counter(descEvicted, st.Evicted)
		counter(descBansEvicted, st.BansEvicted, "in_force")
		counter(descBansEvicted, st.RememberedEvicted, "ended")
	}
	if m.users != nil {
		us := m.users.Stats()
		counter(descUserThrottled, us.Throttled)
		counter(descUserNames, us.TooManyNames)
		gauge(descUserTracked, float64(us.Users))
	}
	if m.mode != nil {
		gauge(descObserve, b2f(m.mode() == "observe"))
	}
	gauge(descBuildInfo, 1, m.version)
	gauge(descStart, float64(m.start.UnixNano())/1e9)
}

// snapshot is what the status page and `ftpguard status` show of the
// counters.
type snapshot struct {
	SessionsActive int64             `json:"sessions_active"`
	SessionsTotal  uint64            `json:"sessions_total"`
	LoginsOK       uint64            `json:"logins_ok"`
	LoginsFailed   uint64            `json:"logins_failed"`
	BansActive     int               `json:"bans_active"`
	BansTotal      uint64            `json:"bans_total"`
	Rejects        map[string]uint64 `json:"rejects"`
	BytesUp        uint64            `json:"bytes_upload"`
	BytesDown      uint64            `json:"bytes_download"`
	StoreErrors    uint64            `json:"store_errors"`
	StoreDown      bool              `json:"store_down"`
	DialErrors     uint64            `json:"backend_dial_errors"`
	TrackedKeys    int               `json:"tracked_keys"`
	UserThrottled  uint64            `json:"user_budgets_throttled"`
}

func (m *Metrics) snapshot() snapshot {
	s := snapshot{
		SessionsActive: m.sessionsActive.Load(),
		SessionsTotal:  m.sessionsTotal.Load(),
		LoginsOK:       m.loginsOK.Load(),
		LoginsFailed:   m.loginsFailed.Load(),
		Rejects:        make(map[string]uint64),
		BytesUp:        m.bytesUp.Load(),
		BytesDown:      m.bytesDown.Load(),
		DialErrors:     m.dialErrors.Load(),
	}
	for i, r := range rejectReasons {
		if n := m.rejects[i].Load(); n > 0 {
			s.Rejects[r] = n
		}
	}
	if m.lim != nil {
		st := m.lim.Stats()
		s.BansActive, s.BansTotal, s.StoreErrors, s.StoreDown, s.TrackedKeys =
			st.Banned, st.BansCreated, st.StoreErrors, st.SharedDown, st.Tracked
	}
	if m.users != nil {
		s.UserThrottled = m.users.Stats().Throttled
	}
	return s
}
