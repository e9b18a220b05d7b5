package ftpproto_test

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ftpguard/ftpguard/ftpproto"
)

// A bare LF ends a line, so the proxy forwards two canonical commands where
// a daemon that splits only at CRLF would have seen one: no smuggling.
func ExampleCommandReader() {
	r := ftpproto.NewCommandReader(strings.NewReader("user bob\nPASS secret\r\nRETR a\x00b\r\n\xff\xf4\xff\xf2ABOR\r\n"), ftpproto.DefaultMaxLine)
	for {
		cmd, err := r.ReadCommand()
		if errors.Is(err, ftpproto.ErrBadLine) {
			fmt.Println("500:", err)
			continue
		}
		if err == io.EOF {
			break
		}
		fmt.Printf("%s\t%q\n", cmd, cmd.AppendWire(nil))
	}
	// Output:
	// USER bob	"USER bob\r\n"
	// PASS ****	"PASS secret\r\n"
	// 500: ftpproto: malformed line: NUL byte inside line
	// ABOR	"ABOR\r\n"
}

func ExampleReplyReader() {
	r := ftpproto.NewReplyReader(strings.NewReader("530-Login incorrect.\r\n530-Try again.\r\n530\r\n"), 0, 0)
	rep, err := r.ReadReply()
	fmt.Println(rep.Code, rep.Positive(), len(rep.Lines), err)
	fmt.Printf("%q\n", rep.Text())
	// Output:
	// 530 false 3 <nil>
	// "Login incorrect.\nTry again.\n"
}

func ExampleParsePASV() {
	ap, err := ftpproto.ParsePASV("Entering Passive Mode (0,0,0,0,195,80).")
	if errors.Is(err, ftpproto.ErrUnspecifiedAddr) {
		fmt.Println("use the control connection's IP with port", ap.Port())
	}
	// Output: use the control connection's IP with port 50000
}

func ExampleNewReply() {
	rep := ftpproto.NewReply(211, "Features:\n AUTH TLS\n UTF8\nEnd")
	fmt.Printf("%q\n", rep.AppendWire(nil))
	// Output: "211-Features:\r\n AUTH TLS\r\n UTF8\r\n211 End\r\n"
}
