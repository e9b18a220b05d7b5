package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftpguard/ftpguard/crowdsec"
)

var (
	descCSDecisions = desc("ftpguard_crowdsec_decisions", "CrowdSec ban decisions in force at the gate (the bouncer's table).")
	descCSPolls     = desc("ftpguard_crowdsec_polls_total", "Polls of the CrowdSec LAPI's decision stream, by result (ok, failed: the decisions held are kept).", "result")
	descCSLastOK    = desc("ftpguard_crowdsec_last_poll_success_timestamp_seconds", "Unix time of the latest successful poll of the LAPI (0: none yet).")
	descCSUp        = desc("ftpguard_crowdsec_lapi_up", "1 if the latest poll of the LAPI succeeded, 0 if it failed or none was made yet.")
	descCSIgnored   = desc("ftpguard_crowdsec_decisions_ignored_total", "Decisions received from the LAPI but not enforced (not a ban, scope or origin not wanted, bad value).")
	descCSPushed    = desc("ftpguard_crowdsec_watcher_bans_total", "ftpguard's bans handed to the CrowdSec watcher, by result (pushed to the LAPI; dropped: the queue was full; expired before they could be sent).", "result")
	descCSPushFail  = desc("ftpguard_crowdsec_watcher_push_failures_total", "Failed pushes of alerts to the LAPI (their bans are queued again).")
	descCSQueue     = desc("ftpguard_crowdsec_watcher_queue_length", "ftpguard's bans waiting to be pushed to the LAPI.")
)

// crowdSecCollector exports a CrowdSec link's counters.
type crowdSecCollector struct{ l *crowdsec.Link }

// NewCrowdSecCollector returns the Prometheus collector of link's bouncer
// and watcher counters (register it with Metrics.Register); nil when the
// link is off. The metrics of a half that is off are not exported.
func NewCrowdSecCollector(link *crowdsec.Link) prometheus.Collector {
	if link == nil {
		return nil
	}
	return crowdSecCollector{link}
}

// Describe implements prometheus.Collector.
func (c crowdSecCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCSDecisions, descCSPolls, descCSLastOK, descCSUp, descCSIgnored,
		descCSPushed, descCSPushFail, descCSQueue} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c crowdSecCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if b := c.l.Bouncer; b != nil {
		s := b.Stats()
		gauge(descCSDecisions, float64(s.Decisions))
		counter(descCSPolls, s.PollsOK, "ok")
		counter(descCSPolls, s.PollsFailed, "failed")
		counter(descCSIgnored, s.Ignored)
		last := 0.0
		if !s.LastOK.IsZero() {
			last = float64(s.LastOK.UnixNano()) / 1e9
		}
		gauge(descCSLastOK, last)
		up := 0.0
		if !s.LastOK.IsZero() && !s.LastOK.Before(s.LastErrorAt) {
			up = 1
		}
		gauge(descCSUp, up)
	}
	if w := c.l.Watcher; w != nil {
		s := w.Stats()
		counter(descCSPushed, s.Pushed, "pushed")
		counter(descCSPushed, s.Dropped, "dropped")
		counter(descCSPushed, s.Expired, "expired")
		counter(descCSPushFail, s.PushFailed)
		gauge(descCSQueue, float64(s.Queued))
	}
}
