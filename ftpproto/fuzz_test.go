package ftpproto

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzReadCommand checks that every command read is canonical (upper-case
// verb of printable ASCII, no CR, LF or NUL anywhere), that its wire form
// reads back as the same command within the same bound, that reading byte
// by byte gives the same results as reading whole, and, with a bound too
// large to matter, that the results agree with a simple reference model.
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"USER a\r\nPASS b\r\n",
		"USER a\nPASS b\r\n",
		"\xff\xf4\xff\xf2ABOR\r\n",
		"RETR a\xff\xffb\r\n",
		"\xff\xfa\x18\x00xterm\n\xff\xf0SYST\r\n",
		"user  bob \r\nPA\x00SS x\r\nQUIT\r",
		"  \t\r\nNOOP\rX\n",
	} {
		f.Add([]byte(s), uint8(32))
	}
	f.Fuzz(func(t *testing.T, data []byte, max uint8) {
		maxLine := int(max) + 1
		whole := readCommands(NewCommandReader(bytes.NewReader(data), maxLine))
		oneByte := readCommands(NewCommandReader(iotest.OneByteReader(bytes.NewReader(data)), maxLine))
		if !sameResults(whole, oneByte) {
			t.Fatalf("whole read %v, byte by byte %v", whole, oneByte)
		}
		for i, res := range whole {
			switch err := res.err; {
			case err == nil:
			case errors.Is(err, ErrBadLine):
				continue
			case i != len(whole)-1:
				t.Fatalf("result %d of %d is a final error: %v", i, len(whole), err)
			case err == io.EOF || err == io.ErrUnexpectedEOF || err == ErrLineTooLong:
				continue
			default:
				t.Fatalf("unexpected error %v", err)
			}
			checkCommand(t, res.cmd, maxLine)
		}

		big := len(data) + 1
		got := readCommands(NewCommandReader(bytes.NewReader(data), big))
		if want := referenceCommands(data); !sameResults(got, want) {
			t.Fatalf("ReadCommand(%q) = %v, reference model %v", data, got, want)
		}
	})
}

// sameResults is like equalResults but needs the errors to be the same
// sentinel.
func sameResults(a, b []cmdResult) bool {
	return slices.EqualFunc(a, b, func(x, y cmdResult) bool {
		return x.cmd == y.cmd && sentinel(x.err) == sentinel(y.err)
	})
}

func sentinel(err error) error {
	for _, s := range []error{ErrBadLine, ErrLineTooLong, io.ErrUnexpectedEOF, io.EOF} {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}

func checkCommand(t *testing.T, c Command, maxLine int) {
	t.Helper()
	if c.Verb == "" {
		t.Fatalf("empty verb in %#v", c)
	}
	for i := 0; i < len(c.Verb); i++ {
		if b := c.Verb[i]; b < 0x21 || b > 0x7e || ('a' <= b && b <= 'z') {
			t.Fatalf("verb %q has byte %#x", c.Verb, b)
		}
	}
	if strings.ContainsAny(c.Arg, "\r\n\x00") {
		t.Fatalf("arg %q holds CR, LF or NUL", c.Arg)
	}
	wire := c.AppendWire(nil)
	r := NewCommandReader(bytes.NewReader(wire), maxLine)
	back, err := r.ReadCommand()
	if err != nil || back != c {
		t.Fatalf("wire %q of %#v reads back as %#v, %v", wire, c, back, err)
	}
	if _, err := r.ReadCommand(); err != io.EOF {
		t.Fatalf("wire %q of %#v: second read err = %v, want io.EOF", wire, c, err)
	}
}

// referenceCommands is an unbounded model of ReadCommand: decode Telnet
// over the whole input, then split lines.
func referenceCommands(data []byte) []cmdResult {
	var dec []byte
	st := tsData
	for _, c := range data {
		switch st {
		case tsData:
			if c == telIAC {
				st = tsIAC
			} else {
				dec = append(dec, c)
			}
		case tsIAC:
			st = tsData
			switch c {
			case telIAC:
				dec = append(dec, c)
			case telWILL, telWONT, telDO, telDONT:
				st = tsOpt
			case telSB:
				st = tsSB
			}
		case tsOpt:
			st = tsData
		case tsSB:
			if c == telIAC {
				st = tsSBIAC
			}
		case tsSBIAC:
			st = tsSB
			if c == telSE {
				st = tsData
			}
		}
	}
	lines := bytes.Split(dec, []byte("\n"))
	last := lines[len(lines)-1]
	lines = lines[:len(lines)-1]
	var out []cmdResult
	for _, line := range lines {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if bytes.ContainsAny(line, "\r\x00") {
			out = append(out, fail(ErrBadLine))
			continue
		}
		line = bytes.TrimLeft(line, " \t")
		if len(line) == 0 {
			continue
		}
		verb, arg, _ := bytes.Cut(line, []byte(" "))
		if bytes.ContainsFunc(verb, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			out = append(out, fail(ErrBadLine))
			continue
		}
		out = append(out, ok(strings.ToUpper(string(verb)), string(arg)))
	}
	if len(last) > 0 || st != tsData {
		return append(out, fail(io.ErrUnexpectedEOF))
	}
	return append(out, eof)
}

// FuzzReadReply checks that every reply read is well formed, that its wire
// form reads back as the same reply, that reading byte by byte gives the
// same results as reading whole, and that NewReply and Text are inverses.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"220 ready\r\n",
		"530-Login incorrect.\r\n530-Try again.\r\n530\r\n",
		"220-Welcome\r\n123-x\r\n221 y\r\n 220 z\r\n220 done\r\n",
		"\xff\xfb\x01220 ready\r\n257 \"/d\xff\xffir\"\n",
		"120 wait\r\n220 ok\r\nhello\r\n",
		"211-Features:\r\n AUTH TLS\r\n UTF8\r\n211 End\r\n",
	} {
		f.Add([]byte(s), uint8(64), uint16(256))
	}
	f.Fuzz(func(t *testing.T, data []byte, ml uint8, mr uint16) {
		maxLine, maxReply := int(ml)+1, int(mr)+1
		whole, errW := readReplies(NewReplyReader(bytes.NewReader(data), maxLine, maxReply))
		oneByte, errO := readReplies(NewReplyReader(iotest.OneByteReader(bytes.NewReader(data)), maxLine, maxReply))
		if !slices.EqualFunc(whole, oneByte, equalReply) || errW != errO {
			t.Fatalf("whole read %#v, %v; byte by byte %#v, %v", whole, errW, oneByte, errO)
		}
		switch errW {
		case io.EOF, io.ErrUnexpectedEOF, ErrLineTooLong, ErrReplyTooLong:
		default:
			t.Fatalf("unexpected final error %v", errW)
		}
		for _, rep := range whole {
			checkReply(t, rep)
		}

		// NewReply and Text are inverses for any text without CR or NUL.
		text := dropCRNUL(string(data))
		rep := NewReply(250, text)
		checkReply(t, rep)
		if got := rep.Text(); got != text {
			t.Fatalf("NewReply(250, %q).Text() = %q", text, got)
		}
	})
}

// readReplies reads replies until an error other than a ProtocolError.
func readReplies(r *ReplyReader) ([]Reply, error) {
	var out []Reply
	for {
		rep, err := r.ReadReply()
		if errors.As(err, new(ProtocolError)) {
			out = append(out, Reply{Code: -1}) // mark the error's place
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, rep)
	}
}

func checkReply(t *testing.T, rep Reply) {
	t.Helper()
	if rep.Code == -1 {
		return
	}
	if rep.Code < 100 || rep.Code > 599 || len(rep.Lines) == 0 {
		t.Fatalf("bad reply %#v", rep)
	}
	for _, line := range rep.Lines {
		if strings.ContainsAny(line, "\r\n\x00") {
			t.Fatalf("reply %#v: line holds CR, LF or NUL", rep)
		}
	}
	code, ok := parseCode([]byte(rep.Lines[0]))
	if !ok || code != rep.Code {
		t.Fatalf("reply %#v: first line does not begin with its code", rep)
	}
	end := func(line string) bool {
		c, ok := parseCode([]byte(line))
		return ok && c == rep.Code && (len(line) == 3 || line[3] == ' ')
	}
	last := len(rep.Lines) - 1
	if last == 0 {
		if !end(rep.Lines[0]) {
			t.Fatalf("single-line reply %#v does not end", rep)
		}
	} else {
		if rep.Lines[0][3] != '-' || !end(rep.Lines[last]) {
			t.Fatalf("multi-line reply %#v: bad first or last line", rep)
		}
		for _, line := range rep.Lines[1:last] {
			if end(line) {
				t.Fatalf("multi-line reply %#v ends early", rep)
			}
		}
	}

	wire := rep.AppendWire(nil)
	r := NewReplyReader(bytes.NewReader(wire), len(wire), len(wire))
	back, err := r.ReadReply()
	if err != nil || !equalReply(back, rep) {
		t.Fatalf("wire %q of %#v reads back as %#v, %v", wire, rep, back, err)
	}
	if _, err := r.ReadReply(); err != io.EOF {
		t.Fatalf("wire %q: second read err = %v, want io.EOF", wire, err)
	}
	if text := rep.Text(); NewReply(rep.Code, text).Text() != text {
		t.Fatalf("reply %#v: NewReply(code, Text()).Text() = %q, want %q", rep, NewReply(rep.Code, text).Text(), text)
	}
}

func FuzzParsePASV(f *testing.F) {
	for _, s := range []string{
		"Entering Passive Mode (127,0,0,1,195,80).",
		"227 =127,0,0,1,195,80",
		"Entering Passive Mode (0,0,0,0,195,80).",
		"Entering Passive Mode (127,0,0,256,195,80).",
		"(1,2,3) (10,0,0,1,0,1,2)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ap, err := ParsePASV(text)
		if errors.Is(err, ErrUnspecifiedAddr) {
			if !ap.Addr().IsUnspecified() || !ap.Addr().Is4() || ap.Port() == 0 {
				t.Fatalf("ParsePASV(%q) = %v, %v", text, ap, err)
			}
			return
		}
		if err != nil {
			if ap.IsValid() || !errors.As(err, new(ProtocolError)) {
				t.Fatalf("ParsePASV(%q) = %v, %v", text, ap, err)
			}
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 || ap.Addr().IsUnspecified() {
			t.Fatalf("ParsePASV(%q) = %v", text, ap)
		}
		rep, err := FormatPASV(ap)
		if err != nil {
			t.Fatalf("FormatPASV(%v): %v", ap, err)
		}
		for _, s := range []string{rep.Text(), rep.Lines[0]} {
			if back, err := ParsePASV(s); err != nil || back != ap {
				t.Fatalf("ParsePASV(%q) = %v, %v; want %v", s, back, err, ap)
			}
		}
	})
}

func FuzzParseEPSV(f *testing.F) {
	for _, s := range []string{
		"Entering Extended Passive Mode (|||6446|)",
		"229 Entering Extended Passive Mode (!!!6446!)",
		"Entering Extended Passive Mode (|||6446!)",
		"(EPSV) (|||0|) (|||21|)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		port, err := ParseEPSV(text)
		if err != nil {
			if port != 0 || !errors.As(err, new(ProtocolError)) {
				t.Fatalf("ParseEPSV(%q) = %d, %v", text, port, err)
			}
			return
		}
		if port == 0 {
			t.Fatalf("ParseEPSV(%q) = port 0", text)
		}
		rep := FormatEPSV(port)
		for _, s := range []string{rep.Text(), rep.Lines[0]} {
			if back, err := ParseEPSV(s); err != nil || back != port {
				t.Fatalf("ParseEPSV(%q) = %d, %v; want %d", s, back, err, port)
			}
		}
	})
}

func FuzzParsePORT(f *testing.F) {
	for _, s := range []string{
		"127,0,0,1,195,80",
		" 010,000,000,001,004,001 ",
		"127,0,0,256,195,80",
		"127,0,0,1,0,0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParsePORT(arg)
		if err != nil {
			if ap.IsValid() || !errors.As(err, new(ProtocolError)) {
				t.Fatalf("ParsePORT(%q) = %v, %v", arg, ap, err)
			}
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("ParsePORT(%q) = %v", arg, ap)
		}
		s, err := FormatPORT(ap)
		if err != nil {
			t.Fatalf("FormatPORT(%v): %v", ap, err)
		}
		if back, err := ParsePORT(s); err != nil || back != ap {
			t.Fatalf("ParsePORT(%q) = %v, %v; want %v", s, back, err, ap)
		}
	})
}

func FuzzParseEPRT(f *testing.F) {
	for _, s := range []string{
		"|1|132.235.1.2|6275|",
		"|2|1080::8:800:200C:417A|5282|",
		"!2!::ffff:10.0.0.1!1025!",
		"|3|132.235.1.2|6275|",
		"|2|fe80::1%eth0|6275|",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParseEPRT(arg)
		if err != nil {
			if ap.IsValid() || (!errors.Is(err, ErrUnsupportedFamily) && !errors.As(err, new(ProtocolError))) {
				t.Fatalf("ParseEPRT(%q) = %v, %v", arg, ap, err)
			}
			return
		}
		a := ap.Addr()
		if ap.Port() == 0 || a.Zone() != "" || a.Is4In6() || !(a.Is4() || a.Is6()) {
			t.Fatalf("ParseEPRT(%q) = %v", arg, ap)
		}
		s := FormatEPRT(ap)
		if back, err := ParseEPRT(s); err != nil || back != ap {
			t.Fatalf("ParseEPRT(%q) = %v, %v; want %v", s, back, err, ap)
		}
	})
}
