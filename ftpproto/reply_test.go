package ftpproto

import (
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// RFC 959 §4.2 multi-line vectors, after net/textproto's TestRFC959Lines.
var rfc959Tests = []struct {
	in       string
	wantCode int
	wantText string
}{
	{"230-Anonymous access granted, restrictions apply\n" +
		"Read the file README.txt,\n" +
		"230  please",
		230,
		"Anonymous access granted, restrictions apply\nRead the file README.txt,\n please",
	},
	{"230 Anonymous access granted, restrictions apply\n",
		230,
		"Anonymous access granted, restrictions apply",
	},
	{"400-A\n400-B\n400 C", 400, "A\nB\nC"},
	{"400-A\r\n400-B\r\n400 C\r\n", 400, "A\nB\nC"},
	// RFC 959's own example.
	{"123-First line\r\nSecond line\r\n  234 A line beginning with numbers\r\n123 The last line\r\n",
		123,
		"First line\nSecond line\n 234 A line beginning with numbers\nThe last line",
	},
}

func TestRFC959Lines(t *testing.T) {
	for i, tt := range rfc959Tests {
		r := NewReplyReader(strings.NewReader(tt.in+"\n200 FOLLOWING DATA\r\n"), 0, 0)
		rep, err := r.ReadReply()
		if err != nil {
			t.Errorf("#%d: ReadReply: %v", i, err)
			continue
		}
		if rep.Code != tt.wantCode {
			t.Errorf("#%d: code=%d, want %d", i, rep.Code, tt.wantCode)
		}
		if got := rep.Text(); got != tt.wantText {
			t.Errorf("#%d: text=%q, want %q", i, got, tt.wantText)
		}
		if next, err := r.ReadReply(); err != nil || next.Code != 200 {
			t.Errorf("#%d: next reply = %v, %v; want 200", i, next, err)
		}
	}
}

var readReplyTests = []struct {
	name              string
	in                string
	maxLine, maxReply int
	want              []Reply
	wantErr           error // after the replies
}{
	{"single", "220 ready\r\n", 0, 0, []Reply{{220, []string{"220 ready"}}}, io.EOF},
	{"bare code", "200\r\n", 0, 0, []Reply{{200, []string{"200"}}}, io.EOF},
	{"bare LF", "331 pw\n230 ok\n", 0, 0, []Reply{{331, []string{"331 pw"}}, {230, []string{"230 ok"}}}, io.EOF},
	{"multi-line, bare code last", "530-Login incorrect.\r\n530-Try again.\r\n530\r\n", 0, 0,
		[]Reply{{530, []string{"530-Login incorrect.", "530-Try again.", "530"}}}, io.EOF},
	{"middle lines with digits and other codes", "220-Welcome\r\n123-not the end\r\n220-x\r\n221 not the end either\r\n2200 nor this\r\n 220 nor this\r\n220 done\r\n", 0, 0,
		[]Reply{{220, []string{"220-Welcome", "123-not the end", "220-x", "221 not the end either", "2200 nor this", " 220 nor this", "220 done"}}}, io.EOF},
	{"empty middle line", "211-Features:\r\n\r\n AUTH TLS\r\n211 End\r\n", 0, 0,
		[]Reply{{211, []string{"211-Features:", "", " AUTH TLS", "211 End"}}}, io.EOF},
	{"120 then 220", "120 Service ready in 1 minute.\r\n220 Service ready.\r\n", 0, 0,
		[]Reply{{120, []string{"120 Service ready in 1 minute."}}, {220, []string{"220 Service ready."}}}, io.EOF},
	{"IAC before code", "\xff\xfb\x01\xff\xfd\x03220 ready\r\n", 0, 0, []Reply{{220, []string{"220 ready"}}}, io.EOF},
	{"IAC in middle line", "220-a\r\n\xff\xf1b\r\n220 c\r\n", 0, 0, []Reply{{220, []string{"220-a", "b", "220 c"}}}, io.EOF},
	{"doubled 0xFF", "257 \"/d\xff\xffir\" created\r\n", 0, 0, []Reply{{257, []string{"257 \"/d\xffir\" created"}}}, io.EOF},
	// proftpd echoes a username's 0xFF bytes undoubled: IAC SB in an echo
	// must not swallow the replies after it (they answer other commands).
	{"echoed IAC SB ends at its line", "331 Password required for a\xff\xfa\r\n530 Login incorrect.\r\n200 NOOP ok\r\n", 0, 0,
		[]Reply{{331, []string{"331 Password required for a"}}, {530, []string{"530 Login incorrect."}}, {200, []string{"200 NOOP ok"}}}, io.EOF},
	{"echoed IAC WILL and IAC alone end at their line", "331 for a\xff\xfb\n331 for b\xff\n230 ok\n", 0, 0,
		[]Reply{{331, []string{"331 for a"}}, {331, []string{"331 for b"}}, {230, []string{"230 ok"}}}, io.EOF},
	{"SB cut at LF, plain after", "220-a\xff\xfa\x18xx\r\n220-b\xff\xf0c\r\n220 d\r\n", 0, 0,
		[]Reply{{220, []string{"220-a", "220-bc", "220 d"}}}, io.EOF},
	{"lone CR and NUL dropped", "220 a\rb\x00c\r\n", 0, 0, []Reply{{220, []string{"220 abc"}}}, io.EOF},
	{"blank lines between replies", "\r\n220 a\r\n\n\r\n221 b\r\n", 0, 0, []Reply{{220, []string{"220 a"}}, {221, []string{"221 b"}}}, io.EOF},
	{"bounds: line of maxLine", "220 " + strings.Repeat("x", 6) + "\r\n", 10, 0, []Reply{{220, []string{"220 xxxxxx"}}}, io.EOF},

	// Errors.
	{"junk first line", "hello\r\n220 ok\r\n", 0, 0, nil, ProtocolError("")},
	{"code 600", "600 no\r\n", 0, 0, nil, ProtocolError("")},
	{"code 099", "099 no\r\n", 0, 0, nil, ProtocolError("")},
	{"code glued to text", "220ready\r\n", 0, 0, nil, ProtocolError("")},
	{"two digits", "22 x\r\n", 0, 0, nil, ProtocolError("")},
	{"leading space", " 220 x\r\n", 0, 0, nil, ProtocolError("")},
	{"line too long", "220 " + strings.Repeat("x", 7) + "\r\n", 10, 0, nil, ErrLineTooLong},
	{"reply too long", "220-" + strings.Repeat("x\r\n", 100) + "220 end\r\n", 100, 50, nil, ErrReplyTooLong},
	{"endless multi-line", "220-" + strings.Repeat("\r\n", 10000), 100, 1000, nil, ErrReplyTooLong},
	{"blank flood", strings.Repeat("\r\n", 10000), 100, 1000, nil, ErrReplyTooLong},
	{"reply of exactly maxReply", "220-ab\r\n220 c\r\n", 0, 15, []Reply{{220, []string{"220-ab", "220 c"}}}, io.EOF},
	{"reply of maxReply+1", "220-abc\r\n220 c\r\n", 0, 15, nil, ErrReplyTooLong},
	{"EOF inside multi-line", "220-a\r\n220-b\r\n", 0, 0, nil, io.ErrUnexpectedEOF},
	{"EOF inside a line", "220 a", 0, 0, nil, io.ErrUnexpectedEOF},
	{"empty", "", 0, 0, nil, io.EOF},
}

func TestReadReply(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"data+err": iotest.DataErrReader,
	}
	for _, tt := range readReplyTests {
		for rname, wrap := range readers {
			r := NewReplyReader(wrap(strings.NewReader(tt.in)), tt.maxLine, tt.maxReply)
			var got []Reply
			var err error
			for range 100 {
				var rep Reply
				if rep, err = r.ReadReply(); err != nil {
					break
				}
				got = append(got, rep)
			}
			if !slices.EqualFunc(got, tt.want, equalReply) {
				t.Errorf("%s (%s reader): replies %#v, want %#v", tt.name, rname, got, tt.want)
			}
			var pe ProtocolError
			switch {
			case errors.As(tt.wantErr, &pe):
				if !errors.As(err, &pe) {
					t.Errorf("%s (%s reader): err = %v, want a ProtocolError", tt.name, rname, err)
				}
			case !errors.Is(err, tt.wantErr):
				t.Errorf("%s (%s reader): err = %v, want %v", tt.name, rname, err, tt.wantErr)
			}
		}
	}
}

func equalReply(a, b Reply) bool { return a.Code == b.Code && slices.Equal(a.Lines, b.Lines) }

func TestReadReplyAfterProtocolError(t *testing.T) {
	r := NewReplyReader(strings.NewReader("hello\r\n220 ok\r\n"), 0, 0)
	if _, err := r.ReadReply(); err == nil {
		t.Fatal("junk line: no error")
	} else if !strings.HasPrefix(err.Error(), "ftpproto: ") {
		t.Errorf("error %q lacks the ftpproto: prefix", err)
	}
	if rep, err := r.ReadReply(); err != nil || rep.Code != 220 {
		t.Errorf("reply after the junk line = %v, %v; want 220", rep, err)
	}
}

func TestReadReplySticky(t *testing.T) {
	r := NewReplyReader(strings.NewReader("220 "+strings.Repeat("x", 100)+"\r\n220 ok\r\n"), 10, 0)
	for range 2 {
		if _, err := r.ReadReply(); err != ErrLineTooLong {
			t.Errorf("err = %v, want ErrLineTooLong", err)
		}
	}
}

func TestReadReplyEndless(t *testing.T) {
	src := &endless{}
	r := NewReplyReader(src, 1024, 4096)
	if _, err := r.ReadReply(); !errors.Is(err, ErrLineTooLong) && !errors.As(err, new(ProtocolError)) {
		t.Fatalf("err = %v", err)
	}
	if src.n > 1024+bufSize {
		t.Errorf("read %d bytes", src.n)
	}
}

func TestReadReplyRetry(t *testing.T) {
	src := &errAfter{data: "220-a\r\n220-b", err: os.ErrDeadlineExceeded}
	r := NewReplyReader(src, 0, 0)
	if _, err := r.ReadReply(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want os.ErrDeadlineExceeded", err)
	}
	src.data = "\r\n220 c\r\n"
	rep, err := r.ReadReply()
	if want := (Reply{220, []string{"220-a", "220-b", "220 c"}}); err != nil || !equalReply(rep, want) {
		t.Errorf("after retry: %#v, %v; want %#v", rep, err, want)
	}
}

func TestReadReplyZeroValue(t *testing.T) {
	var r ReplyReader
	if _, err := r.ReadReply(); err != io.EOF {
		t.Errorf("zero ReplyReader: err = %v, want io.EOF", err)
	}
}

func TestNewReply(t *testing.T) {
	tests := []struct {
		code int
		text string
		want []string
	}{
		{220, "ready", []string{"220 ready"}},
		{200, "", []string{"200 "}},
		{211, "Features:\n AUTH TLS\n UTF8\nEnd", []string{"211-Features:", " AUTH TLS", " UTF8", "211 End"}},
		{530, "a\r\nb", []string{"530-a", "530 b"}},
		{530, "a\n530\n530 x\n123-y\n 123 z\n1234\n\nb", []string{"530-a", " 530", " 530 x", " 123-y", "  123 z", "1234", "", "530 b"}},
		{250, "a\n", []string{"250-a", "250 "}},
		{257, "\"/d\xffir\" created", []string{"257 \"/d\xffir\" created"}},
		{220, "a\x00b", []string{"220 ab"}},
	}
	for _, tt := range tests {
		rep := NewReply(tt.code, tt.text)
		if rep.Code != tt.code || !slices.Equal(rep.Lines, tt.want) {
			t.Errorf("NewReply(%d, %q) = %q, want %q", tt.code, tt.text, rep.Lines, tt.want)
		}
		// Round trip through the wire.
		wire := rep.AppendWire(nil)
		got, err := NewReplyReader(strings.NewReader(string(wire)), 0, 0).ReadReply()
		if err != nil || !equalReply(got, rep) {
			t.Errorf("re-read of %q = %#v, %v; want %#v", wire, got, err, rep)
		}
		if want := strings.NewReplacer("\r", "", "\x00", "").Replace(tt.text); got.Text() != want {
			t.Errorf("NewReply(%d, %q).Text() = %q, want %q", tt.code, tt.text, got.Text(), want)
		}
	}
}

func TestReplyAppendWire(t *testing.T) {
	tests := []struct {
		rep  Reply
		want string
	}{
		{Reply{220, []string{"220 ready"}}, "220 ready\r\n"},
		{Reply{211, []string{"211-a", " b", "211 c"}}, "211-a\r\n b\r\n211 c\r\n"},
		{Reply{257, []string{"257 \"\xff\""}}, "257 \"\xff\xff\"\r\n"},
		{Reply{220, []string{"220 a\r\n220 b"}}, "220 a220 b\r\n"},
		{Reply{421, nil}, "421 \r\n"},
	}
	for _, tt := range tests {
		if got := string(tt.rep.AppendWire(nil)); got != tt.want {
			t.Errorf("%#v.AppendWire = %q, want %q", tt.rep, got, tt.want)
		}
	}
}

func TestReplyText(t *testing.T) {
	tests := []struct {
		rep  Reply
		want string
	}{
		{Reply{227, []string{"227 Entering Passive Mode (127,0,0,1,195,80)."}}, "Entering Passive Mode (127,0,0,1,195,80)."},
		{Reply{200, []string{"200"}}, ""},
		{Reply{530, []string{"530-a", "530-b", "530"}}, "a\nb\n"},
		{Reply{220, []string{"220-a", "221-b", "220 c"}}, "a\n221-b\nc"},
		{Reply{}, ""},
	}
	for _, tt := range tests {
		if got := tt.rep.Text(); got != tt.want {
			t.Errorf("%#v.Text() = %q, want %q", tt.rep, got, tt.want)
		}
	}
}

func TestReplyClass(t *testing.T) {
	for _, tt := range []struct {
		code                  int
		positive, preliminary bool
	}{
		{120, false, true}, {150, false, true}, {200, true, false}, {230, true, false},
		{299, true, false}, {331, false, false}, {421, false, false}, {530, false, false},
	} {
		rep := Reply{Code: tt.code}
		if rep.Positive() != tt.positive || rep.Preliminary() != tt.preliminary {
			t.Errorf("%d: Positive=%v Preliminary=%v, want %v %v", tt.code, rep.Positive(), rep.Preliminary(), tt.positive, tt.preliminary)
		}
	}
}

func BenchmarkReadReply(b *testing.B) {
	data := []byte("220 FTP server ready.\r\n331 Please specify the password.\r\n" +
		"230-Welcome\r\n230-to the server\r\n230 Login successful.\r\n" +
		"227 Entering Passive Mode (127,0,0,1,195,80).\r\n150 Opening BINARY mode data connection.\r\n226 Transfer complete.\r\n")
	r := NewReplyReader(&repeat{data: data}, DefaultMaxLine, DefaultMaxReply)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)) / 6)
	for b.Loop() {
		if _, err := r.ReadReply(); err != nil {
			b.Fatal(err)
		}
	}
}
