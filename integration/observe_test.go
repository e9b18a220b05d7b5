//go:build integration

package integration

import (
	"bufio"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// promtool runs Prometheus's promtool with args in dir and returns its
// output. promtool is required (.ci/run installs Debian's prometheus
// package): missing, the test fails.
func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is needed to check the alert rules (run .ci/run, or apt-get install -y prometheus): %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPrometheusRules: the alert rules in deploy/prometheus are valid and
// their unit tests pass: for every alert, series that fire it and series
// that must not (ftpguard-rules.test.yml).
func TestPrometheusRules(t *testing.T) {
	dir := filepath.Join("..", "deploy", "prometheus")
	out := promtool(t, dir, "check", "rules", "ftpguard-rules.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules:\n%s", out)
	}
	out = promtool(t, dir, "test", "rules", "ftpguard-rules.test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules:\n%s", out)
	}
	// Every alert of the rules has a test.
	rules, _ := os.ReadFile(filepath.Join(dir, "ftpguard-rules.yml"))
	tests, _ := os.ReadFile(filepath.Join(dir, "ftpguard-rules.test.yml"))
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\w+)`).FindAllSubmatch(rules, -1) {
		if !strings.Contains(string(tests), "alertname: "+string(m[1])) {
			t.Errorf("alert %s has no test in ftpguard-rules.test.yml", m[1])
		}
	}
}

// metricName matches the names of ftpguard's metrics in an expression.
var metricName = regexp.MustCompile(`\bftpguard_[a-z0-9_]+\b`)

// TestDashboardAndRulesMetricsExist: every metric the Grafana dashboard
// and the alert rules use is served by ftpguard's /metrics after a scripted
// attack against the real binary and vsftpd (a renamed metric would leave
// a panel empty and an alert silent).
func TestDashboardAndRulesMetricsExist(t *testing.T) {
	d := startVsftpd(t)
	const budget = 2
	g := startGuard(t, d.Addr, guardOpts{Failures: budget, Admin: "127.0.0.1:0"})
	const attacker = "127.0.0.81"
	offend(t, g, attacker, budget)
	waitFor(t, "the ban", func() bool { return g.Count(t, "ban", "key", attacker+"/32") == 1 })
	if c, err := dialer(attacker).Dial("tcp", g.Addr); err == nil { // refused: banned
		c.Close()
	}
	c, err := ftpClient(t, "127.0.0.82", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	c.Quit()

	code, body := g.admin(t, "GET", "/metrics", "", "")
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	served := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		served[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}

	// The dashboard: valid JSON, every query's metrics served.
	b, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "ftpguard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana/ftpguard.json: %v", err)
	}
	used := map[string]string{} // metric → where
	rows := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			rows++
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := metricName.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("dashboard panel %q: query %q names no ftpguard metric", p.Title, tg.Expr)
			}
			for _, n := range names {
				used[n] = "dashboard panel " + p.Title
			}
		}
	}
	if rows < 4 {
		t.Errorf("dashboard has %d rows, want one per concern", rows)
	}
	// The rules.
	rules, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "ftpguard-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range metricName.FindAllString(string(rules), -1) {
		used[n] = "alert rules"
	}
	// The concerns each view must cover.
	for _, want := range []string{"ftpguard_logins_total", "ftpguard_rejects_total", "ftpguard_bans_total",
		"ftpguard_bans_active", "ftpguard_sessions_active", "ftpguard_store_down", "ftpguard_store_errors_total",
		"ftpguard_backend_dial_seconds_bucket", "ftpguard_backend_dial_errors_total", "ftpguard_user_budgets_throttled_total"} {
		if _, ok := used[want]; !ok {
			t.Errorf("neither the dashboard nor the rules use %s", want)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(used)) {
		if !served[n] {
			t.Errorf("%s uses %s, which /metrics does not serve", used[n], n)
		}
	}
	t.Logf("%d ftpguard metrics used by the dashboard and the rules, all served", len(used))
}

// TestTopCommand: `ftpguard top -n 1`, over the unix socket of the admin
// endpoint named by the config (as under the systemd unit), prints one
// plain-text frame during a scripted attack: the rates line with the
// failed guesses, the banned key with its time left, the busiest address.
func TestTopCommand(t *testing.T) {
	d := startVsftpd(t)
	const budget = 2
	sock := filepath.Join(t.TempDir(), "admin.sock")
	g := startGuard(t, d.Addr, guardOpts{Failures: budget, Admin: "unix:" + sock, AdminExtra: `history_interval = "1s"`})
	const attacker = "127.0.0.91"
	offend(t, g, attacker, budget)
	waitFor(t, "the ban", func() bool { return g.Count(t, "ban", "key", attacker+"/32") == 1 })
	c, err := ftpClient(t, "127.0.0.92", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	defer c.Quit()

	var out []byte
	rates := regexp.MustCompile(`(?m)^rates /min \(last \d+s\): failed guesses [0-9.]+  logins ok [0-9.]+  refused [0-9.]+  bans [0-9.]+  relayed .*/min$`)
	banned := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(attacker) + `/32 +1 +[0-9hms]+ +budget$`) // offences, time left
	waitFor(t, "a frame with rates", func() bool {
		cmd := exec.Command(guardBin, "top", "-n", "1", "-config", g.Config)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if err != nil {
			t.Fatalf("ftpguard top -n 1: %v\n%s%s", err, out, stderr.String())
		}
		return rates.Match(out)
	})
	t.Logf("ftpguard top -n 1:\n%s", out)
	for _, want := range []*regexp.Regexp{
		banned,
		regexp.MustCompile(`(?m)^health OK|  health OK$`),
		regexp.MustCompile(`(?m)^BANS IN FORCE \(1\)$`),
		regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(attacker) + ` +2 +`), // busiest: its 2 failed guesses
		regexp.MustCompile(`(?m)^backend \S+ reachable .*store file ok`),
	} {
		if !want.Match(out) {
			t.Errorf("the frame lacks %v", want)
		}
	}
	if strings.Contains(string(out), "\x1b[") {
		t.Error("a terminal escape in the output to a pipe")
	}
}
