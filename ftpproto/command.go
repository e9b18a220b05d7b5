package ftpproto

import (
	"fmt"
	"io"
	"strings"
)

// A Command is one parsed client command line.
//
// The zero Command has no verb; its wire form is an empty line.
type Command struct {
	// Verb is the command's verb, upper-cased (ASCII only), e.g. "USER".
	// Leading spaces and tabs before it are trimmed by ReadCommand.
	Verb string
	// Arg is everything after the single space that follows the verb,
	// byte for byte: it may hold spaces (leading and trailing included)
	// and invalid UTF-8. It is "" if there is none.
	Arg string
}

// AppendWire appends the canonical wire form of c to b and returns the
// extended buffer: the verb, then a space and the argument if the argument
// is not empty, then CRLF. A 0xFF byte in the argument is written as
// IAC IAC (RFC 854).
//
// So that no Command can smuggle a second line to the server, bytes that
// would end or split the line are dropped: CR, LF and NUL in the argument,
// and bytes outside 0x21–0x7E in the verb. A Command returned by
// ReadCommand holds none of them.
func (c Command) AppendWire(b []byte) []byte {
	for i := 0; i < len(c.Verb); i++ {
		if ch := c.Verb[i]; ch >= 0x21 && ch <= 0x7e {
			b = append(b, ch)
		}
	}
	if c.Arg != "" {
		b = append(b, ' ')
		b = appendEscaped(b, c.Arg)
	}
	return append(b, '\r', '\n')
}

// appendEscaped appends s to b with 0xFF doubled (IAC IAC) and CR, LF and
// NUL dropped.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; ch {
		case '\r', '\n', 0:
		case telIAC:
			b = append(b, telIAC, telIAC)
		default:
			b = append(b, ch)
		}
	}
	return b
}

// String returns c for logs: like the wire form without its CRLF, but the
// argument of PASS, ACCT and ADAT (passwords, accounts, security data) is
// shown as "****", so a secret never reaches a log. CR, LF and NUL are
// dropped. Never write String to the wire: use AppendWire.
func (c Command) String() string {
	verb, arg := clean(c.Verb), clean(c.Arg)
	if arg == "" {
		return verb
	}
	if isSecret(verb) {
		arg = "****"
	}
	return verb + " " + arg
}

// isSecret reports whether the argument of verb is a secret.
func isSecret(verb string) bool {
	return strings.EqualFold(verb, "PASS") || strings.EqualFold(verb, "ACCT") || strings.EqualFold(verb, "ADAT")
}

// clean drops CR, LF and NUL from s.
func clean(s string) string {
	if !strings.ContainsAny(s, "\r\n\x00") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return -1
		}
		return r
	}, s)
}

// A CommandReader reads bounded command lines from a client.
//
// The zero CommandReader reads from nothing: ReadCommand returns io.EOF.
// Create one with NewCommandReader. A CommandReader is not safe for
// concurrent use.
type CommandReader struct {
	lr     lineReader
	max    int
	budget int // bytes left to the bound for the line being read
	err    error
}

// NewCommandReader returns a CommandReader reading from r. maxLine is the
// largest number of bytes a line may have, counted as received (Telnet IAC
// sequences included) and excluding its CRLF or LF terminator; if maxLine
// <= 0, DefaultMaxLine is used. The bound stops a client from making the
// proxy buffer an unbounded line (memory exhaustion): a reader holds at
// most maxLine bytes of line plus a 4 KiB read buffer.
func NewCommandReader(r io.Reader, maxLine int) *CommandReader {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	return &CommandReader{
		lr:     lineReader{rd: r, max: maxLine, strict: true},
		max:    maxLine,
		budget: maxLine,
	}
}

// Buffered returns the number of bytes already read from the underlying
// reader but not yet returned by ReadCommand. Right after ReadCommand has
// returned AUTH TLS it must be 0: anything else is plaintext the client
// pipelined behind AUTH TLS, which must never be taken as coming from
// inside TLS (command injection).
func (r *CommandReader) Buffered() int {
	return r.lr.buffered()
}

// ReadCommand reads and parses the next command line.
//
// A line ends at LF; a CR right before the LF is dropped, so CRLF and a
// bare LF both end a line. Telnet IAC sequences are removed before the
// line is parsed (IAC IAC is a 0xFF byte), so "\xff\xf4\xff\xf2ABOR\r\n"
// reads as ABOR. Blank lines (empty, or only spaces and tabs) are skipped;
// their bytes count toward the bound of the line that follows, so a flood
// of blank lines cannot keep ReadCommand from returning.
//
// The verb is the first run of bytes other than space after leading spaces
// and tabs, upper-cased; the argument is everything after the one space
// that follows it. Pipelined lines come out of successive calls.
//
// Errors:
//   - ErrBadLine (wrapped) for a line holding NUL, a CR not followed by LF,
//     or a verb byte outside 0x21–0x7E. The line is consumed; the next call
//     reads the next line.
//   - ErrLineTooLong for a line over the bound; the reader is then
//     unusable (reply 500 and close).
//   - io.EOF at the end of input between lines, io.ErrUnexpectedEOF inside
//     a line.
//   - any other error of the underlying reader, as it is (so errors.Is
//     works, e.g. with os.ErrDeadlineExceeded). The partial line is kept,
//     so the call may be retried.
//
// On error the returned Command is the zero Command.
func (r *CommandReader) ReadCommand() (Command, error) {
	if r.err != nil {
		return Command{}, r.err
	}
	if r.lr.max == 0 { // zero CommandReader
		r.max, r.budget, r.lr.max, r.lr.strict = DefaultMaxLine, DefaultMaxLine, DefaultMaxLine, true
	}
	for {
		line, raw, err := r.lr.readLine(r.budget)
		switch err {
		case nil:
		case errTooLong:
			r.err = ErrLineTooLong
			return Command{}, r.err
		case errNUL, errCR:
			r.budget = r.max
			return Command{}, fmt.Errorf("%w: %v", ErrBadLine, err)
		default:
			return Command{}, err
		}

		i := 0
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		if i == len(line) { // blank line
			r.budget -= raw
			if r.budget < 0 {
				r.err = ErrLineTooLong
				return Command{}, r.err
			}
			continue
		}
		r.budget = r.max
		line = line[i:]

		// Upper-case the verb in place, so that one string holds both
		// verb and argument: one allocation per command.
		k := 0
		for ; k < len(line) && line[k] != ' '; k++ {
			c := line[k]
			if c < 0x21 || c > 0x7e {
				return Command{}, fmt.Errorf("%w: byte %#02x in verb", ErrBadLine, c)
			}
			if 'a' <= c && c <= 'z' {
				line[k] = c - ('a' - 'A')
			}
		}
		s := string(line)
		if k == len(s) {
			return Command{Verb: s}, nil
		}
		return Command{Verb: s[:k], Arg: s[k+1:]}, nil
	}
}
