// Package ftpproto parses and formats the bytes of an FTP control channel
// (RFC 959, RFC 2428): client command lines, whole server replies
// (multi-line included) and the data-channel addresses carried by PASV,
// EPSV, PORT and EPRT.
//
// The package never touches a network connection. It reads from an
// [io.Reader] and appends to byte slices, so it is pure and fuzzable. Every
// read is bounded: a peer can make a reader buffer at most a line (or, for
// replies, one whole reply) of a configured size, never more.
//
// The package provides:
//
// [CommandReader], to read client command lines into [Command] values, one
// canonical command per line, with Telnet IAC sequences removed and lines
// holding NUL or a bare CR rejected. Forward [Command.AppendWire], never the
// client's raw bytes.
//
// [ReplyReader], to read whole server replies into [Reply] values, and
// [NewReply] to build the proxy's own replies.
//
// [ParsePASV], [ParseEPSV], [ParsePORT], [ParseEPRT] and their Format
// counterparts, to read and write data-channel addresses with [net/netip].
package ftpproto

import "errors"

// Default bounds, as in docs/design.md.
const (
	// DefaultMaxLine is the line bound used when a reader is given a
	// maxLine <= 0 (the max_line setting's default).
	DefaultMaxLine = 2048
	// DefaultMaxReply is the bound on a whole reply used when a
	// ReplyReader is given a maxReply <= 0.
	DefaultMaxReply = 64 << 10
)

var (
	// ErrLineTooLong is returned when a command or reply line is longer
	// than the reader's line bound. The reader is then unusable: every
	// later read returns ErrLineTooLong again.
	ErrLineTooLong = errors.New("ftpproto: line too long")

	// ErrBadLine is returned (wrapped) for a command line that holds a
	// NUL byte, a CR not followed by LF, or a verb with a byte outside
	// 0x21–0x7E. The whole line has been consumed; the next read
	// continues at the next line.
	ErrBadLine = errors.New("ftpproto: malformed line")

	// ErrReplyTooLong is returned when one server reply, all its lines
	// counted, is longer than the reader's reply bound. The reader is
	// then unusable: every later read returns ErrReplyTooLong again.
	ErrReplyTooLong = errors.New("ftpproto: reply too long")

	// ErrUnsupportedFamily is returned (wrapped) by ParseEPRT for a
	// network protocol other than 1 (IPv4) or 2 (IPv6). A server answers
	// it with 522 (RFC 2428).
	ErrUnsupportedFamily = errors.New("ftpproto: unsupported network protocol")

	// ErrUnspecifiedAddr is returned (wrapped) by ParsePASV for a 227
	// reply that names 0.0.0.0 (vsftpd sends it to IPv6 clients). The
	// returned address still carries the port, so the caller can pair it
	// with the control connection's IP.
	ErrUnspecifiedAddr = errors.New("ftpproto: unspecified address")
)

// A ProtocolError describes a reply or an argument that violates the
// protocol, such as a reply line that does not begin with a code or a 227
// reply without an address. Use errors.As with a ProtocolError value (not
// a pointer) as the target.
type ProtocolError string

func (p ProtocolError) Error() string {
	return "ftpproto: " + string(p)
}
