package pairing

// Verb is what the proxy knows of a command verb: when it is forwarded,
// which replies can answer it, and what its reply means. The zero Verb is
// that of a verb the table does not list: forwarded only after login, any
// reply answers it, its reply is passed on as it is.
type Verb struct {
	// PreLogin: forwarded to the daemon before the session has logged in
	// (logging in, and what clients ask before it) or answered by the
	// proxy itself before forwarding (AUTH, PBSZ, PROT, CCC, REIN, the
	// PROXY check). Anything else is answered 530 by the proxy before
	// login: what a daemon does with it then is not for a guesser to
	// explore (proftpd answers SITE CHMOD with two replies, which would put
	// every later reply one command early).
	PreLogin bool
	// Transfer: the command moves data over a data connection; its
	// positive final reply says the data is complete and waits for it (Gate).
	Transfer bool
	// Login: USER, PASS or ACCT; its final reply goes to the login policy
	// (Settle), which settles the attempt the entry carries.
	Login bool
	// Rewrite: the reply is the proxy's to rewrite (PASV, EPSV: its own
	// data port; FEAT: what it offers).
	Rewrite bool
	// Ends: the session ends after the reply (QUIT).
	Ends bool
	// fits lists the codes below 400 a final reply to the verb may have;
	// nil: any.
	fits []int
}

// Fits reports whether a final reply with code can answer the verb
// (RFC 959 §5.4; 232 from RFC 2228). Any 4xx or 5xx can. For the verbs
// that log in the rest is listed: USER 230, 232, 331, 332; PASS 230, 202,
// 332; ACCT 230, 202. A reply that cannot (a 200 to PASS, a 331 to ACCT)
// means the daemon and the proxy pair replies with different commands —
// the daemon answered one twice or not at all — and a PASS would be
// settled by another command's reply. Other verbs' replies are not
// checked.
func (v Verb) Fits(code int) bool {
	if code >= 400 || v.fits == nil {
		return true
	}
	for _, c := range v.fits {
		if c == code {
			return true
		}
	}
	return false
}

var (
	preLogin = Verb{PreLogin: true}
	transfer = Verb{Transfer: true}
)

// verbs replaces the scattered predicates the session once had
// (preLoginVerb, transferVerb, replyFits).
var verbs = map[string]Verb{
	"USER": {PreLogin: true, Login: true, fits: []int{230, 232, 331, 332}},
	"PASS": {PreLogin: true, Login: true, fits: []int{230, 202, 332}},
	"ACCT": {PreLogin: true, Login: true, fits: []int{230, 202}},
	"QUIT": {PreLogin: true, Ends: true},
	"FEAT": {PreLogin: true, Rewrite: true},
	"OPTS": preLogin, "SYST": preLogin, "HOST": preLogin, "CLNT": preLogin,
	"LANG": preLogin, "HELP": preLogin, "NOOP": preLogin,
	"AUTH": preLogin, "PBSZ": preLogin, "PROT": preLogin, "CCC": preLogin,
	"REIN": preLogin, "PROXY": preLogin,

	"PASV": {Rewrite: true},
	"EPSV": {Rewrite: true},

	"RETR": transfer, "LIST": transfer, "NLST": transfer, "MLSD": transfer,
	"STOR": transfer, "STOU": transfer, "APPE": transfer,
}

// Lookup returns what the table says of verb (upper case, as
// ftpproto.Command has it); the zero Verb for one it does not list.
func Lookup(verb string) Verb { return verbs[verb] }
