package ftpproto

import (
	"errors"
	"io"
)

// Telnet bytes (RFC 854) that may appear on an FTP control connection.
const (
	telSE   = 240 // end of subnegotiation
	telSB   = 250 // start of subnegotiation
	telWILL = 251
	telWONT = 252
	telDO   = 253
	telDONT = 254
	telIAC  = 255 // interpret as command
)

// States of the Telnet decoder.
const (
	tsData  uint8 = iota // plain data
	tsIAC                // after IAC
	tsOpt                // after IAC WILL/WONT/DO/DONT, before the option byte
	tsSB                 // inside IAC SB … IAC SE
	tsSBIAC              // after IAC inside a subnegotiation
)

// bufSize is the size of a reader's read buffer: the small constant that
// is buffered beyond a line.
const bufSize = 4096

// maxEmptyReads bounds the number of successive (0, nil) reads, as
// bufio.Reader does, so a misbehaving io.Reader cannot make a read spin.
const maxEmptyReads = 100

// Internal results of lineReader.readLine; the exported readers map them
// to the exported errors.
var (
	errTooLong = errors.New("ftpproto: internal: over bound")
	errNUL     = errors.New("NUL byte inside line")
	errCR      = errors.New("CR not followed by LF inside line")
)

// A lineReader splits a byte stream into lines ending at LF, with an
// optional CR before the LF dropped, after removing Telnet IAC sequences:
// IAC IAC is one 0xFF data byte, IAC WILL/WONT/DO/DONT <opt> and
// IAC SB … IAC SE are removed, and any other IAC <cmd> is removed.
//
// Its state survives a read error such as a timeout, so a read may be
// retried and continues the line it was reading.
type lineReader struct {
	rd   io.Reader
	buf  []byte // read buffer; buf[r:w] is unread
	r, w int
	rerr error // error of the last Read, returned once buf is drained

	max    int  // bound on len(line); line never grows beyond it
	strict bool // NUL or a bare CR makes the line bad (commands); else they are dropped (replies)
	// lfEnds: an LF ends the line whatever the Telnet state, which starts
	// afresh on the next line (replies). Daemons echo client text without
	// doubling 0xFF, so an echoed "\xff\xfa" (IAC SB) must not swallow the
	// replies after it. Otherwise (commands) a sequence may span an LF, as
	// RFC 854 allows.
	lfEnds bool

	// The line being read.
	line []byte // decoded bytes
	n    int    // raw bytes consumed, terminator excluded (a pending CR is included)
	tel  uint8  // Telnet decoder state
	cr   bool   // the last data byte was a CR, not yet known to precede LF
	bad  error  // errNUL or errCR once the line is known to be bad (strict only)
}

// buffered reports the bytes read from rd but not yet consumed.
func (l *lineReader) buffered() int { return l.w - l.r }

// midLine reports whether part of a line has been consumed.
func (l *lineReader) midLine() bool {
	return len(l.line) > 0 || l.cr || l.bad != nil || l.tel != tsData
}

// fill reads more bytes into the empty buffer.
func (l *lineReader) fill() error {
	if err := l.rerr; err != nil {
		l.rerr = nil
		return err
	}
	if l.rd == nil {
		return io.EOF
	}
	if l.buf == nil {
		l.buf = make([]byte, bufSize)
	}
	for range maxEmptyReads {
		n, err := l.rd.Read(l.buf)
		if n < 0 || n > len(l.buf) {
			return errors.New("ftpproto: invalid Read count")
		}
		l.r, l.w = 0, n
		if n > 0 {
			l.rerr = err
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// readLine returns the next line, decoded and without its terminator, and
// the number of raw bytes it took, terminator included. The line is valid
// until the next call. limit bounds the raw bytes of the line, terminator
// excluded; past it readLine returns errTooLong and must not be called
// again. A bad line (strict mode) is consumed whole and reported as errNUL
// or errCR. At EOF it returns io.EOF between lines and io.ErrUnexpectedEOF
// inside one; other read errors are returned as they are.
func (l *lineReader) readLine(limit int) (line []byte, raw int, err error) {
	for {
		if l.r == l.w {
			if err := l.fill(); err != nil {
				if err == io.EOF && l.midLine() {
					err = io.ErrUnexpectedEOF
				}
				return nil, 0, err
			}
		}
		for l.r < l.w {
			if l.tel == tsData && !l.cr && l.bad == nil {
				l.copyPlain(limit)
				if l.r == l.w {
					break
				}
			}
			c := l.buf[l.r]
			l.r++
			if c == '\n' && (l.tel == tsData || l.lfEnds) {
				line, raw, bad := l.line, l.n+1, l.bad
				l.line, l.n, l.cr, l.bad, l.tel = l.line[:0], 0, false, nil, tsData
				if bad != nil {
					return nil, raw, bad
				}
				return line, raw, nil
			}
			l.n++
			l.step(c)
			n := l.n
			if l.cr {
				n-- // a CR right before the LF is part of the terminator
			}
			if n > limit {
				return nil, 0, errTooLong
			}
		}
	}
}

// copyPlain is the fast path of readLine: it appends the run of bytes
// that need no decoding (no IAC, CR, LF or NUL) at buf[r:], as far as
// limit allows.
func (l *lineReader) copyPlain(limit int) {
	end := min(l.w, l.r+limit-l.n)
	i := l.r
	for i < end {
		if c := l.buf[i]; c == '\n' || c == '\r' || c == 0 || c == telIAC {
			break
		}
		i++
	}
	if i == l.r {
		return
	}
	run := l.buf[l.r:i]
	if len(l.line)+len(run) > cap(l.line) {
		l.grow(len(l.line) + len(run))
	}
	l.line = append(l.line, run...)
	l.n += len(run)
	l.r = i
}

// step feeds one raw byte, not a line-ending LF, to the Telnet decoder.
func (l *lineReader) step(c byte) {
	switch l.tel {
	case tsData:
		if c == telIAC {
			l.tel = tsIAC
			return
		}
		l.data(c)
	case tsIAC:
		switch c {
		case telIAC:
			l.tel = tsData
			l.data(telIAC)
		case telWILL, telWONT, telDO, telDONT:
			l.tel = tsOpt
		case telSB:
			l.tel = tsSB
		default: // IP, DM, AYT, NOP, … or a stray byte: dropped with the IAC
			l.tel = tsData
		}
	case tsOpt:
		l.tel = tsData
	case tsSB:
		if c == telIAC {
			l.tel = tsSBIAC
		}
	case tsSBIAC:
		if c == telSE {
			l.tel = tsData
		} else {
			l.tel = tsSB
		}
	}
}

// data handles one decoded data byte other than a line-ending LF.
func (l *lineReader) data(c byte) {
	if l.cr { // the CR is not followed by LF
		l.cr = false
		if l.strict && l.bad == nil {
			l.bad = errCR
		}
	}
	switch c {
	case '\r':
		l.cr = true
		return
	case 0:
		if l.strict && l.bad == nil {
			l.bad = errNUL
		}
		return
	}
	if l.bad != nil {
		return // the line is discarded anyway
	}
	if len(l.line) == cap(l.line) {
		l.grow(len(l.line) + 1)
	}
	l.line = append(l.line, c)
}

// grow enlarges line's capacity to at least need, never beyond max unless
// need is, so a reader holds at most max bytes of line however its lines
// come.
func (l *lineReader) grow(need int) {
	c := max(min(max(2*cap(l.line), 128), l.max), need)
	b := make([]byte, len(l.line), c)
	copy(b, l.line)
	l.line = b
}
