package ftpproto

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A Reply is one whole server reply, possibly multi-line (RFC 959 §4.2).
//
// The zero Reply has code 0 and no lines.
type Reply struct {
	// Code is the reply code, 100 through 599.
	Code int
	// Lines holds each line as received, Telnet sequences decoded and
	// without its line end. Lines[0] begins with the code. A single-line
	// reply has one line; a multi-line reply begins "NNN-" and ends with
	// a line that is "NNN" or begins "NNN ".
	Lines []string
}

// NewReply returns a reply with the given code (100 through 599) and text.
// A text of one line gives "NNN text". A text holding "\n" gives a
// multi-line reply: "NNN-first", the middle lines as they are, "NNN last".
// A middle line that begins (after any spaces) with three digits followed
// by a space, a dash or its end gets a space in front, as RFC 959 asks, so
// it can neither end the reply early nor be taken for a code. CR and NUL
// bytes in text are dropped.
func NewReply(code int, text string) Reply {
	text = dropCRNUL(text)
	prefix := strconv.Itoa(code)
	n := strings.Count(text, "\n")
	if n == 0 {
		return Reply{Code: code, Lines: []string{prefix + " " + text}}
	}
	lines := make([]string, 0, n+1)
	for i := 0; ; i++ {
		line, rest, more := strings.Cut(text, "\n")
		text = rest
		switch {
		case i == 0:
			line = prefix + "-" + line
		case !more:
			line = prefix + " " + line
		case needsPad(line):
			line = " " + line
		}
		lines = append(lines, line)
		if !more {
			return Reply{Code: code, Lines: lines}
		}
	}
}

// dropCRNUL drops CR and NUL bytes from s.
func dropCRNUL(s string) string {
	if !strings.ContainsAny(s, "\r\x00") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == 0 {
			return -1
		}
		return r
	}, s)
}

// needsPad reports whether line, once leading spaces are trimmed, begins
// with three digits followed by a space, a dash or its end.
func needsPad(line string) bool {
	line = strings.TrimLeft(line, " ")
	return len(line) >= 3 && isDigit(line[0]) && isDigit(line[1]) && isDigit(line[2]) &&
		(len(line) == 3 || line[3] == ' ' || line[3] == '-')
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// AppendWire appends the wire form of r to b and returns the extended
// buffer: its lines, each ended by CRLF, with 0xFF written as IAC IAC
// (RFC 854). CR, LF and NUL inside a line are dropped, so a Reply cannot
// carry an extra line. A Reply without lines is written as
// NewReply(r.Code, "") would be.
func (r Reply) AppendWire(b []byte) []byte {
	if len(r.Lines) == 0 {
		b = strconv.AppendInt(b, int64(r.Code), 10)
		return append(b, ' ', '\r', '\n')
	}
	for _, line := range r.Lines {
		b = appendEscaped(b, line)
		b = append(b, '\r', '\n')
	}
	return b
}

// Text returns the message text of r. For a single-line reply it is the
// text after "NNN ". For a multi-line reply it is the lines joined with
// "\n": the first without "NNN-", the last without "NNN " and, as in
// net/textproto, a middle line without a leading "NNN-" of the reply's own
// code; a middle line's RFC 959 padding space (see NewReply) is removed.
// So NewReply(c, t).Text() == t for any t without CR and NUL.
func (r Reply) Text() string {
	switch len(r.Lines) {
	case 0:
		return ""
	case 1:
		return afterCode(r.Lines[0])
	}
	var sb strings.Builder
	code := strconv.Itoa(r.Code)
	last := len(r.Lines) - 1
	for i, line := range r.Lines {
		switch {
		case i == 0 || i == last:
			line = afterCode(line)
		case len(line) > 3 && line[3] == '-' && line[:3] == code:
			line = line[4:]
		case len(line) > 0 && line[0] == ' ' && needsPad(line):
			line = line[1:]
		}
		if i > 0 {
			sb.WriteByte('\n')
		}
		sb.WriteString(line)
	}
	return sb.String()
}

// afterCode returns line without its leading "NNN " or "NNN-".
func afterCode(line string) string {
	if len(line) <= 4 {
		return ""
	}
	return line[4:]
}

// Positive reports whether r is a positive completion reply (2xx).
func (r Reply) Positive() bool { return r.Code >= 200 && r.Code <= 299 }

// Preliminary reports whether r is a positive preliminary reply (1xx): the
// command's final reply is still to come.
func (r Reply) Preliminary() bool { return r.Code >= 100 && r.Code <= 199 }

// A ReplyReader reads whole replies from a server.
//
// The zero ReplyReader reads from nothing: ReadReply returns io.EOF.
// Create one with NewReplyReader. A ReplyReader is not safe for concurrent
// use.
type ReplyReader struct {
	lr       lineReader
	maxLine  int
	maxReply int
	err      error

	// The reply being read; kept across a read error so a retry
	// continues it.
	code  int
	lines []string
	total int // raw bytes of the reply so far, terminators included
}

// NewReplyReader returns a ReplyReader reading from r. maxLine bounds each
// line and maxReply the whole of one reply, both counted in bytes as
// received (Telnet IAC sequences included); maxLine excludes the line's
// terminator, maxReply includes every terminator and any blank lines before
// the reply. If maxLine <= 0, DefaultMaxLine is used; if maxReply <= 0,
// DefaultMaxReply. The bounds stop a hostile or broken server from making
// the proxy buffer an unbounded line or an endless multi-line reply
// (memory exhaustion).
func NewReplyReader(r io.Reader, maxLine, maxReply int) *ReplyReader {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	if maxReply <= 0 {
		maxReply = DefaultMaxReply
	}
	return &ReplyReader{
		lr:       lineReader{rd: r, max: maxLine, lfEnds: true},
		maxLine:  maxLine,
		maxReply: maxReply,
	}
}

// ReadReply reads the next whole reply.
//
// Lines end at LF with an optional CR before it dropped (some servers send
// a bare LF). Being lenient with servers, a CR elsewhere in a line and a
// NUL byte are dropped, so Lines never hold CR, LF or NUL. Telnet IAC
// sequences are removed, and IAC IAC becomes one 0xFF byte; but an LF
// always ends the line, inside a Telnet sequence too (which is then cut
// short): a daemon that echoes a client's 0xFF bytes undoubled cannot make
// one reply swallow the next.
// Empty lines between replies are skipped.
//
// The first line is "NNN text" or a bare "NNN" (a single-line reply), or
// "NNN-text", which starts a multi-line reply that ends at a line that is
// the same code alone or the same code followed by a space. Lines in
// between may begin with anything, digits and other codes included.
//
// Errors:
//   - a ProtocolError if the first line does not begin with a code in
//     100..599 followed by a space, a dash or the line's end. That line is
//     consumed; the next call reads the next line.
//   - ErrLineTooLong or ErrReplyTooLong past the bounds; the reader is
//     then unusable.
//   - io.EOF at the end of input between replies, io.ErrUnexpectedEOF
//     inside one.
//   - any other error of the underlying reader, as it is. The partial
//     reply is kept, so the call may be retried.
//
// On error the returned Reply is the zero Reply.
func (r *ReplyReader) ReadReply() (Reply, error) {
	if r.err != nil {
		return Reply{}, r.err
	}
	if r.lr.max == 0 { // zero ReplyReader
		r.maxLine, r.maxReply, r.lr.max = DefaultMaxLine, DefaultMaxReply, DefaultMaxLine
	}
	for {
		left := r.maxReply - r.total
		line, raw, err := r.lr.readLine(min(r.maxLine, left))
		switch {
		case err == errTooLong:
			r.err = ErrLineTooLong
			if left < r.maxLine {
				r.err = ErrReplyTooLong
			}
			return Reply{}, r.err
		case err == io.EOF && r.lines != nil:
			return Reply{}, io.ErrUnexpectedEOF
		case err != nil:
			return Reply{}, err
		}
		r.total += raw
		if r.total > r.maxReply {
			r.err = ErrReplyTooLong
			return Reply{}, r.err
		}

		if r.lines == nil { // first line
			if len(line) == 0 {
				continue
			}
			code, ok := parseCode(line)
			if !ok {
				r.total = 0
				return Reply{}, ProtocolError(fmt.Sprintf("reply line does not begin with a code: %q", truncate(line, 40)))
			}
			s := string(line)
			if len(line) == 3 || line[3] == ' ' {
				r.total = 0
				return Reply{Code: code, Lines: []string{s}}, nil
			}
			r.code = code
			r.lines = make([]string, 1, 8)
			r.lines[0] = s
			continue
		}

		r.lines = append(r.lines, string(line))
		if c, ok := parseCode(line); ok && c == r.code && (len(line) == 3 || line[3] == ' ') {
			rep := Reply{Code: r.code, Lines: r.lines}
			r.code, r.lines, r.total = 0, nil, 0
			return rep, nil
		}
	}
}

// parseCode parses the reply code at the start of line: three digits in
// 100..599 followed by a space, a dash or the line's end.
func parseCode(line []byte) (int, bool) {
	if len(line) < 3 || line[0] < '1' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false
	}
	if len(line) > 3 && line[3] != ' ' && line[3] != '-' {
		return 0, false
	}
	return int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0'), true
}

// truncate returns at most n bytes of b, for error messages.
func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
