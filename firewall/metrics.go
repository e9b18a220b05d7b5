package firewall

import "github.com/prometheus/client_golang/prometheus"

var (
	descCommands = prometheus.NewDesc("ftpguard_firewall_commands_total",
		"Firewall commands, by action (ban, unban) and result (ok, failed, timeout, dropped: the queue was full).",
		[]string{"action", "result"}, nil)
	descQueue = prometheus.NewDesc("ftpguard_firewall_queue_length", "Firewall commands waiting to run.", nil, nil)
)

// Describe implements prometheus.Collector.
func (f *Runner) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCommands
	ch <- descQueue
}

// Collect implements prometheus.Collector: the commands run so far, by
// action and result, and the queue's length.
func (f *Runner) Collect(ch chan<- prometheus.Metric) {
	fs := f.stats()
	for _, a := range []struct {
		action string
		c      fwCounts
	}{{"ban", fs.ban}, {"unban", fs.unban}} {
		for _, r := range []struct {
			result string
			n      uint64
		}{{"ok", a.c.ok}, {"failed", a.c.failed}, {"timeout", a.c.timeout}, {"dropped", a.c.dropped}} {
			ch <- prometheus.MustNewConstMetric(descCommands, prometheus.CounterValue, float64(r.n), a.action, r.result)
		}
	}
	ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(fs.queued))
}
