package admin

// The bans routes of the admin API: GET /bans (paged), POST /bans (with the
// width guard), DELETE /bans/{key}; CrowdSec decisions listed beside
// ftpguard's own bans.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ftpguard/ftpguard/crowdsec"
	"github.com/ftpguard/ftpguard/internal/conf"
	"github.com/ftpguard/ftpguard/limiter"
)

// banJSON is a ban as the admin API shows it.
type banJSON struct {
	Key string `json:"key"`
	// Source is who holds the ban: "ftpguard" (its own, lifted with bans
	// del) or "crowdsec" (a CrowdSec decision, lifted with cscli).
	Source      string    `json:"source"`
	Until       time.Time `json:"until"`
	Since       time.Time `json:"since"`
	Reason      string    `json:"reason"`
	Count       int       `json:"count"`
	SecondsLeft int64     `json:"seconds_left"`
	Warning     string    `json:"warning,omitempty"`
	Covers      string    `json:"covers,omitempty"` // POST /bans: how many addresses the key covers ("65,536 addresses")
}

func toBanJSON(b limiter.Ban, now time.Time) banJSON {
	left := int64(math.Ceil(b.Until.Sub(now).Seconds()))
	return banJSON{Key: b.Key.String(), Source: SourceFtpguard, Until: b.Until.UTC(), Since: b.Since.UTC(),
		Reason: b.Reason, Count: b.Count, SecondsLeft: max(left, 0)}
}

// SourceFtpguard is the source of ftpguard's own bans in GET /bans.
const SourceFtpguard = "ftpguard"

// decisionJSON is a CrowdSec decision as GET /bans lists it.
func decisionJSON(d crowdsec.Decision, now time.Time) banJSON {
	left := int64(math.Ceil(d.Until.Sub(now).Seconds()))
	reason := d.Origin
	if d.Scenario != "" {
		reason += ": " + d.Scenario
	}
	return banJSON{Key: d.Prefix.String(), Source: crowdsec.Source, Until: d.Until.UTC(), Reason: reason, Count: 1,
		SecondsLeft: max(left, 0)}
}

// bans returns the bans in force at now, the no-auth penalties (Reason
// "noauth") and the bans of Options.MoreBans, sorted by Until.
func (a *Server) bans(now time.Time) []limiter.Ban {
	bans := a.lim.Bans(now)
	if side := a.sideBans(now); len(side) > 0 {
		bans = append(bans, side...)
		slices.SortStableFunc(bans, func(x, y limiter.Ban) int { return x.Until.Compare(y.Until) })
	}
	return bans
}

// sideBans returns what the bans list shows beside the limiter's ban
// table, which it does not page: the no-auth penalties and the bans of
// Options.MoreBans ([geo] budget rules).
func (a *Server) sideBans(now time.Time) []limiter.Ban {
	bans := a.lim.Penalties(now)
	if a.opt.MoreBans != nil {
		bans = append(bans, a.opt.MoreBans.Bans(now)...)
	}
	return bans
}

// NextAfterHeader carries, in a page of GET /bans?limit=N&after=C, the
// cursor of the next page (absent on the last page).
const NextAfterHeader = "X-Next-After"

// maxBansPage bounds the limit of a page of GET /bans.
const maxBansPage = 10000

func (a *Server) handleBansList(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	q := r.URL.Query()
	var bans []limiter.Ban
	if q.Has("limit") || q.Has("after") {
		// A page: bounded work, whatever the number of bans.
		limit, err := strconv.Atoi(q.Get("limit"))
		if err != nil || limit < 1 || limit > maxBansPage {
			writeError(w, http.StatusBadRequest, "limit: want 1 to %d, got %q", maxBansPage, q.Get("limit"))
			return
		}
		after := 0
		if v := q.Get("after"); v != "" {
			if after, err = strconv.Atoi(v); err != nil || after < 0 {
				writeError(w, http.StatusBadRequest, "after: want the %s of the previous page, got %q", NextAfterHeader, v)
				return
			}
		}
		var next int
		bans, next = a.lim.BansPage(now, after, limit)
		if after == 0 { // no-auth penalties and [geo] budget bans (tables of their own) come with the first page
			bans = append(bans, a.sideBans(now)...)
		}
		if next != 0 {
			w.Header().Set(NextAfterHeader, strconv.Itoa(next))
		}
	} else {
		bans = a.bans(now) // no-auth penalties and [geo] budget bans included
	}
	out := make([]banJSON, 0, len(bans))
	for _, b := range bans {
		out = append(out, toBanJSON(b, now))
	}
	if a.opt.CrowdSec != nil && a.opt.CrowdSec.Bouncer != nil {
		for _, d := range a.opt.CrowdSec.Bouncer.List(now) {
			out = append(out, decisionJSON(d, now))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// banRequest is the body of POST /bans.
type banRequest struct {
	IP       string `json:"ip"`       // an address or a CIDR
	Duration string `json:"duration"` // "" = the escalated ban time
	Reason   string `json:"reason"`   // "" = "admin"
	// Force makes a ban wider than [admin] max_ban_prefix_ipv4/_ipv6.
	Force bool `json:"force"`
}

// maxAdminBody bounds the body of an admin request.
const maxAdminBody = 4096

// maxAdminBan bounds a ban's duration (ten years).
const maxAdminBan = 10 * 365 * 24 * time.Hour

func (a *Server) handleBanAdd(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	var req banRequest
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "body: not a JSON object {\"ip\", \"duration\", \"reason\"}: %v", err)
			return
		}
	} else {
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "body: %v", err)
			return
		}
		force, _ := strconv.ParseBool(r.Form.Get("force"))
		req = banRequest{IP: r.Form.Get("ip"), Duration: r.Form.Get("duration"), Reason: r.Form.Get("reason"), Force: force}
	}
	key, err := a.parseTarget(req.IP)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := a.checkBanWidth(key, req.Force); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	dur, err := parseBanDuration(req.Duration)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	reason := strings.TrimSpace(req.Reason)
	if len(reason) > 64 || strings.IndexFunc(reason, func(c rune) bool { return c < 0x20 || c > 0x7e }) >= 0 {
		writeError(w, http.StatusBadRequest, "reason: at most 64 printable ASCII characters")
		return
	}
	now := time.Now()
	ban, err := a.lim.BanKey(now, key, dur, reason)
	switch {
	case errors.Is(err, limiter.ErrAllowlisted):
		writeError(w, http.StatusBadRequest, "ip: %v is allowlisted ([limits] allow): it is never banned", key)
		return
	case errors.Is(err, limiter.ErrInvalidPrefix):
		writeError(w, http.StatusBadRequest, "ip: %v", err)
		return
	}
	out := toBanJSON(ban, now)
	out.Covers = Covers(key)
	if err != nil { // ErrStore: in force, not saved
		out.Warning = fmt.Sprintf("the ban is in force but was not saved: %v", err)
		a.log.Error("admin ban not saved", "key", key.String(), "err", err)
	}
	a.log.Warn("ban", "key", key.String(), "until", ban.Until.Format(time.RFC3339),
		"for", ban.Until.Sub(now).Round(time.Second), "count", ban.Count, "reason", ban.Reason,
		"origin", "admin", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusCreated, out)
}

func (a *Server) handleBanDel(w http.ResponseWriter, r *http.Request) {
	key, err := a.parseTarget(r.PathValue("key"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	lifted, err := a.lim.Unban(key)
	if a.lim.LiftPenalty(time.Now(), key) { // a no-auth penalty is listed as a ban too
		lifted = true
	}
	if a.opt.MoreBans != nil && a.opt.MoreBans.Unban(key) { // a [geo] budget rule's ban too
		lifted = true
	}
	if !lifted && err == nil {
		if msg := a.crowdSecCovers(key); msg != "" {
			writeError(w, http.StatusConflict, "%s", msg)
			return
		}
		msg := fmt.Sprintf("no ban of %v in force", key)
		if c := a.lim.Check(time.Now(), key.Addr()); !c.Allowed && c.Ban.Key.IsValid() && c.Ban.Key != key {
			msg += fmt.Sprintf(" (the ban of %v covers it: lift that one)", c.Ban.Key)
		}
		writeError(w, http.StatusNotFound, "%s", msg)
		return
	}
	a.log.Info("unban", "key", key.String(), "origin", "admin", "remote", r.RemoteAddr)
	out := map[string]string{"unbanned": key.String()}
	status := http.StatusOK
	var warnings []string
	if err != nil {
		// The limiter queued the change (its retry, or the shared store's
		// circuit): lifted here now, written when the store takes writes.
		a.log.Error("admin unban: store", "key", key.String(), "err", err)
		status = http.StatusAccepted
		warnings = append(warnings, fmt.Sprintf("lifted here; the store cannot take it now (%v): the unban is queued and written when it can (another instance sharing the store keeps the ban until then)", err))
	}
	if msg := a.crowdSecCovers(key); msg != "" {
		// ftpguard's ban pushed to CrowdSec by the watcher comes back as a
		// decision: the address stays refused until it is deleted there.
		warnings = append(warnings, msg)
	}
	if len(warnings) > 0 {
		out["warning"] = strings.Join(warnings, "; ")
	}
	writeJSON(w, status, out)
}

// crowdSecCovers describes the CrowdSec decision in force that overlaps
// key, with the cscli command that deletes it; "" if none.
func (a *Server) crowdSecCovers(key netip.Prefix) string {
	cs := a.opt.CrowdSec.Covering(key, time.Now())
	if len(cs) == 0 {
		return ""
	}
	d := cs[0]
	flag := "--ip " + d.Prefix.Addr().String()
	if d.Prefix.Bits() < d.Prefix.Addr().BitLen() {
		flag = "--range " + d.Prefix.String()
	}
	return fmt.Sprintf("%v is banned by a CrowdSec decision (%v, id %d, origin %s): ftpguard cannot lift it; delete it in CrowdSec: cscli decisions delete %s",
		key, d.Prefix, d.ID, d.Origin, flag)
}

// parseTarget reads the ip of a ban request: a CIDR is taken as it is
// (masked); a bare address is taken as its key ([limits] ipv4_prefix and
// ipv6_prefix), the prefix its budget bans.
func (a *Server) parseTarget(v string) (netip.Prefix, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return netip.Prefix{}, errors.New("ip: missing (an IP address or CIDR)")
	}
	if strings.Contains(v, "/") {
		p, err := conf.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("ip: %q is not an IP address or CIDR", v)
		}
		// As the limiter keeps it: a 6to4 prefix is the IPv4 prefix it
		// carries, and its width is checked (and reported) as such.
		if p, err = limiter.NormPrefix(p); err != nil {
			return netip.Prefix{}, fmt.Errorf("ip: %v", err)
		}
		return p, nil
	}
	addr, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip: %q is not an IP address or CIDR (names are never resolved)", v)
	}
	return a.lim.Key(addr), nil
}

// parseBanDuration reads a ban duration: "" (0: the escalated ban time),
// a Go duration ("90m", "2h"), or whole days ("7d").
func parseBanDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	var dur time.Duration
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("duration: %q is not a duration such as \"90m\", \"12h\" or \"7d\"", v)
		}
		// Bounded before it is multiplied out: a count of days beyond
		// ±106,751 would wrap around (−281474976710655 days is +24h).
		dur = time.Duration(max(min(days, 100_000), -1)) * 24 * time.Hour
	} else {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Errorf("duration: %q is not a duration such as \"90m\", \"12h\" or \"7d\"", v)
		}
	}
	if dur <= 0 {
		return 0, fmt.Errorf("duration: must be positive, got %q", v)
	}
	if dur > maxAdminBan {
		return 0, fmt.Errorf("duration: at most %v (ten years), got %q", maxAdminBan, v)
	}
	return dur, nil
}
