package admin

// Throttled usernames: GET /users, DELETE /users/{name}, and their part of
// the status page and of the CLI (ftpguard users list|reset).

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// userJSON is a throttled username as the admin API shows it.
type userJSON struct {
	Name           string `json:"name"`             // canonical form (limiter.CanonicalUser)
	Hashed         bool   `json:"hashed,omitempty"` // Name is the prefix of a longer name
	Remaining      int    `json:"remaining"`        // whole tokens left in the budget
	Held           int    `json:"held"`             // places held by guesses in flight
	Failures       int    `json:"failures"`         // the budget's size
	RetryInSeconds int64  `json:"retry_in_seconds"` // until a guess from a new address passes again
	FullInSeconds  int64  `json:"full_in_seconds"`  // until the budget is full again
}

func toUserJSON(u limiter.UserState) userJSON {
	secs := func(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }
	return userJSON{Name: u.Name, Hashed: u.Hashed, Remaining: u.Remaining, Held: u.Held, Failures: u.Failures,
		RetryInSeconds: secs(u.RetryIn), FullInSeconds: secs(u.FullIn)}
}

// throttledUsers lists the throttled usernames (at most
// limiter.MaxThrottledList), none without per-username budgets.
func (a *Server) throttledUsers(now time.Time) []userJSON {
	out := []userJSON{}
	if a.opt.Users == nil {
		return out
	}
	for _, u := range a.opt.Users.Throttled(now) {
		out = append(out, toUserJSON(u))
	}
	return out
}

func (a *Server) handleUsersList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.throttledUsers(time.Now()))
}

// maxResetName bounds the name of DELETE /users/{name}.
const maxResetName = 1024

func (a *Server) handleUserReset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	switch {
	case a.opt.Users == nil:
		writeError(w, http.StatusNotFound, "per-username budgets are off ([user_limits] failures = 0)")
		return
	case strings.TrimSpace(name) == "" || len(name) > maxResetName:
		writeError(w, http.StatusBadRequest, "name: a username of 1 to %d bytes", maxResetName)
		return
	}
	found, err := a.opt.Users.Reset(name)
	canon := limiter.CanonicalUser(name)
	if err != nil {
		a.log.Error("admin user reset: store", "user", logName(canon), "err", err)
		writeError(w, http.StatusInternalServerError, "the budget of %q is reset here, but the store still has it: %v", logName(canon), err)
		return
	}
	if !found {
		writeError(w, http.StatusNotFound, "no budget of %q is spent (names are compared as %q)", logName(name), logName(canon))
		return
	}
	a.log.Info("user reset", "user", logName(canon), "origin", "admin", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]string{"reset": canon})
}

// logName bounds a client-chosen name before it is logged or echoed.
func logName(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}

// writeUsersTable prints throttled usernames as an aligned table.
func writeUsersTable(w io.Writer, users []userJSON) {
	if len(users) == 0 {
		fmt.Fprintln(w, "no usernames throttled")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "USERNAME\tBUDGET\tIN FLIGHT\tRETRY IN\tFULL IN")
	for _, u := range users {
		name := cleanCell(u.Name)
		if u.Hashed {
			name += " (truncated)"
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%d\t%s\t%s\n", name, u.Remaining, u.Failures, u.Held,
			humanDuration(time.Duration(u.RetryInSeconds)*time.Second), humanDuration(time.Duration(u.FullInSeconds)*time.Second))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d username(s) throttled: logins to them from new addresses are paused\n", len(users))
}
