package ftpproto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"
)

// cmdResult is one result of ReadCommand.
type cmdResult struct {
	cmd Command
	err error // compared with errors.Is
}

// readCommands calls ReadCommand until it returns an error other than
// ErrBadLine, and returns every result, the last error included.
func readCommands(r *CommandReader) []cmdResult {
	var out []cmdResult
	for range 1000 {
		c, err := r.ReadCommand()
		out = append(out, cmdResult{c, err})
		if err != nil && !errors.Is(err, ErrBadLine) {
			break
		}
	}
	return out
}

func (c cmdResult) String() string {
	if c.err != nil {
		return "error " + c.err.Error()
	}
	return fmt.Sprintf("%q", c.cmd.Verb+"|"+c.cmd.Arg)
}

func ok(verb, arg string) cmdResult { return cmdResult{cmd: Command{Verb: verb, Arg: arg}} }
func fail(err error) cmdResult      { return cmdResult{err: err} }

var eof = fail(io.EOF)

var readCommandTests = []struct {
	name    string
	in      string
	maxLine int
	want    []cmdResult
}{
	{"CRLF", "USER bob\r\n", 0, []cmdResult{ok("USER", "bob"), eof}},
	{"bare LF", "USER bob\n", 0, []cmdResult{ok("USER", "bob"), eof}},
	{"LF then CRLF is two commands", "USER a\nPASS b\r\n", 0, []cmdResult{ok("USER", "a"), ok("PASS", "b"), eof}},
	{"pipelined", "USER a\r\nPASS b\r\nSYST\r\n", 0, []cmdResult{ok("USER", "a"), ok("PASS", "b"), ok("SYST", ""), eof}},
	{"lower case verb", "user bob\r\n", 0, []cmdResult{ok("USER", "bob"), eof}},
	{"mixed case verb, arg case kept", "uSeR BoB\r\n", 0, []cmdResult{ok("USER", "BoB"), eof}},
	{"leading spaces", "  PASS x\r\n", 0, []cmdResult{ok("PASS", "x"), eof}},
	{"leading tab", "\t PASS x\r\n", 0, []cmdResult{ok("PASS", "x"), eof}},
	{"two spaces after verb", "PASS  two spaces\r\n", 0, []cmdResult{ok("PASS", " two spaces"), eof}},
	{"trailing spaces kept", "STOR a b  \r\n", 0, []cmdResult{ok("STOR", "a b  "), eof}},
	{"verb and one space", "NOOP \r\n", 0, []cmdResult{ok("NOOP", ""), eof}},
	{"tab is not a separator", "USER\tbob\r\nNOOP\r\n", 0, []cmdResult{fail(ErrBadLine), ok("NOOP", ""), eof}},
	{"tab in arg kept", "STOR a\tb\r\n", 0, []cmdResult{ok("STOR", "a\tb"), eof}},
	{"invalid UTF-8 arg", "RETR \xc3\x28\r\n", 0, []cmdResult{ok("RETR", "\xc3\x28"), eof}},
	{"punctuation verb", "X-Y! z\r\n", 0, []cmdResult{ok("X-Y!", "z"), eof}},
	{"non-ASCII verb", "US\xc9R bob\r\nNOOP\r\n", 0, []cmdResult{fail(ErrBadLine), ok("NOOP", ""), eof}},
	{"control byte in verb", "US\x01R bob\r\n", 0, []cmdResult{fail(ErrBadLine), eof}},
	{"blank lines skipped", "\r\n\n  \r\n\t\nSYST\r\n\r\n", 0, []cmdResult{ok("SYST", ""), eof}},
	{"NUL then next line", "USER a\x00b\r\nPASS x\r\n", 0, []cmdResult{fail(ErrBadLine), ok("PASS", "x"), eof}},
	{"NUL in verb", "\x00USER a\r\nQUIT\r\n", 0, []cmdResult{fail(ErrBadLine), ok("QUIT", ""), eof}},
	{"bare CR inside", "USER a\rPASS b\r\nQUIT\r\n", 0, []cmdResult{fail(ErrBadLine), ok("QUIT", ""), eof}},
	{"CR CR LF", "USER a\r\r\nQUIT\r\n", 0, []cmdResult{fail(ErrBadLine), ok("QUIT", ""), eof}},
	{"CR at start", "\rUSER a\r\nQUIT\r\n", 0, []cmdResult{fail(ErrBadLine), ok("QUIT", ""), eof}},

	// Telnet.
	{"IP DM before ABOR", "\xff\xf4\xff\xf2ABOR\r\n", 0, []cmdResult{ok("ABOR", ""), eof}},
	{"WILL and DO", "\xff\xfb\x01\xff\xfd\x03NOOP\r\n", 0, []cmdResult{ok("NOOP", ""), eof}},
	{"WONT DONT mid line", "US\xff\xfc\x01ER a\xff\xfe\x22b\r\n", 0, []cmdResult{ok("USER", "ab"), eof}},
	{"subnegotiation", "\xff\xfa\x18\x00xterm\n\r\xff\xff\xff\xf0SYST\r\n", 0, []cmdResult{ok("SYST", ""), eof}},
	{"IAC x inside SB stays in SB", "\xff\xfa\x01\xff\x30\nX\xff\xf0NOOP\r\n", 0, []cmdResult{ok("NOOP", ""), eof}},
	{"IAC IAC inside SB stays in SB", "\xff\xfa\x01\xff\xff\xf0\nX\xff\xf0NOOP\r\n", 0, []cmdResult{ok("NOOP", ""), eof}},
	{"IAC IAC in arg", "RETR a\xff\xffb\r\n", 0, []cmdResult{ok("RETR", "a\xffb"), eof}},
	{"IAC NOP between CR and LF", "NOOP\r\xff\xf1\n", 0, []cmdResult{ok("NOOP", ""), eof}},
	{"IAC IAC in verb is a bad verb", "A\xff\xffB\r\n", 0, []cmdResult{fail(ErrBadLine), eof}},
	{"only Telnet then EOF", "NOOP\r\n\xff\xf1", 0, []cmdResult{ok("NOOP", ""), eof}},

	// Bounds: maxLine counts bytes as received, terminator excluded.
	{"maxLine bytes CRLF", "USER " + strings.Repeat("a", 5) + "\r\n", 10, []cmdResult{ok("USER", "aaaaa"), eof}},
	{"maxLine bytes LF", "USER " + strings.Repeat("a", 5) + "\n", 10, []cmdResult{ok("USER", "aaaaa"), eof}},
	{"maxLine+1", "USER " + strings.Repeat("a", 6) + "\r\n", 10, []cmdResult{fail(ErrLineTooLong)}},
	{"too long is sticky", "USER " + strings.Repeat("a", 6) + "\r\nNOOP\r\n", 10, []cmdResult{fail(ErrLineTooLong)}},
	{"Telnet bytes count", "\xff\xf1USER aaaa\r\n", 10, []cmdResult{fail(ErrLineTooLong)}},
	{"too long and bad", "USER\x00" + strings.Repeat("a", 20) + "\r\n", 10, []cmdResult{fail(ErrLineTooLong)}},
	{"blank line flood", strings.Repeat("\r\n", 6) + "NOOP\r\n", 10, []cmdResult{fail(ErrLineTooLong)}},
	{"a few blank lines", strings.Repeat("\r\n", 2) + "NOOP\r\n", 10, []cmdResult{ok("NOOP", ""), eof}},
	{"endless subnegotiation", "\xff\xfa" + strings.Repeat("\n", 20), 10, []cmdResult{fail(ErrLineTooLong)}},

	// EOF.
	{"empty", "", 0, []cmdResult{eof}},
	{"EOF mid line", "USER bob", 0, []cmdResult{fail(io.ErrUnexpectedEOF)}},
	{"EOF after CR", "USER bob\r", 0, []cmdResult{fail(io.ErrUnexpectedEOF)}},
	{"EOF mid IAC", "NOOP\r\n\xff", 0, []cmdResult{ok("NOOP", ""), fail(io.ErrUnexpectedEOF)}},
	{"EOF in blank line", "NOOP\r\n  ", 0, []cmdResult{ok("NOOP", ""), fail(io.ErrUnexpectedEOF)}},
}

func TestReadCommand(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"data+err": iotest.DataErrReader,
	}
	for _, tt := range readCommandTests {
		for rname, wrap := range readers {
			r := NewCommandReader(wrap(strings.NewReader(tt.in)), tt.maxLine)
			got := readCommands(r)
			if !equalResults(got, tt.want) {
				t.Errorf("%s (%s reader): ReadCommand(%q) =\n\t%v\nwant\n\t%v", tt.name, rname, tt.in, got, tt.want)
			}
		}
	}
}

func equalResults(got, want []cmdResult) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].cmd != want[i].cmd {
			return false
		}
		if (got[i].err == nil) != (want[i].err == nil) || (want[i].err != nil && !errors.Is(got[i].err, want[i].err)) {
			return false
		}
	}
	return true
}

// endless yields 'A' forever.
type endless struct{ n int }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	e.n += len(p)
	return len(p), nil
}

func TestReadCommandEndlessLine(t *testing.T) {
	src := &endless{}
	r := NewCommandReader(src, DefaultMaxLine)
	if _, err := r.ReadCommand(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("ReadCommand on an endless line: err = %v, want ErrLineTooLong", err)
	}
	if src.n > DefaultMaxLine+bufSize {
		t.Errorf("read %d bytes of an endless line, want at most %d", src.n, DefaultMaxLine+bufSize)
	}
	if c := cap(r.lr.line); c > DefaultMaxLine+1 {
		t.Errorf("line buffer capacity %d, want at most %d", c, DefaultMaxLine+1)
	}
}

func TestReadCommandMiBLine(t *testing.T) {
	in := bytes.Repeat([]byte{'A'}, 1<<20)
	r := NewCommandReader(bytes.NewReader(in), 2048)
	allocs := testing.AllocsPerRun(1, func() {
		r := NewCommandReader(bytes.NewReader(in), 2048)
		r.ReadCommand()
	})
	if allocs > 10 {
		t.Errorf("%v allocations for a 1 MiB line, want a few", allocs)
	}
	if _, err := r.ReadCommand(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("err = %v, want ErrLineTooLong", err)
	}
}

// errAfter returns data, then err.
type errAfter struct {
	data string
	err  error
}

func (e *errAfter) Read(p []byte) (int, error) {
	if e.data == "" {
		return 0, e.err
	}
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, nil
}

func TestReadCommandReadError(t *testing.T) {
	src := &errAfter{data: "NOOP\r\nUSER b", err: os.ErrDeadlineExceeded}
	r := NewCommandReader(src, 0)
	if c, err := r.ReadCommand(); err != nil || c.Verb != "NOOP" {
		t.Fatalf("ReadCommand = %v, %v; want NOOP", c, err)
	}
	_, err := r.ReadCommand()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want os.ErrDeadlineExceeded", err)
	}
	// After a timeout the partial line is kept: a retry finishes it.
	src.data = "ob\r\n"
	if c, err := r.ReadCommand(); err != nil || c != (Command{"USER", "bob"}) {
		t.Fatalf("ReadCommand after retry = %v, %v; want USER bob", c, err)
	}
}

func TestReadCommandZeroValue(t *testing.T) {
	var r CommandReader
	if _, err := r.ReadCommand(); err != io.EOF {
		t.Errorf("zero CommandReader: err = %v, want io.EOF", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestReadCommandNoProgress(t *testing.T) {
	r := NewCommandReader(zeroReader{}, 0)
	if _, err := r.ReadCommand(); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("err = %v, want io.ErrNoProgress", err)
	}
}

func TestBuffered(t *testing.T) {
	r := NewCommandReader(strings.NewReader("AUTH TLS\r\nUSER evil\r\n"), 0)
	c, err := r.ReadCommand()
	if err != nil || c != (Command{"AUTH", "TLS"}) {
		t.Fatalf("ReadCommand = %v, %v", c, err)
	}
	if got, want := r.Buffered(), len("USER evil\r\n"); got != want {
		t.Errorf("Buffered after AUTH TLS with injected plaintext = %d, want %d", got, want)
	}
	r.ReadCommand()
	if got := r.Buffered(); got != 0 {
		t.Errorf("Buffered at the end = %d, want 0", got)
	}

	r = NewCommandReader(iotest.OneByteReader(strings.NewReader("AUTH TLS\r\n\x16\x03\x01")), 0)
	r.ReadCommand()
	if got := r.Buffered(); got != 0 {
		t.Errorf("Buffered with nothing pipelined = %d, want 0", got)
	}
}

func TestCommandAppendWire(t *testing.T) {
	tests := []struct {
		cmd  Command
		want string
	}{
		{Command{"USER", "bob"}, "USER bob\r\n"},
		{Command{"PASV", ""}, "PASV\r\n"},
		{Command{"PASS", " two spaces "}, "PASS  two spaces \r\n"},
		{Command{"RETR", "a\xffb"}, "RETR a\xff\xffb\r\n"},
		{Command{"USER", "a\r\nDELE x"}, "USER aDELE x\r\n"},
		{Command{"USER", "a\x00b"}, "USER ab\r\n"},
		{Command{"US ER", "x"}, "USER x\r\n"},
		{Command{}, "\r\n"},
	}
	for _, tt := range tests {
		if got := string(tt.cmd.AppendWire(nil)); got != tt.want {
			t.Errorf("%#v.AppendWire = %q, want %q", tt.cmd, got, tt.want)
		}
	}
	// AppendWire appends.
	if got := string(Command{"NOOP", ""}.AppendWire([]byte("x"))); got != "xNOOP\r\n" {
		t.Errorf("AppendWire to a buffer = %q", got)
	}
}

func TestIACRoundTrip(t *testing.T) {
	r := NewCommandReader(strings.NewReader("RETR \xff\xffname\xff\xff\r\n"), 0)
	c, err := r.ReadCommand()
	if err != nil || c.Arg != "\xffname\xff" {
		t.Fatalf("ReadCommand = %q, %v; want arg \\xffname\\xff", c.Arg, err)
	}
	if got, want := string(c.AppendWire(nil)), "RETR \xff\xffname\xff\xff\r\n"; got != want {
		t.Errorf("AppendWire = %q, want %q", got, want)
	}
}

func TestCommandString(t *testing.T) {
	tests := []struct {
		cmd  Command
		want string
	}{
		{Command{"USER", "bob"}, "USER bob"},
		{Command{"PASS", "hunter2"}, "PASS ****"},
		{Command{"pass", "hunter2"}, "pass ****"},
		{Command{"ACCT", "secret"}, "ACCT ****"},
		{Command{"ADAT", "dG9rZW4="}, "ADAT ****"},
		{Command{"PASS", ""}, "PASS"},
		{Command{"PASV", ""}, "PASV"},
		{Command{"USER", "a\r\nb"}, "USER ab"},
	}
	for _, tt := range tests {
		if got := tt.cmd.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.cmd, got, tt.want)
		}
	}
}

// repeat yields data over and over.
type repeat struct {
	data []byte
	off  int
}

func (r *repeat) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.data[r.off:])
		n += k
		r.off = (r.off + k) % len(r.data)
	}
	return n, nil
}

func BenchmarkReadCommand(b *testing.B) {
	data := []byte("USER anonymous\r\nPASS guest@example.com\r\nTYPE I\r\nPASV\r\nRETR /pub/some/file.tar.gz\r\n")
	r := NewCommandReader(&repeat{data: data}, DefaultMaxLine)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)) / 5)
	for b.Loop() {
		if _, err := r.ReadCommand(); err != nil {
			b.Fatal(err)
		}
	}
}
