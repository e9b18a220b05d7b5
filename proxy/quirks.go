package proxy

import (
	"strings"
	"sync"
	"time"

	"github.com/ftpguard/ftpguard/ftpproto"
	"github.com/ftpguard/ftpguard/proxy/internal/pairing"
)

// Daemon and client quirks, handled here and nowhere else. Replies are
// otherwise read generically by ftpproto.ReplyReader, which already covers
// what the daemons behind ftpguard send: multi-line replies whose middle
// lines start with anything (pure-ftpd's "220---------- Welcome"), a final
// line that is the bare code, Telnet IAC sequences, 0xFF doubled (vsftpd),
// bare LF line ends, and a 1xx before the greeting's 220. Hang-ups without
// a 421 after a daemon's own limit of failures (vsftpd max_login_fails,
// proftpd MaxLoginAttempts, pure-ftpd after 6) settle the attempt that was
// waiting as a failure, like any hang-up. docs/daemons.md lists them.

// refusedAfterGoodPassword reports whether r, a 4xx/5xx reply to PASS,
// refuses a login whose password the daemon accepted. proftpd checks
// MaxClients, MaxClientsPerHost, MaxClientsPerUser, MaxClientsPerClass and
// MaxHostsPerUser only after a correct password and then answers, e.g.,
// "530 Sorry, the maximum number of allowed clients (1) are already
// connected." (a wrong password still gets "530 Login incorrect."). Counted
// as a failure, a busy daemon would get its legitimate users banned; the
// attempt is released instead, neither failure nor success. The text is the
// daemon's, never the client's.
func refusedAfterGoodPassword(r ftpproto.Reply) bool {
	t := r.Text()
	return r.Code == 530 && strings.Contains(t, "Sorry, the maximum number of") &&
		strings.Contains(t, "are already connected")
}

// daemonQuirks are the daemons' ways of answering that the pairing
// machine must know of.
var daemonQuirks = pairing.Quirks{AbortOnly: pureftpdAbortReply}

// pureftpdAbortReply reports whether r, a final reply while a transfer
// command and then ABOR await their replies, is the ABOR's own and the
// transfer gets none. pure-ftpd, aborted mid-transfer, sends "150
// <statistics>" and "226 Since you see this ABOR must've succeeded" and
// nothing for the transfer, where vsftpd and proftpd answer it with 426
// before answering ABOR with 225/226. Paired with the transfer, that 226
// would leave every later reply answering the command before its own (a
// 227 passed through unrewritten, a 530 to PASS not counted). Only that
// exact reply matches: another daemon's reply that merely names ABOR
// (proftpd's "550 ABOR: No such file or directory" to RETR of a file
// named ABOR) is its transfer's.
func pureftpdAbortReply(r ftpproto.Reply) bool {
	return r.Code == 226 && len(r.Lines) == 1 && r.Text() == "Since you see this ABOR must've succeeded"
}

// dataGate holds the positive final reply to a transfer command (226, 250)
// until the data it reports complete has been relayed to the client.
//
// A daemon sends 226 once its last byte is in the proxy's socket buffer
// (vsftpd, pure-ftpd) — before the proxy has relayed it, and in active mode
// possibly before the proxy has even connected to the client. Relayed at
// once, the 226 could overtake the data: curl 7.88 in active mode then
// fails with "Ctrl conn has data while waiting for data conn" (exit 8)
// whenever the 226 arrives before the proxy's data connection. A client
// talking to the daemon directly never sees that order, so the proxy keeps
// it: a data leg is open from the moment it can carry data (the PORT
// listener or the passive listener is set up) until
// its daemon → client half has ended, and the reply waits (at most
// DataTimeout) until no leg is open. Replies 4xx/5xx are not held.
type dataGate struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while n == 0
}

// begin opens a data leg; the returned end closes it (once; later calls do
// nothing).
func (g *dataGate) begin() (end func()) {
	g.mu.Lock()
	if g.n == 0 {
		g.idle = make(chan struct{})
	}
	g.n++
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			if g.n--; g.n == 0 {
				close(g.idle)
				g.idle = nil
			}
			g.mu.Unlock()
		})
	}
}

// wait returns when no data leg is open, d has passed or done is closed.
func (g *dataGate) wait(d time.Duration, done <-chan struct{}) {
	g.mu.Lock()
	idle := g.idle
	g.mu.Unlock()
	if idle == nil {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	case <-done:
	}
}

// knownShape reports whether verb has the shape of an FTP command: 3 to 8
// characters, a letter first, then letters or digits (RFC 959's verbs and
// the extensions in use: EPSV, MLSD, XSHA256). Anything else is answered
// 500 by the proxy and never forwarded: pure-ftpd sends no reply at all to
// a verb such as "!" or "X-Y".
func knownShape(verb string) bool {
	if len(verb) < 3 || len(verb) > 8 || verb[0] < 'A' || verb[0] > 'Z' {
		return false
	}
	for i := 1; i < len(verb); i++ {
		if c := verb[i]; (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
