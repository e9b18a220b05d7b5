//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStatusPageInChromium renders the admin status page in headless
// Chromium during a scripted attack: a screenshot is taken and must be a
// real page, and the page's HTML shows the banned address with its offence
// count. Chromium is required (.ci/run installs it): missing, the test
// fails. Set FTPGUARD_SCREENSHOT=PATH to keep the screenshot.
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is needed to check the status page (run .ci/run, or apt-get install -y chromium): %v", err)
	}
	const budget = 2
	d := startVsftpd(t)
	// ban 1 lasts 2s, ban 2 a minute: the attacker's second offence shows.
	// One history sample a second: the charts show the attack in seconds.
	g := startGuard(t, d.Addr, guardOpts{Failures: budget, BanTime: "2s", BanFactor: 30, Admin: "127.0.0.1:0",
		AdminExtra: `history_interval = "1s"`})

	const attacker = "127.0.0.71"
	offend(t, g, attacker, budget)
	waitFor(t, "ban 1", func() bool { return g.Count(t, "ban", "key", attacker+"/32") == 1 })
	time.Sleep(2100 * time.Millisecond) // ban 1 is over
	offend(t, g, attacker, budget)
	waitFor(t, "ban 2", func() bool { return g.Count(t, "ban", "key", attacker+"/32", "count", "2") == 1 })

	// The attack goes on while the page is rendered: the banned address
	// keeps knocking, another one guesses, a user logs in.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			if c, err := dialer(attacker).Dial("tcp", g.Addr); err == nil {
				io.Copy(io.Discard, c) // 421, close
				c.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for i := 0; ctx.Err() == nil && i < 20; i++ {
			c, err := ftpClient(t, "127.0.0.72", g.Addr)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			c.Login(testUser, "wrong-guess")
			c.Quit()
		}
	})
	// Meanwhile legitimate users keep logging in.
	wg.Go(func() {
		for ctx.Err() == nil {
			if c, err := ftpClient(t, "127.0.0.74", g.Addr); err == nil {
				c.Login(testUser, testPass)
				c.Quit()
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	c, err := ftpClient(t, "127.0.0.73", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testUser, testPass); err != nil {
		t.Fatal(err)
	}
	defer c.Quit()

	// The history shows it before the page is drawn: the failures rose
	// and the logins went on after they did.
	attackSeen(t, g)

	shot := filepath.Join(t.TempDir(), "status.png")
	url := "http://" + g.AdminAddr + "/"
	cctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--screenshot="+shot, "--window-size=1280,900", url)
	out, err := cmd.CombinedOutput()
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, tail(out, 20))
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v\n%s", err, tail(out, 20))
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	fi, _ := os.Stat(shot)
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 || fi.Size() < 20_000 || colours(img) < 50 {
		t.Fatalf("screenshot %v, %d bytes, %d colours: not a rendered page", img.Bounds(), fi.Size(), colours(img))
	}
	t.Logf("status page screenshot: %s (%d bytes, %d colours)", shot, fi.Size(), colours(img))
	if keep := os.Getenv("FTPGUARD_SCREENSHOT"); keep != "" {
		b, _ := os.ReadFile(shot)
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot kept at %s", keep)
	}

	// The page itself: the banned address, its offence count, the events.
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`<td class="mono">` + attacker + `/32</td><td>budget</td><td class="n">2</td>`, // offences: 2
		`<meta http-equiv="refresh" content="5">`,
		`<td class="mono">` + attacker + `</td>`, // a recent event from it
		"login failed",
		`<td class="n big" id="sessions-active">1</td>`,
	} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("status page lacks %q", want)
		}
	}
	// The charts: inline SVG, the failures' peak above zero.
	if m := regexp.MustCompile(`<tr id="chart-failed" data-current="[0-9.]+" data-peak="([0-9.]+)"`).FindSubmatch(html); m == nil || string(m[1]) == "0" {
		t.Errorf("the status page has no chart of the failures, or it stays at zero: %q", m)
	}
	if n := bytes.Count(html, []byte("<svg ")); n < 7 {
		t.Errorf("the status page draws %d charts, want one per series at least", n)
	}
	if bytes.Contains(html, []byte("wrong-guess")) || bytes.Contains(html, []byte(testPass)) {
		t.Error("a password appears on the status page")
	}
	if t.Failed() {
		t.Logf("page:\n%s", html)
	}
	if strings.Contains(string(html), "http-equiv") && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Error("the status page has no restrictive Content-Security-Policy")
	}
}

// colours counts the distinct colours of img, up to 1000.
func colours(img image.Image) int {
	seen := make(map[[4]uint32]bool)
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y && len(seen) < 1000; y += 3 {
		for x := b.Min.X; x < b.Max.X && len(seen) < 1000; x += 3 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

// attackSeen waits until GET /status's history shows the attack: a step
// with failed guesses, and logins ok in a step at or after the first one.
func attackSeen(t *testing.T, g *guard) {
	t.Helper()
	var last string
	waitFor(t, "the attack in the history", func() bool {
		resp, err := http.Get("http://" + g.AdminAddr + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			History struct {
				IntervalSeconds float64 `json:"interval_seconds"`
				Recent          struct {
					Series []struct {
						Name   string    `json:"name"`
						Points []float64 `json:"points"`
						Peak   float64   `json:"peak"`
					} `json:"series"`
				} `json:"recent"`
			} `json:"history"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.History.IntervalSeconds != 1 {
			last = fmt.Sprintf("interval %v, %v", st.History.IntervalSeconds, err)
			return false
		}
		pts := map[string][]float64{}
		for _, s := range st.History.Recent.Series {
			pts[s.Name] = s.Points
		}
		last = fmt.Sprintf("failed %v, logins_ok %v", pts["failed"], pts["logins_ok"])
		first := slices.IndexFunc(pts["failed"], func(v float64) bool { return v > 0 })
		return first >= 0 && slices.ContainsFunc(pts["logins_ok"][first:], func(v float64) bool { return v > 0 })
	})
	t.Logf("history: %s", last)
}
