package admin

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// History keeps, in memory, how the counters changed: a sample of the
// metrics every interval for the last historyFine intervals (10s: the last
// hour) and one every historyCoarseEvery intervals for the last
// historyCoarse of those (10s: one a minute, the last day). Its size is
// fixed whatever the traffic: (historyFine + historyCoarse) samples of a
// few hundred bytes. The status page draws it, GET /status carries it and
// `ftpguard top` reads its rates from it.
//
// Sample is fed by Run's goroutine in a daemon and called directly, with a
// chosen time, by tests. The zero value is not usable: make it with
// NewHistory. Safe for concurrent use.
type History struct {
	interval time.Duration
	read     func() sample

	mu         sync.Mutex
	fine       ring
	coarse     ring
	sinceCoars int    // fine samples since the last coarse one
	peak       sample // the gauges' highest values since the last coarse sample
}

const (
	historyFine        = 360  // fine samples kept: an hour at 10s
	historyCoarseEvery = 6    // fine samples per coarse one: a minute at 10s
	historyCoarse      = 1440 // coarse samples kept: a day at a minute
)

// sample is the state of the counters at one time: cumulative counters
// and the gauges.
type sample struct {
	t        time.Time
	failed   uint64   // failed guesses that reached the daemon
	ok       uint64   // logins ok
	rejects  []uint64 // by rejectIndex
	bans     uint64   // bans made
	banned   int64    // gauge: bans in force
	sessions int64    // gauge: active sessions
	bytes    uint64   // relayed, both directions
}

// sampleOf reads a sample from the metrics' snapshot. A guess refused for
// trying too many usernames never reached the daemon: it is counted as a
// failed login by the proxy and as a refusal, and left out here (a guess
// for a throttled username is not counted as a failed login at all).
func sampleOf(s snapshot, t time.Time) sample {
	x := sample{t: t, ok: s.LoginsOK, bans: s.BansTotal, banned: int64(s.BansActive),
		sessions: s.SessionsActive, bytes: s.BytesUp + s.BytesDown, rejects: make([]uint64, len(rejectReasons))}
	for i, r := range rejectReasons {
		x.rejects[i] = s.Rejects[r]
	}
	local := s.Rejects["too many usernames from key"] // "username throttled" is not counted as a failed login
	if s.LoginsFailed > local {
		x.failed = s.LoginsFailed - local
	}
	return x
}

// ring is a fixed-size ring of samples, oldest first.
type ring struct {
	buf   []sample
	start int // index of the oldest
	n     int
}

func newRing(size int) ring { return ring{buf: make([]sample, size)} }

func (r *ring) add(s sample) {
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = s
		r.n++
		return
	}
	r.buf[r.start] = s
	r.start = (r.start + 1) % len(r.buf)
}

func (r *ring) list() []sample {
	out := make([]sample, r.n)
	for i := range r.n {
		out[i] = r.buf[(r.start+i)%len(r.buf)]
	}
	return out
}

// NewHistory returns an empty history sampling m every interval (at least
// a second; 0: 10s).
func NewHistory(m *Metrics, interval time.Duration) *History {
	return newHistory(interval, func() sample { return sampleOf(m.snapshot(), time.Time{}) })
}

func newHistory(interval time.Duration, read func() sample) *History {
	if interval <= 0 {
		interval = DefaultHistoryInterval
	}
	interval = max(interval, time.Second)
	return &History{interval: interval, read: read, fine: newRing(historyFine), coarse: newRing(historyCoarse)}
}

// Interval returns the time between two fine samples.
func (h *History) Interval() time.Duration { return h.interval }

// Sample records the counters as they are at now.
func (h *History) Sample(now time.Time) {
	s := h.read()
	s.t = now
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fine.add(s)
	if h.sinceCoars == 0 {
		h.peak = s
	}
	h.peak.sessions = max(h.peak.sessions, s.sessions)
	h.peak.banned = max(h.peak.banned, s.banned)
	h.sinceCoars++
	// The first sample starts both rings; then one coarse sample per
	// historyCoarseEvery fine ones, with the gauges' peaks in between.
	if h.coarse.n == 0 || h.sinceCoars == historyCoarseEvery {
		c := s
		c.sessions, c.banned = h.peak.sessions, h.peak.banned
		h.coarse.add(c)
		h.sinceCoars = 0
	}
}

// Run samples every interval until ctx ends.
func (h *History) Run(ctx context.Context) {
	h.Sample(time.Now())
	tk := time.NewTicker(h.interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			h.Sample(now)
		}
	}
}

// HistoryView is the history as GET /status shows it: the last hour at
// the fine step and the last day at the coarse one.
type HistoryView struct {
	IntervalSeconds float64      `json:"interval_seconds"`
	Recent          SeriesWindow `json:"recent"` // the fine samples
	Day             SeriesWindow `json:"day"`    // the coarse samples
}

// SeriesWindow is a set of series over the same times: the i-th point of
// each series covers the step that ends at Start + (i+1)·StepSeconds.
type SeriesWindow struct {
	StepSeconds float64   `json:"step_seconds"`
	SpanSeconds float64   `json:"span_seconds"` // what a full window covers
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	Series      []Series  `json:"series"`
}

// Series is one quantity over time. A counter's points are its increase
// per step; a gauge's are its value at the end of each step (in the day
// window, its highest over the step).
type Series struct {
	Name    string    `json:"name"`
	Title   string    `json:"title"`
	Kind    string    `json:"kind"` // "counter" (increase per step) or "gauge"
	Points  []float64 `json:"points"`
	Current float64   `json:"current"` // the last point
	Peak    float64   `json:"peak"`    // the highest point
}

// View returns the series of both windows. Refusals appear per reason,
// for the reasons with a refusal in the window, after their total.
func (h *History) View() HistoryView {
	h.mu.Lock()
	fine, coarse := h.fine.list(), h.coarse.list()
	h.mu.Unlock()
	return HistoryView{
		IntervalSeconds: h.interval.Seconds(),
		Recent:          window(fine, h.interval, historyFine),
		Day:             window(coarse, h.interval*historyCoarseEvery, historyCoarse),
	}
}

// window turns samples into series.
func window(ss []sample, step time.Duration, size int) SeriesWindow {
	w := SeriesWindow{StepSeconds: step.Seconds(), SpanSeconds: (step * time.Duration(size)).Seconds()}
	if len(ss) > 0 {
		w.Start, w.End = ss[0].t.UTC(), ss[len(ss)-1].t.UTC()
	}
	counter := func(name, title string, v func(sample) uint64) Series {
		s := Series{Name: name, Title: title, Kind: "counter", Points: []float64{}}
		for i := 1; i < len(ss); i++ {
			a, b := v(ss[i-1]), v(ss[i])
			d := 0.0
			if b > a {
				d = float64(b - a)
			}
			s.Points = append(s.Points, d)
		}
		return s.summed()
	}
	gauge := func(name, title string, v func(sample) int64) Series {
		s := Series{Name: name, Title: title, Kind: "gauge", Points: []float64{}}
		for i := 1; i < len(ss); i++ {
			s.Points = append(s.Points, float64(v(ss[i])))
		}
		return s.summed()
	}
	w.Series = []Series{
		counter("failed", "failed guesses reaching the daemon", func(s sample) uint64 { return s.failed }),
		counter("logins_ok", "logins ok", func(s sample) uint64 { return s.ok }),
		counter("refused", "refusals", func(s sample) uint64 {
			var n uint64
			for _, r := range s.rejects {
				n += r
			}
			return n
		}),
		counter("bans", "bans made", func(s sample) uint64 { return s.bans }),
		gauge("bans_active", "bans in force", func(s sample) int64 { return s.banned }),
		gauge("sessions", "active sessions", func(s sample) int64 { return s.sessions }),
		counter("bytes", "bytes relayed", func(s sample) uint64 { return s.bytes }),
	}
	for i, r := range rejectReasons {
		s := counter("refused:"+r, "refused: "+r, func(s sample) uint64 { return s.rejects[i] })
		if s.Peak > 0 {
			w.Series = append(w.Series, s)
		}
	}
	return w
}

// summed fills Current and Peak from the points.
func (s Series) summed() Series {
	for _, p := range s.Points {
		s.Peak = max(s.Peak, p)
	}
	if n := len(s.Points); n > 0 {
		s.Current = s.Points[n-1]
	}
	return s
}

// Get returns the series named name, and whether there is one.
func (w SeriesWindow) Get(name string) (Series, bool) {
	for _, s := range w.Series {
		if s.Name == name {
			return s, true
		}
	}
	return Series{}, false
}

// chart is a series drawn for the status page: an SVG area chart in a
// viewBox of chartW × chartH, the values' coordinates precomputed.
type chart struct {
	Current, Peak string
	Line, Area    string // SVG points lists
	Empty         bool   // no points yet
}

// chartRow is one quantity on the status page: its recent and day charts.
type chartRow struct {
	Name, Title         string
	RawCurrent, RawPeak float64 // of the recent window
	Recent, Day         chart
}

const chartW, chartH = 300, 40

// chartRows draws the series of both windows, side by side by name: the
// fixed series, then the refusal reasons seen in either window.
func chartRows(v HistoryView) []chartRow {
	var out []chartRow
	seen := make(map[string]bool)
	for _, w := range []SeriesWindow{v.Recent, v.Day} {
		for _, s := range w.Series {
			if seen[s.Name] {
				continue
			}
			seen[s.Name] = true
			r, _ := v.Recent.Get(s.Name)
			d, _ := v.Day.Get(s.Name)
			out = append(out, chartRow{Name: s.Name, Title: s.Title, RawCurrent: r.Current, RawPeak: r.Peak,
				Recent: drawChart(r), Day: drawChart(d)})
		}
	}
	return out
}

func drawChart(s Series) chart {
	format := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	if s.Name == "bytes" {
		format = func(v float64) string { return humanBytes(uint64(v)) }
	}
	c := chart{Current: format(s.Current), Peak: format(s.Peak), Empty: len(s.Points) == 0}
	c.Line, c.Area = polyline(maxPool(s.Points, chartMaxPoints), s.Peak)
	return c
}

// chartMaxPoints bounds the points drawn in a chart: about one per pixel
// of its usual width (the day window has 1440).
const chartMaxPoints = 360

// maxPool shortens pts to at most n points, each the highest of the ones
// it stands for, so that a spike stays visible.
func maxPool(pts []float64, n int) []float64 {
	if len(pts) <= n {
		return pts
	}
	k := (len(pts) + n - 1) / n
	out := make([]float64, 0, n)
	for i := 0; i < len(pts); i += k {
		out = append(out, slices.Max(pts[i:min(i+k, len(pts))]))
	}
	return out
}

// polyline returns the points of a line through pts (scaled to peak) and
// of the area under it, in the chart's viewBox; the line ends at the
// right edge, so that a short history fills from the right.
func polyline(pts []float64, peak float64) (line, area string) {
	if len(pts) == 0 {
		return "", ""
	}
	n := max(len(pts), 2)
	dx := float64(chartW) / float64(n-1)
	x0 := float64(chartW) - dx*float64(len(pts)-1)
	if len(pts) == 1 {
		x0 = 0
		pts = []float64{pts[0], pts[0]}
		dx = chartW
	}
	var b strings.Builder
	for i, p := range pts {
		y := float64(chartH)
		if peak > 0 {
			y = chartH - p/peak*(chartH-2)
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", x0+dx*float64(i), y)
	}
	line = b.String()
	area = fmt.Sprintf("%.1f,%d %s %d,%d", x0, chartH, line, chartW, chartH)
	return line, area
}

// startHistory starts the history's sampler, once (a.mu held).
func (a *Server) startHistory() {
	if a.hstop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.h.Run(ctx) }()
	a.hstop = func() { cancel(); <-done }
}

// stopHistory ends the sampler, if started (a.mu held).
func (a *Server) stopHistory() {
	if a.hstop != nil {
		a.hstop()
		a.hstop = func() {}
	}
}
