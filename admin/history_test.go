package admin

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// fakeCounters feeds a history by hand: the test sets the counters, then
// samples at a chosen time.
type fakeCounters struct{ s snapshot }

func (f *fakeCounters) read() sample { return sampleOf(f.s, time.Time{}) }

func newFakeHistory(interval time.Duration) (*History, *fakeCounters) {
	f := &fakeCounters{s: snapshot{Rejects: map[string]uint64{}}}
	return newHistory(interval, f.read), f
}

// TestHistorySeries: counters become increases per step, gauges values;
// refusals by reason appear once seen; a guess refused by the username
// budgets is not a guess that reached the daemon.
func TestHistorySeries(t *testing.T) {
	h, f := newFakeHistory(10 * time.Second)
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	steps := []struct {
		failed, ok, userSpent, banned uint64
		sessions                      int64
	}{
		{0, 0, 0, 0, 0},
		{5, 1, 0, 0, 2},
		{25, 2, 3, 1, 7}, // 20 failures, 3 of them refused by the username budgets
		{25, 3, 3, 1, 1},
	}
	for i, st := range steps {
		f.s.LoginsFailed, f.s.LoginsOK, f.s.BansTotal, f.s.SessionsActive = st.failed, st.ok, st.banned, st.sessions
		f.s.Rejects["too many usernames from key"] = st.userSpent
		h.Sample(t0.Add(time.Duration(i) * 10 * time.Second))
	}
	v := h.View()
	want := map[string][]float64{
		"failed":                              {5, 17, 0},
		"logins_ok":                           {1, 1, 1},
		"bans":                                {0, 1, 0},
		"sessions":                            {2, 7, 1},
		"refused":                             {0, 3, 0},
		"refused:too many usernames from key": {0, 3, 0},
	}
	for name, pts := range want {
		s, ok := v.Recent.Get(name)
		if !ok {
			t.Errorf("no series %q", name)
			continue
		}
		if !equalPoints(s.Points, pts) {
			t.Errorf("%s: points %v, want %v", name, s.Points, pts)
		}
		peak := 0.0
		for _, p := range pts {
			peak = max(peak, p)
		}
		if s.Peak != peak || s.Current != pts[len(pts)-1] {
			t.Errorf("%s: current %v peak %v, want %v %v", name, s.Current, s.Peak, pts[len(pts)-1], peak)
		}
	}
	if _, ok := v.Recent.Get("refused:banned"); ok {
		t.Error("a reason never seen has a series")
	}
	if v.Recent.StepSeconds != 10 || v.Day.StepSeconds != 60 || v.Recent.SpanSeconds != 3600 || v.Day.SpanSeconds != 86400 {
		t.Errorf("steps %v/%v spans %v/%v", v.Recent.StepSeconds, v.Day.StepSeconds, v.Recent.SpanSeconds, v.Day.SpanSeconds)
	}
	if !v.Recent.End.Equal(t0.Add(30 * time.Second)) {
		t.Errorf("end %v", v.Recent.End)
	}
}

// TestHistoryBounded: however long it runs, the history keeps a fixed
// number of samples; the day window keeps one per six, with the gauges'
// peak in between.
func TestHistoryBounded(t *testing.T) {
	h, f := newFakeHistory(time.Second)
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	n := historyCoarse*historyCoarseEvery + 100
	for i := range n {
		f.s.LoginsOK = uint64(i)
		f.s.SessionsActive = 0
		if i%historyCoarseEvery == 3 {
			f.s.SessionsActive = 9 // a spike between two coarse samples
		}
		h.Sample(t0.Add(time.Duration(i) * time.Second))
	}
	v := h.View()
	ok, _ := v.Recent.Get("logins_ok")
	if len(ok.Points) != historyFine-1 || ok.Peak != 1 {
		t.Errorf("recent: %d points, peak %v; want %d, 1", len(ok.Points), ok.Peak, historyFine-1)
	}
	day, _ := v.Day.Get("logins_ok")
	if len(day.Points) != historyCoarse-1 || day.Peak != historyCoarseEvery {
		t.Errorf("day: %d points, peak %v; want %d, %d", len(day.Points), day.Peak, historyCoarse-1, historyCoarseEvery)
	}
	sess, _ := v.Day.Get("sessions")
	if sess.Peak != 9 || sess.Current != 9 {
		t.Errorf("day sessions: peak %v current %v; want the spike, 9", sess.Peak, sess.Current)
	}
	if c := drawChart(sess); strings.Count(c.Line, ",") > chartMaxPoints || !strings.Contains(c.Line, ",2.0") {
		t.Errorf("day chart of %d points drawn with %d, the spikes kept: %v", len(sess.Points), strings.Count(c.Line, ","), strings.Contains(c.Line, ",2.0"))
	}
	if got := len(h.fine.buf) + len(h.coarse.buf); got != historyFine+historyCoarse {
		t.Errorf("%d samples allocated", got)
	}
}

// TestStatusCharts: the status page draws each series as inline SVG (no
// script, no external reference) with its current value and peak.
func TestStatusCharts(t *testing.T) {
	h, f := newFakeHistory(10 * time.Second)
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	for i, failed := range []uint64{0, 4, 12, 13} {
		f.s.LoginsFailed = failed
		f.s.LoginsOK = uint64(i)
		f.s.BytesDown = uint64(i) << 20
		h.Sample(t0.Add(time.Duration(i) * 10 * time.Second))
	}
	s := Status{Mode: "enforce", Health: Health{Status: "ok"}, History: h.View(), Now: t0, Started: t0}
	s.Charts = chartRows(s.History)
	var buf bytes.Buffer
	if err := statusTmpl.Execute(&buf, s); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	for _, want := range []string{
		`<tr id="chart-failed" data-current="1" data-peak="8" class="hot">`,
		`<tr id="chart-logins_ok" data-current="1" data-peak="1">`,
		`<polyline class="line" points="0.0,21.0 150.0,2.0 300.0,35.2"/>`, // failed: 4, 8, 1 of peak 8
		`<td class="n">1.0 MiB</td>`,                                      // bytes: peak
		"Over time: last 1h per 10s · last 24h per 1m",
	} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "href=", "src=", "xlink"} {
		if strings.Contains(html, bad) {
			t.Errorf("page has %q", bad)
		}
	}
	if t.Failed() {
		i := strings.Index(html, `id="charts"`)
		t.Log(html[i:min(len(html), i+3000)])
	}
}

func equalPoints(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
