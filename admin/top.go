package admin

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// TopUsage is the help of `ftpguard top`.
const TopUsage = `usage: ftpguard top [-n COUNT] [-d DELAY] [-config PATH | -admin ADDR] [-token-file PATH]
  a live view of a running ftpguard, refreshed like top(1): rates, bans in force with
  time left, the busiest addresses and usernames, store and backend health. Plain text,
  printed once, when stdout is not a terminal or with -n 1.
`

// topRows bounds the rows of each table of `ftpguard top`.
const topRows = 10

// RunTop runs `ftpguard top` with its arguments and returns its exit code
// (0 done, 1 no endpoint, 2 a bad command line). It refreshes every -d
// (2s) on a terminal until interrupted or -n frames are shown; elsewhere
// it prints one frame, or -n.
func RunTop(args []string, stdout, stderr io.Writer, defaultConfig string) int {
	fset := flag.NewFlagSet("ftpguard top", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() {
		fmt.Fprint(stderr, TopUsage)
		fset.PrintDefaults()
	}
	configPath := fset.String("config", defaultConfig, "config file whose [admin] listen and token_file to use")
	adminAddr := fset.String("admin", "", "admin endpoint: host:port or unix:/path (default: [admin] listen of -config)")
	tokenFile := fset.String("token-file", "", "file holding the admin token (default: [admin] token_file of -config)")
	timeout := fset.Duration("timeout", 10*time.Second, "give up on the endpoint after this long")
	frames := fset.Int("n", 0, "frames to show, then exit (default: until interrupted on a terminal, else 1)")
	delay := fset.Duration("d", 2*time.Second, "time between frames")
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fset.NArg() > 0 || *frames < 0 || *delay < 100*time.Millisecond {
		fmt.Fprintf(stderr, "ftpguard top: unexpected arguments %q, or -n below 0, or -d under 100ms\n", fset.Args())
		return exitUsage
	}
	configSet := false
	fset.Visit(func(f *flag.Flag) { configSet = configSet || f.Name == "config" })
	tty := isTerminal(stdout)
	if *frames == 0 && !tty {
		*frames = 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := func() error {
		t, err := resolveTarget(*configPath, configSet, *adminAddr, *tokenFile)
		if err != nil {
			return err
		}
		c, err := newAdminClient(t.admin, t.token, *timeout)
		if err != nil {
			return err
		}
		for i := 0; *frames == 0 || i < *frames; i++ {
			if i > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(*delay):
				}
			}
			var s Status
			if _, err := c.do("GET", "/status", nil, &s); err != nil {
				return err
			}
			var b strings.Builder
			renderTop(&b, s, topRows)
			switch {
			case tty:
				io.WriteString(stdout, "\x1b[H\x1b[2J"+b.String()) // home, clear
			case i > 0:
				io.WriteString(stdout, "\n"+b.String())
			default:
				io.WriteString(stdout, b.String())
			}
		}
		return nil
	}()
	var ce *cliError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "ftpguard: %s\n", ce.msg)
		return ce.code
	default:
		fmt.Fprintf(stderr, "ftpguard: %v\n", err)
		return exitFail
	}
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// topRates are the rates per minute over the last minute of the history
// (or what there is of it), by series name.
func topRates(w SeriesWindow) (rates map[string]float64, over time.Duration, ok bool) {
	step := time.Duration(w.StepSeconds * float64(time.Second))
	if step <= 0 {
		return nil, 0, false
	}
	n := max(int(time.Minute/step), 1)
	rates = make(map[string]float64)
	for _, s := range w.Series {
		pts := s.Points[max(0, len(s.Points)-n):]
		if len(pts) == 0 {
			return nil, 0, false
		}
		var sum float64
		for _, p := range pts {
			sum += p
		}
		if s.Kind == "counter" {
			rates[s.Name] = sum / (float64(len(pts)) * step.Minutes())
		} else {
			rates[s.Name] = pts[len(pts)-1]
		}
		over = step * time.Duration(len(pts))
	}
	return rates, over, true
}

// renderTop writes one frame of `ftpguard top` for s, each table at most
// rows long.
func renderTop(w io.Writer, s Status, rows int) {
	c := s.Counters
	fmt.Fprintf(w, "ftpguard %s  mode %s  up %s  %s  health %s\n", cleanCell(s.Version), s.Mode, s.Uptime,
		s.Now.Local().Format("2006-01-02 15:04:05"), strings.ToUpper(s.Health.Status))
	b := s.Health.Backend
	if b.OK {
		fmt.Fprintf(w, "backend %s reachable (%.1f ms)", b.Address, b.DialMS)
	} else {
		fmt.Fprintf(w, "backend %s UNREACHABLE: %s", b.Address, cleanCell(b.Error))
	}
	st := s.Health.Store
	fmt.Fprintf(w, "   store %s %s, %d errors", st.Kind, map[bool]string{true: "ok", false: "UNREACHABLE (deciding locally)"}[st.OK], st.Errors)
	if st.LastError != "" {
		fmt.Fprintf(w, " (last: %s)", cleanCell(st.LastError))
	}
	fmt.Fprintln(w)

	if r, over, ok := topRates(s.History.Recent); ok {
		fmt.Fprintf(w, "rates /min (last %s): failed guesses %s  logins ok %s  refused %s  bans %s  relayed %s/min\n",
			shortDuration(over), rate(r["failed"]), rate(r["logins_ok"]), rate(r["refused"]), rate(r["bans"]),
			humanBytes(uint64(r["bytes"])))
		var why []string
		for _, ser := range s.History.Recent.Series {
			if reason, ok := strings.CutPrefix(ser.Name, "refused:"); ok && r[ser.Name] > 0 {
				why = append(why, fmt.Sprintf("%s %s", reason, rate(r[ser.Name])))
			}
		}
		if len(why) > 0 {
			fmt.Fprintf(w, "refused /min by reason: %s\n", strings.Join(why, ", "))
		}
	} else {
		fmt.Fprintf(w, "rates /min: none yet (the history takes a sample every %gs)\n", s.History.IntervalSeconds)
	}
	fmt.Fprintf(w, "totals: sessions %d active, %d since start · logins %d ok, %d failed · bans %d in force, %d made · tracked keys %d\n",
		c.SessionsActive, c.SessionsTotal, c.LoginsOK, c.LoginsFailed, c.BansActive, c.BansTotal, c.TrackedKeys)

	fmt.Fprintf(w, "\nBANS IN FORCE (%d)\n", c.BansActive)
	if len(s.Bans) == 0 {
		fmt.Fprintln(w, "none")
	} else {
		// The worst offenders first, then the longest to run.
		bans := slices.Clone(s.Bans)
		slices.SortStableFunc(bans, func(a, b banView) int {
			if a.Count != b.Count {
				return b.Count - a.Count
			}
			return b.Until.Compare(a.Until)
		})
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tOFFENCES\tLEFT\tREASON")
		for _, b := range bans[:min(len(bans), rows)] {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", b.Key, b.Count, humanDuration(time.Duration(b.SecondsLeft)*time.Second), cleanCell(b.Reason))
		}
		tw.Flush()
		if more := c.BansActive - min(len(bans), rows); more > 0 {
			fmt.Fprintf(w, "… and %d more (ftpguard bans list)\n", more)
		}
	}

	keys, users := busiest(s.Events)
	fmt.Fprintf(w, "\nBUSIEST (in the last %d events)\n", len(s.Events))
	if len(keys) == 0 && len(users) == 0 {
		fmt.Fprintln(w, "none")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tFAILED\tREFUSED\t\tUSERNAME\tFAILED")
	for i := range min(max(len(keys), len(users)), rows) {
		var k, u [3]string
		if i < len(keys) {
			k = [3]string{keys[i].name, fmt.Sprint(keys[i].failed), fmt.Sprint(keys[i].refused)}
		}
		if i < len(users) {
			u = [3]string{cleanCell(users[i].name), fmt.Sprint(users[i].failed)}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t\t%s\t%s\n", k[0], k[1], k[2], u[0], u[1])
	}
	tw.Flush()
}

// rate formats a rate per minute.
func rate(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprint(int64(v))
	}
	return fmt.Sprintf("%.1f", v)
}

// tally is what the recent events say of an address or a username.
type tally struct {
	name            string
	failed, refused int
}

// busiest counts the failed logins and refusals of the recent events by
// address (the peer, else the key the event names) and the
// failed logins by username, the busiest first.
func busiest(events []Event) (keys, users []tally) {
	km, um := map[string]*tally{}, map[string]*tally{}
	add := func(m map[string]*tally, name string) *tally {
		t := m[name]
		if t == nil {
			t = &tally{name: name}
			m[name] = t
		}
		return t
	}
	for _, e := range events {
		addr := e.Peer
		if addr == "" {
			addr = e.Key
		}
		switch e.Msg {
		case "login failed":
			if addr != "" {
				add(km, addr).failed += e.Count
			}
			if e.User != "" {
				add(um, e.User).failed += e.Count
			}
		case "reject":
			if addr != "" {
				add(km, addr).refused += e.Count
			}
		}
	}
	order := func(m map[string]*tally) []tally {
		out := make([]tally, 0, len(m))
		for _, t := range m {
			out = append(out, *t)
		}
		slices.SortFunc(out, func(a, b tally) int {
			if d := (b.failed + b.refused) - (a.failed + a.refused); d != 0 {
				return d
			}
			return strings.Compare(a.name, b.name)
		})
		return out
	}
	return order(km), order(um)
}
