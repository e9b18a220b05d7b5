package ftpproto

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParsePASV parses the address of a 227 reply (RFC 959). text is the
// reply's text (Reply.Text) or its whole line. ParsePASV takes the first
// run of six comma-separated decimal numbers h1,h2,h3,h4,p1,p2 in text,
// with or without parentheses around it, so both
// "Entering Passive Mode (127,0,0,1,195,80)." and "=127,0,0,1,195,80" work.
//
// It returns a ProtocolError if no such run exists, if a number is over
// 255 or has more than three digits, if a seventh number follows, or if the
// port is 0. If the address is 0.0.0.0 (vsftpd sends it to IPv6 clients) it
// returns an error wrapping ErrUnspecifiedAddr together with 0.0.0.0 and
// the port, so the caller can dial the control connection's IP instead.
func ParsePASV(text string) (netip.AddrPort, error) {
	for i := 0; i < len(text); i++ {
		if !isDigit(text[i]) || (i > 0 && isDigit(text[i-1])) {
			continue
		}
		v, n, ok := sixNumbers(text[i:])
		if !ok {
			continue
		}
		if rest := text[i+n:]; len(rest) > 1 && rest[0] == ',' && isDigit(rest[1]) {
			return netip.AddrPort{}, ProtocolError(fmt.Sprintf("more than six numbers in 227 reply %q", text))
		}
		ap, err := addrPort(v, "227 reply")
		if err != nil {
			return netip.AddrPort{}, err
		}
		if ap.Addr().IsUnspecified() {
			return ap, fmt.Errorf("%w in 227 reply %q", ErrUnspecifiedAddr, text)
		}
		return ap, nil
	}
	return netip.AddrPort{}, ProtocolError(fmt.Sprintf("no address in 227 reply %q", text))
}

// FormatPASV returns the 227 reply announcing ap:
// "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).". An IPv4-mapped IPv6
// address is unmapped first. It returns an error if the address is not
// IPv4 (use EPSV for IPv6) or the port is 0.
func FormatPASV(ap netip.AddrPort) (Reply, error) {
	b, err := appendSix(make([]byte, 0, 64), ap, "PASV")
	if err != nil {
		return Reply{}, err
	}
	return Reply{Code: 227, Lines: []string{"227 Entering Passive Mode (" + string(b) + ")."}}, nil
}

// ParsePORT parses the argument of a PORT command (RFC 959):
// "h1,h2,h3,h4,p1,p2", spaces around it tolerated. Each number is 0
// through 255, written with one to three digits and no sign; the port is
// p1*256+p2 and must not be 0. Errors are ProtocolErrors. ParsePORT does
// not judge the address: the caller must check that it is the client's own
// and the port is not privileged (RFC 2577 bounce attack).
func ParsePORT(arg string) (netip.AddrPort, error) {
	s := strings.Trim(arg, " ")
	v, n, ok := sixNumbers(s)
	if !ok || n != len(s) {
		return netip.AddrPort{}, ProtocolError(fmt.Sprintf("malformed PORT argument %q", arg))
	}
	return addrPort(v, "PORT argument")
}

// FormatPORT returns the PORT argument naming ap: "h1,h2,h3,h4,p1,p2". An
// IPv4-mapped IPv6 address is unmapped first. It returns an error if the
// address is not IPv4 (use EPRT for IPv6) or the port is 0.
func FormatPORT(ap netip.AddrPort) (string, error) {
	b, err := appendSix(make([]byte, 0, 32), ap, "PORT")
	return string(b), err
}

// sixNumbers parses six runs of decimal digits separated by single commas
// at the start of s. It reports the numbers, capped at 1000 (more than
// three digits also gives 1000), and the bytes used; ok is false if s does
// not begin with such a run.
func sixNumbers(s string) (v [6]int, n int, ok bool) {
	for k := range v {
		if k > 0 {
			if n == len(s) || s[n] != ',' {
				return v, 0, false
			}
			n++
		}
		start := n
		for n < len(s) && isDigit(s[n]) {
			v[k] = min(v[k]*10+int(s[n]-'0'), 1000)
			n++
		}
		switch {
		case n == start:
			return v, 0, false
		case n-start > 3:
			v[k] = 1000
		}
	}
	return v, n, true
}

// addrPort makes an address and port of six numbers from sixNumbers.
func addrPort(v [6]int, what string) (netip.AddrPort, error) {
	for _, x := range v {
		if x > 255 {
			return netip.AddrPort{}, ProtocolError(fmt.Sprintf("number out of range 0..255 in %s", what))
		}
	}
	port := uint16(v[4]<<8 | v[5])
	if port == 0 {
		return netip.AddrPort{}, ProtocolError(fmt.Sprintf("port 0 in %s", what))
	}
	a := netip.AddrFrom4([4]byte{byte(v[0]), byte(v[1]), byte(v[2]), byte(v[3])})
	return netip.AddrPortFrom(a, port), nil
}

// appendSix appends ap as h1,h2,h3,h4,p1,p2.
func appendSix(b []byte, ap netip.AddrPort, verb string) ([]byte, error) {
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return nil, fmt.Errorf("ftpproto: %s needs an IPv4 address, not %v", verb, a)
	}
	if ap.Port() == 0 {
		return nil, fmt.Errorf("ftpproto: %s needs a port other than 0", verb)
	}
	a4 := a.As4()
	for _, x := range [6]byte{a4[0], a4[1], a4[2], a4[3], byte(ap.Port() >> 8), byte(ap.Port())} {
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(x), 10)
	}
	return b, nil
}

// ParseEPSV parses the port of a 229 reply (RFC 2428). text is the reply's
// text or its whole line, e.g. "Entering Extended Passive Mode (|||6446|)".
// The delimiter may be any byte from 33 through 126 other than a digit,
// used four times; the port is 1 through 65535. ParseEPSV takes the first
// parenthesised group that matches; if none does, it returns a
// ProtocolError for the first one.
func ParseEPSV(text string) (port uint16, err error) {
	for s := text; ; {
		i := strings.IndexByte(s, '(')
		if i < 0 {
			break
		}
		s = s[i+1:]
		p, e := parseEPSVGroup(s)
		if e == nil {
			return p, nil
		}
		if err == nil {
			err = e
		}
	}
	if err == nil {
		err = errors.New("no (|||port|) group")
	}
	return 0, ProtocolError(fmt.Sprintf("%v in 229 reply %q", err, text))
}

// parseEPSVGroup parses "|||port|)" (the part after the parenthesis).
func parseEPSVGroup(s string) (uint16, error) {
	if len(s) < 3 {
		return 0, errors.New("short (|||port|) group")
	}
	d := s[0]
	if !isDelim(d) || isDigit(d) {
		return 0, fmt.Errorf("bad delimiter %q", d)
	}
	if s[1] != d || s[2] != d {
		return 0, errors.New("mismatched delimiters or address given")
	}
	s = s[3:]
	n := 0
	for n < len(s) && isDigit(s[n]) {
		n++
	}
	port, err := parsePort(s[:n])
	if err != nil {
		return 0, err
	}
	if s = s[n:]; len(s) < 2 || s[0] != d || s[1] != ')' {
		return 0, errors.New("mismatched delimiters or missing parenthesis")
	}
	return port, nil
}

// FormatEPSV returns the 229 reply announcing port:
// "229 Entering Extended Passive Mode (|||port|)".
func FormatEPSV(port uint16) Reply {
	return Reply{Code: 229, Lines: []string{"229 Entering Extended Passive Mode (|||" + strconv.Itoa(int(port)) + "|)"}}
}

// ParseEPRT parses the argument of an EPRT command (RFC 2428), e.g.
// "|1|132.235.1.2|6275|" or "|2|1080::8:800:200C:417A|5282|"; spaces around
// it are tolerated. The delimiter may be any byte from 33 through 126, the
// same one four times. Network protocol 1 needs an IPv4 address and 2 an
// IPv6 one (an IPv4-mapped IPv6 address is accepted and unmapped); a zone
// is refused. Another protocol number gives an error wrapping
// ErrUnsupportedFamily (reply 522); other errors are ProtocolErrors. The
// port is 1 through 65535. As with ParsePORT, the caller must judge the
// address and port.
func ParseEPRT(arg string) (netip.AddrPort, error) {
	bad := func(why string) (netip.AddrPort, error) {
		return netip.AddrPort{}, ProtocolError(fmt.Sprintf("%s in EPRT argument %q", why, arg))
	}
	s := strings.Trim(arg, " ")
	if s == "" || !isDelim(s[0]) {
		return bad("bad delimiter")
	}
	d := s[0]
	var f [4]string // family, address, port, and what follows the last delimiter
	s = s[1:]
	for k := range 3 {
		i := strings.IndexByte(s, d)
		if i < 0 {
			return bad("missing delimiter")
		}
		f[k], s = s[:i], s[i+1:]
	}
	if s != "" {
		return bad("text after the last delimiter")
	}
	fam, host, portText := f[0], f[1], f[2]

	if fam != "1" && fam != "2" {
		if !isNumber(fam) {
			return bad("bad network protocol")
		}
		return netip.AddrPort{}, fmt.Errorf("%w %q in EPRT argument", ErrUnsupportedFamily, fam)
	}
	a, err := netip.ParseAddr(host)
	switch {
	case err != nil || a.Zone() != "":
		return bad("bad address")
	case fam == "1" && !a.Is4():
		return bad("network protocol 1 with a non-IPv4 address")
	case fam == "2" && !a.Is6():
		return bad("network protocol 2 with a non-IPv6 address")
	}
	a = a.Unmap()
	port, err := parsePort(portText)
	if err != nil {
		return bad(err.Error())
	}
	return netip.AddrPortFrom(a, port), nil
}

// FormatEPRT returns the EPRT argument naming ap: "|1|h.h.h.h|port|" for an
// IPv4 (or IPv4-mapped IPv6) address, "|2|v6|port|" for IPv6. A zone is
// left out. It returns "" if ap's address is not valid.
func FormatEPRT(ap netip.AddrPort) string {
	a := ap.Addr().Unmap().WithZone("")
	if !a.IsValid() {
		return ""
	}
	fam := "|2|"
	if a.Is4() {
		fam = "|1|"
	}
	return fam + a.String() + "|" + strconv.Itoa(int(ap.Port())) + "|"
}

// isDelim reports whether c may delimit EPRT and EPSV fields (RFC 2428).
func isDelim(c byte) bool { return c >= 33 && c <= 126 }

// isNumber reports whether s is a non-empty run of decimal digits.
func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// parsePort parses a port number 1 through 65535 of at most five digits.
func parsePort(s string) (uint16, error) {
	if !isNumber(s) || len(s) > 5 {
		return 0, errors.New("bad port")
	}
	p, _ := strconv.Atoi(s)
	if p < 1 || p > 65535 {
		return 0, errors.New("port out of range 1..65535")
	}
	return uint16(p), nil
}
