package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/ftpguard/ftpguard/internal/conf"
)

// Exit codes of the client subcommands (bans, users, status, reload).
const (
	exitOK    = 0 // done; for status: healthy
	exitFail  = 1 // the operation failed: no endpoint, refused, no such ban, unhealthy
	exitUsage = 2 // a bad command line, or input the endpoint rejected
)

// ClientUsage is the help of the client subcommands.
const ClientUsage = `usage:
  ftpguard bans list                    list the bans in force
  ftpguard bans add IP|CIDR [DURATION]  ban (DURATION like 90m, 12h, 7d; default: the escalated ban time);
                                        wider than [admin] max_ban_prefix_ipv4/_ipv6 (/16, /32) needs -force
  ftpguard bans del IP|CIDR             lift a ban
  ftpguard users list                   list the usernames whose logins from new addresses are paused
  ftpguard users reset NAME             lift a username's throttle (any spelling of it)
  ftpguard status                       health, counters and bans at a glance
  ftpguard reload                       re-read the config (as SIGHUP)
  ftpguard top [-n COUNT] [-d DELAY]    live view: rates, bans, busiest addresses and usernames, health
flags (anywhere after the subcommand):
`

// cliError is a failure with its exit code.
type cliError struct {
	code int
	msg  string
}

func (e *cliError) Error() string { return e.msg }

func failf(code int, format string, args ...any) error {
	return &cliError{code, fmt.Sprintf(format, args...)}
}

// adminClient talks to the admin endpoint of a running ftpguard.
type adminClient struct {
	addr  string // as given: host:port or unix:/path
	base  string // URL prefix
	token string
	http  *http.Client
	// header is the latest answer's header (for NextAfterHeader).
	header http.Header
}

// listPage is how many bans the client asks for per page of GET /bans.
const listPage = 1000

// maxListPages bounds the pages listBans reads (ten million bans).
const maxListPages = 10000

// listBans pages through GET /bans?limit=&after= and returns every ban,
// sorted by Until, each key once.
func (c *adminClient) listBans() ([]banJSON, error) {
	var all []banJSON
	seen := make(map[string]bool)
	after := "0"
	for range maxListPages {
		var page []banJSON
		if _, err := c.do("GET", "/bans?limit="+strconv.Itoa(listPage)+"&after="+url.QueryEscape(after), nil, &page); err != nil {
			return nil, err
		}
		for _, b := range page {
			if !seen[b.Key] {
				seen[b.Key] = true
				all = append(all, b)
			}
		}
		if after = c.header.Get(NextAfterHeader); after == "" {
			break
		}
	}
	slices.SortStableFunc(all, func(a, b banJSON) int { return a.Until.Compare(b.Until) })
	return all, nil
}

// newAdminClient makes a client for addr ("host:port", "http://host:port",
// or "unix:/path").
func newAdminClient(addr, token string, timeout time.Duration) (*adminClient, error) {
	c := &adminClient{addr: addr, token: token}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		path := strings.TrimPrefix(addr, "unix:")
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		c.base = "http://localhost"
	case strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://"):
		c.base = strings.TrimSuffix(addr, "/")
	default:
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, failf(exitUsage, "-admin: %q is not host:port, http://host:port or unix:/path", addr)
		}
		c.base = "http://" + addr
	}
	c.http = &http.Client{Transport: tr, Timeout: timeout}
	return c, nil
}

// do sends a request and decodes a JSON answer into out (if not nil). An
// answer with an error status becomes a cliError carrying the endpoint's
// message.
func (c *adminClient) do(method, path string, body any, out any, okCodes ...int) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return 0, failf(exitUsage, "%v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, failf(exitFail, "no ftpguard admin endpoint at %s: %v", c.addr, rootCause(err))
	}
	c.header = resp.Header
	defer drainBody(resp.Body)
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, failf(exitFail, "admin endpoint at %s: reading the answer: %v", c.addr, err)
	}
	if len(okCodes) == 0 {
		okCodes = []int{http.StatusOK}
	}
	if !slices.Contains(okCodes, resp.StatusCode) {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			return resp.StatusCode, failf(exitFail, "admin endpoint at %s refused the token (401): give the config whose [admin] token_file it uses (-config), or -token-file", c.addr)
		case http.StatusBadRequest:
			return resp.StatusCode, failf(exitUsage, "%s", msg)
		case http.StatusNotFound:
			return resp.StatusCode, failf(exitFail, "%s", msg)
		}
		return resp.StatusCode, failf(exitFail, "admin endpoint at %s: %s: %s", c.addr, resp.Status, msg)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, failf(exitFail, "admin endpoint at %s: not an ftpguard answer (%v)", c.addr, err)
		}
	}
	return resp.StatusCode, nil
}

// rootCause strips the URL and operation wrappers of a dial error, so that
// "connection refused" reads as such.
func rootCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se.Err
	}
	return err
}

// cliTarget is where a client subcommand finds the admin endpoint.
type cliTarget struct {
	admin, token string
}

// resolveTarget finds the admin address and token: the -admin and
// -token-file flags, else the [admin] table of the config file (its
// listen and token_file), else 127.0.0.1:9121 when the default config
// file does not exist. The config is only read for those two keys.
func resolveTarget(configPath string, configSet bool, admin, tokenFile string) (cliTarget, error) {
	t := cliTarget{admin: admin}
	var fileToken string
	if admin == "" || tokenFile == "" {
		cfg := struct {
			Admin Config `toml:"admin"`
		}{DefaultConfig()}
		data, err := os.ReadFile(configPath)
		switch {
		case err == nil:
			if _, err := toml.Decode(string(data), &cfg); err != nil {
				return t, failf(exitFail, "%s: %v", configPath, err)
			}
			if p := cfg.Admin.TokenFile; p != "" && !filepath.IsAbs(p) {
				cfg.Admin.TokenFile = filepath.Join(filepath.Dir(configPath), p)
			}
			fileToken = cfg.Admin.TokenFile
		case errors.Is(err, fs.ErrNotExist) && !configSet:
			// No config here: the default admin address.
		default:
			return t, failf(exitFail, "config: %v (or give -admin ADDR)", err)
		}
		if admin == "" {
			if cfg.Admin.Listen == "" {
				return t, failf(exitFail, "%s: [admin] listen is \"\": this ftpguard has no admin endpoint", configPath)
			}
			t.admin = cfg.Admin.Listen
		}
	}
	if tokenFile == "" {
		tokenFile = fileToken
	}
	if tokenFile != "" {
		tok, err := ReadToken(tokenFile)
		if err != nil {
			return t, failf(exitFail, "admin token: %v", err)
		}
		t.token = tok
	}
	return t, nil
}

// RunClient runs a client subcommand of ftpguard (bans, users, status, reload)
// with its arguments and returns its exit code: 0 done (status: healthy),
// 1 failed, 2 a bad command line. defaultConfig is the config file read for
// the endpoint's address and token when -config is not given.
func RunClient(cmd string, args []string, stdout, stderr io.Writer, defaultConfig string) int {
	fset := flag.NewFlagSet("ftpguard "+cmd, flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() {
		fmt.Fprint(stderr, ClientUsage)
		fset.PrintDefaults()
	}
	configPath := fset.String("config", defaultConfig, "config file whose [admin] listen and token_file to use")
	admin := fset.String("admin", "", "admin endpoint: host:port or unix:/path (default: [admin] listen of -config)")
	tokenFile := fset.String("token-file", "", "file holding the admin token (default: [admin] token_file of -config)")
	timeout := fset.Duration("timeout", 10*time.Second, "give up on the endpoint after this long")
	asJSON := fset.Bool("json", false, "print the endpoint's JSON answer (non-printable characters escaped)")
	reason := fset.String("reason", "", "bans add: the reason recorded with the ban (default \"admin\")")
	force := fset.Bool("force", false, "bans add: ban a prefix wider than [admin] max_ban_prefix_ipv4/_ipv6")

	// Flags may come anywhere: parse, take one positional argument, repeat.
	var pos []string
	for {
		if err := fset.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fset.NArg() == 0 {
			break
		}
		pos = append(pos, fset.Arg(0))
		args = fset.Args()[1:]
	}
	configSet := false
	fset.Visit(func(f *flag.Flag) { configSet = configSet || f.Name == "config" })

	err := func() error {
		var sub string
		switch cmd {
		case "bans":
			if len(pos) == 0 {
				return failf(exitUsage, "ftpguard bans: want list, add IP [DURATION] or del IP")
			}
			sub, pos = pos[0], pos[1:]
		case "users":
			if len(pos) == 0 {
				return failf(exitUsage, "ftpguard users: want list or reset NAME")
			}
			sub, pos = pos[0], pos[1:]
		}
		want := map[string][2]int{"bans list": {0, 0}, "bans add": {1, 2}, "bans del": {1, 1}, "status": {0, 0}, "reload": {0, 0},
			"users list": {0, 0}, "users reset": {1, 1}}
		name := strings.TrimSpace(cmd + " " + sub)
		n, ok := want[name]
		switch {
		case !ok && cmd == "users":
			return failf(exitUsage, "ftpguard users: unknown subcommand %q (want list or reset)", sub)
		case !ok:
			return failf(exitUsage, "ftpguard bans: unknown subcommand %q (want list, add or del)", sub)
		}
		if len(pos) < n[0] || len(pos) > n[1] {
			return failf(exitUsage, "ftpguard %s: wrong arguments %q\n%s", name, pos, ClientUsage)
		}
		t, err := resolveTarget(*configPath, configSet, *admin, *tokenFile)
		if err != nil {
			return err
		}
		c, err := newAdminClient(t.admin, t.token, *timeout)
		if err != nil {
			return err
		}
		switch name {
		case "bans list":
			bans, err := c.listBans()
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(stdout, bans)
			}
			writeBansTable(stdout, bans)
		case "bans add":
			req := banRequest{IP: pos[0], Reason: *reason, Force: *force}
			if p, err := conf.ParsePrefix(pos[0]); err == nil && strings.Contains(pos[0], "/") && !*asJSON {
				// What the prefix covers, before it is applied.
				fmt.Fprintf(stdout, "%v covers %s\n", p, Covers(p))
			}
			if len(pos) == 2 {
				req.Duration = pos[1]
				if _, err := parseBanDuration(req.Duration); err != nil {
					return failf(exitUsage, "%v", err)
				}
			}
			var b banJSON
			if _, err := c.do("POST", "/bans", req, &b, http.StatusCreated); err != nil {
				return err
			}
			if *asJSON {
				return printJSON(stdout, b)
			}
			if !strings.Contains(pos[0], "/") && b.Covers != "" && b.Covers != "1 address" {
				fmt.Fprintf(stdout, "%s covers %s\n", b.Key, b.Covers) // a bare address: its key
			}
			fmt.Fprintf(stdout, "banned %s for %s (until %s, offence %d)\n", b.Key,
				humanDuration(time.Duration(b.SecondsLeft)*time.Second), b.Until.Local().Format("2006-01-02 15:04:05 MST"), b.Count)
			if b.Warning != "" {
				fmt.Fprintln(stderr, "warning:", b.Warning)
			}
		case "bans del":
			var out map[string]string
			// 202: lifted here, the store's copy queued (the warning says so).
			if _, err := c.do("DELETE", "/bans/"+pos[0], nil, &out, http.StatusOK, http.StatusAccepted); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "unbanned %s\n", out["unbanned"])
			if out["warning"] != "" {
				fmt.Fprintln(stderr, "warning:", out["warning"])
			}
		case "users list":
			var users []userJSON
			if _, err := c.do("GET", "/users", nil, &users); err != nil {
				return err
			}
			if *asJSON {
				return printJSON(stdout, users)
			}
			writeUsersTable(stdout, users)
		case "users reset":
			var out map[string]string
			if _, err := c.do("DELETE", "/users/"+url.PathEscape(pos[0]), nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "reset %q: logins to it from new addresses are no longer paused\n", out["reset"])
		case "reload":
			var out map[string]string
			if _, err := c.do("POST", "/reload", nil, &out); err != nil {
				var ce *cliError
				if errors.As(err, &ce) && ce.code == exitUsage {
					ce.code = exitFail // the file is wrong, not the command line
				}
				return err
			}
			fmt.Fprintf(stdout, "reloaded %s (mode %s)\n", out["config"], out["mode"])
		case "status":
			var s Status
			if _, err := c.do("GET", "/status", nil, &s); err != nil {
				return err
			}
			if *asJSON {
				if err := printJSON(stdout, s); err != nil {
					return err
				}
			} else {
				writeStatus(stdout, s)
			}
			if s.Health.Status != "ok" {
				return &cliError{exitFail, ""}
			}
		}
		return nil
	}()
	var ce *cliError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		if ce.msg != "" {
			fmt.Fprintf(stderr, "ftpguard: %s\n", ce.msg)
		}
		return ce.code
	default:
		fmt.Fprintf(stderr, "ftpguard: %v\n", err)
		return exitFail
	}
}

// printJSON prints v as indented JSON with every rune that is not
// printable escaped (\uXXXX): encoding/json escapes C0 controls but writes
// C1 controls and bidi overrides raw, and a terminal obeys them (see
// cleanCell). Outside strings the encoder writes only printable ASCII,
// spaces and newlines, so an escape always lands inside a string.
func printJSON(w io.Writer, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	out := make([]byte, 0, b.Len())
	for _, r := range b.String() {
		switch {
		case r == '\n' || unicode.IsPrint(r):
			out = utf8.AppendRune(out, r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	_, err := w.Write(out)
	return err
}

// writeBansTable prints bans as an aligned table.
func writeBansTable(w io.Writer, bans []banJSON) {
	if len(bans) == 0 {
		fmt.Fprintln(w, "no bans in force")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSOURCE\tREASON\tOFFENCES\tLEFT\tUNTIL")
	for _, b := range bans {
		src := b.Source
		if src == "" {
			src = SourceFtpguard // a server from before sources
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", b.Key, cleanCell(src), cleanCell(b.Reason), b.Count,
			humanDuration(time.Duration(b.SecondsLeft)*time.Second), b.Until.Local().Format("2006-01-02 15:04:05 MST"))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d ban(s) in force\n", len(bans))
}

// writeStatus prints a status summary.
func writeStatus(w io.Writer, s Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	okb := func(ok bool, yes, no string) string {
		if ok {
			return yes
		}
		return no
	}
	c := s.Counters
	fmt.Fprintf(tw, "ftpguard\t%s, mode %s, up %s\n", s.Version, s.Mode, s.Uptime)
	fmt.Fprintf(tw, "health\t%s\n", strings.ToUpper(s.Health.Status))
	b := s.Health.Backend
	fmt.Fprintf(tw, "backend\t%s %s\n", b.Address, okb(b.OK, fmt.Sprintf("reachable (%.1f ms)", b.DialMS), "UNREACHABLE: "+b.Error))
	st := s.Health.Store
	fmt.Fprintf(tw, "store\t%s %s\n", st.Kind, okb(st.OK, "ok", "UNREACHABLE (deciding locally)"))
	for _, r := range s.Health.Reasons {
		fmt.Fprintf(tw, "not ok\t%s\n", cleanCell(r))
	}
	fmt.Fprintf(tw, "sessions\t%d active, %d since start\n", c.SessionsActive, c.SessionsTotal)
	fmt.Fprintf(tw, "logins\t%d ok, %d failed\n", c.LoginsOK, c.LoginsFailed)
	fmt.Fprintf(tw, "bans\t%d in force, %d made since start\n", c.BansActive, c.BansTotal)
	var rej []string
	for _, r := range sortedReasons(c.Rejects) {
		rej = append(rej, fmt.Sprintf("%s %d", r, c.Rejects[r]))
	}
	if len(rej) == 0 {
		rej = []string{"none"}
	}
	fmt.Fprintf(tw, "refused\t%s\n", strings.Join(rej, ", "))
	fmt.Fprintf(tw, "relayed\tup %s, down %s\n", humanBytes(c.BytesUp), humanBytes(c.BytesDown))
	tw.Flush()
	if len(s.Bans) > 0 {
		fmt.Fprintln(w)
		writeBansTable(w, s.banList())
	}
	if len(s.Users) > 0 {
		fmt.Fprintln(w)
		users := make([]userJSON, len(s.Users))
		for i, u := range s.Users {
			users[i] = u.userJSON
		}
		writeUsersTable(w, users)
	}
}

// banList returns the status's bans as the API lists them.
func (s Status) banList() []banJSON {
	out := make([]banJSON, len(s.Bans))
	for i, b := range s.Bans {
		out[i] = b.banJSON
	}
	return out
}

func sortedReasons(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return keys
}

// cleanCell keeps a table cell on one line and printable: every rune that
// is not a graphic character or a plain space becomes "?". Usernames are
// the clients' (the proxy refuses C0 controls only), and a terminal obeys
// C1 controls too (U+009B CSI, U+009D OSC: clear the screen, set the
// clipboard) and bidi overrides reorder what it shows.
func cleanCell(s string) string {
	return strings.Map(func(r rune) rune {
		if r != ' ' && !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}

// drainBody discards what is left of a response body and closes it.
func drainBody(r io.ReadCloser) {
	io.Copy(io.Discard, io.LimitReader(r, 1<<16))
	r.Close()
}
