package ftpproto

import (
	"errors"
	"net/netip"
	"testing"
)

var errAny = errors.New("any error")

// checkErr reports whether err matches want: nil, errAny for any error, a
// ProtocolError("") for any ProtocolError, or a sentinel for errors.Is.
func checkErr(err, want error) bool {
	var pe ProtocolError
	switch {
	case want == nil:
		return err == nil
	case want == errAny:
		return err != nil
	case errors.As(want, &pe):
		return errors.As(err, &pe)
	}
	return errors.Is(err, want)
}

var protoErr = ProtocolError("")

func TestParsePASV(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		text string
		want netip.AddrPort
		err  error
	}{
		{"Entering Passive Mode (127,0,0,1,195,80).", ap("127.0.0.1:50000"), nil},
		{"227 Entering Passive Mode (127,0,0,1,195,80).", ap("127.0.0.1:50000"), nil},
		{"227 =127,0,0,1,195,80", ap("127.0.0.1:50000"), nil},
		{"227 Entering Passive Mode 10,1,2,3,0,21", ap("10.1.2.3:21"), nil},
		{"Entering Passive Mode (192,168,001,010,4,1)", ap("192.168.1.10:1025"), nil},
		{"(1,2,3) then (10,0,0,1,0,1)", ap("10.0.0.1:1"), nil},
		{"227 Entering Passive Mode (255,255,255,255,255,255)", ap("255.255.255.255:65535"), nil},
		{"Entering Passive Mode (0,0,0,0,195,80).", ap("0.0.0.0:50000"), ErrUnspecifiedAddr},
		{"Entering Passive Mode (127,0,0,256,195,80).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127,0,0,1,195,1000).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127,0,0,0001,195,80).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127,0,0,1,0,0).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (0,0,0,0,0,0).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127,0,0,1,195).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127,0,0,1,195,80,7).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127, 0, 0, 1, 195, 80).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (127,0,0,1,,80).", netip.AddrPort{}, protoErr},
		{"Entering Passive Mode (-127,0,0,1,195,80).", ap("127.0.0.1:50000"), nil},
		{"Entering Passive Mode", netip.AddrPort{}, protoErr},
		{"", netip.AddrPort{}, protoErr},
		{"\xff\x00,,,,,", netip.AddrPort{}, protoErr},
	}
	for _, tt := range tests {
		got, err := ParsePASV(tt.text)
		if got != tt.want || !checkErr(err, tt.err) {
			t.Errorf("ParsePASV(%q) = %v, %v; want %v, %v", tt.text, got, err, tt.want, tt.err)
		}
	}
	// The unspecified-address error also tells why.
	if _, err := ParsePASV("227 =0,0,0,0,4,1"); err == nil || err.Error() == ErrUnspecifiedAddr.Error() {
		t.Errorf("ParsePASV(0.0.0.0) error %v lacks detail", err)
	}
}

func TestFormatPASV(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		in   netip.AddrPort
		want string
		err  bool
	}{
		{ap("127.0.0.1:50000"), "227 Entering Passive Mode (127,0,0,1,195,80).", false},
		{ap("[::ffff:10.0.0.1]:21"), "227 Entering Passive Mode (10,0,0,1,0,21).", false},
		{ap("[::1]:21"), "", true},
		{ap("10.0.0.1:0"), "", true},
		{netip.AddrPort{}, "", true},
	}
	for _, tt := range tests {
		rep, err := FormatPASV(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("FormatPASV(%v): err = %v, want error %v", tt.in, err, tt.err)
			continue
		}
		if err != nil {
			continue
		}
		if rep.Code != 227 || len(rep.Lines) != 1 || rep.Lines[0] != tt.want {
			t.Errorf("FormatPASV(%v) = %#v, want %q", tt.in, rep, tt.want)
		}
		if back, err := ParsePASV(rep.Text()); err != nil || back != netip.AddrPortFrom(tt.in.Addr().Unmap(), tt.in.Port()) {
			t.Errorf("ParsePASV(FormatPASV(%v)) = %v, %v", tt.in, back, err)
		}
	}
}

func TestParseEPSV(t *testing.T) {
	tests := []struct {
		text string
		want uint16
		err  error
	}{
		{"Entering Extended Passive Mode (|||6446|)", 6446, nil},
		{"229 Entering Extended Passive Mode (|||6446|)", 6446, nil},
		{"Entering Extended Passive Mode (!!!6446!)", 6446, nil},
		{"Entering Extended Passive Mode (~~~1~)", 1, nil},
		{"Entering Extended Passive Mode (|||65535|).", 65535, nil},
		{"Extended Passive (EPSV) (|||21|)", 21, nil},
		{"Entering Extended Passive Mode (|||06446|)", 6446, nil},
		{"Entering Extended Passive Mode (|||0|)", 0, protoErr},
		{"Entering Extended Passive Mode (|||65536|)", 0, protoErr},
		{"Entering Extended Passive Mode (|||100000|)", 0, protoErr},
		{"Entering Extended Passive Mode (|||6446!)", 0, protoErr},
		{"Entering Extended Passive Mode (|!|6446|)", 0, protoErr},
		{"Entering Extended Passive Mode (|||6446|", 0, protoErr},
		{"Entering Extended Passive Mode (|||-1|)", 0, protoErr},
		{"Entering Extended Passive Mode (||||)", 0, protoErr},
		{"Entering Extended Passive Mode (|2|::1|6446|)", 0, protoErr},
		{"Entering Extended Passive Mode (   6446 )", 0, protoErr},
		{"Entering Extended Passive Mode (1116446 1)", 0, protoErr},
		{"Entering Extended Passive Mode |||6446|", 0, protoErr},
		{"", 0, protoErr},
	}
	for _, tt := range tests {
		got, err := ParseEPSV(tt.text)
		if got != tt.want || !checkErr(err, tt.err) {
			t.Errorf("ParseEPSV(%q) = %v, %v; want %v, %v", tt.text, got, err, tt.want, tt.err)
		}
	}
}

func TestFormatEPSV(t *testing.T) {
	rep := FormatEPSV(6446)
	if rep.Code != 229 || len(rep.Lines) != 1 || rep.Lines[0] != "229 Entering Extended Passive Mode (|||6446|)" {
		t.Errorf("FormatEPSV(6446) = %#v", rep)
	}
	for _, p := range []uint16{1, 21, 6446, 65535} {
		if got, err := ParseEPSV(FormatEPSV(p).Text()); err != nil || got != p {
			t.Errorf("ParseEPSV(FormatEPSV(%d)) = %d, %v", p, got, err)
		}
	}
}

func TestParsePORT(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		arg  string
		want netip.AddrPort
		err  error
	}{
		{"127,0,0,1,195,80", ap("127.0.0.1:50000"), nil},
		{"  10,0,0,1,4,1 ", ap("10.0.0.1:1025"), nil},
		{"010,000,000,001,004,001", ap("10.0.0.1:1025"), nil},
		{"0,0,0,0,4,1", ap("0.0.0.0:1025"), nil},
		{"127,0,0,256,195,80", netip.AddrPort{}, protoErr},
		{"127,0,0,1,0,0", netip.AddrPort{}, protoErr},
		{"127,0,0,0001,195,80", netip.AddrPort{}, protoErr},
		{"127,0,0,1,195", netip.AddrPort{}, protoErr},
		{"127,0,0,1,195,80,1", netip.AddrPort{}, protoErr},
		{"127,0,0,1,195,80x", netip.AddrPort{}, protoErr},
		{"+127,0,0,1,195,80", netip.AddrPort{}, protoErr},
		{"127,-0,0,1,195,80", netip.AddrPort{}, protoErr},
		{"127, 0,0,1,195,80", netip.AddrPort{}, protoErr},
		{"127,0,0,1,195,", netip.AddrPort{}, protoErr},
		{"\t127,0,0,1,195,80", netip.AddrPort{}, protoErr},
		{"", netip.AddrPort{}, protoErr},
		{"garbage", netip.AddrPort{}, protoErr},
	}
	for _, tt := range tests {
		got, err := ParsePORT(tt.arg)
		if got != tt.want || !checkErr(err, tt.err) {
			t.Errorf("ParsePORT(%q) = %v, %v; want %v, %v", tt.arg, got, err, tt.want, tt.err)
		}
	}
}

func TestFormatPORT(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		in   netip.AddrPort
		want string
		err  bool
	}{
		{ap("127.0.0.1:50000"), "127,0,0,1,195,80", false},
		{ap("[::ffff:192.0.2.7]:1025"), "192,0,2,7,4,1", false},
		{ap("[2001:db8::1]:1025"), "", true},
		{ap("192.0.2.7:0"), "", true},
		{netip.AddrPort{}, "", true},
	}
	for _, tt := range tests {
		got, err := FormatPORT(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("FormatPORT(%v) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
		if err == nil {
			if back, err := ParsePORT(got); err != nil || back != netip.AddrPortFrom(tt.in.Addr().Unmap(), tt.in.Port()) {
				t.Errorf("ParsePORT(FormatPORT(%v)) = %v, %v", tt.in, back, err)
			}
		}
	}
}

func TestParseEPRT(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		arg  string
		want netip.AddrPort
		err  error
	}{
		{"|1|132.235.1.2|6275|", ap("132.235.1.2:6275"), nil},
		{"|2|1080::8:800:200C:417A|5282|", ap("[1080::8:800:200c:417a]:5282"), nil},
		{" |1|132.235.1.2|6275| ", ap("132.235.1.2:6275"), nil},
		{"!1!132.235.1.2!6275!", ap("132.235.1.2:6275"), nil},
		{"|2|::ffff:10.0.0.1|1025|", ap("10.0.0.1:1025"), nil},
		{"|2|::1|65535|", ap("[::1]:65535"), nil},
		{"|3|132.235.1.2|6275|", netip.AddrPort{}, ErrUnsupportedFamily},
		{"|3|anything at all|6275|", netip.AddrPort{}, ErrUnsupportedFamily},
		{"|1|1080::8:800:200C:417A|5282|", netip.AddrPort{}, protoErr},
		{"|1|::ffff:10.0.0.1|1025|", netip.AddrPort{}, protoErr},
		{"|2|132.235.1.2|6275|", netip.AddrPort{}, protoErr},
		{"|2|fe80::1%eth0|6275|", netip.AddrPort{}, protoErr},
		{"|1|132.235.1.2|0|", netip.AddrPort{}, protoErr},
		{"|1|132.235.1.2|65536|", netip.AddrPort{}, protoErr},
		{"|1|132.235.1.2|+80|", netip.AddrPort{}, protoErr},
		{"|1|132.235.1.2|6275!", netip.AddrPort{}, protoErr},
		{"|1!132.235.1.2!6275!", netip.AddrPort{}, protoErr},
		{"|1|132.235.1.2|6275|x", netip.AddrPort{}, protoErr},
		{"|1|132.235.1.2|6275||", netip.AddrPort{}, protoErr},
		{"|1|132.235.001.2|6275|", netip.AddrPort{}, protoErr},
		{"|1|host.example|6275|", netip.AddrPort{}, protoErr},
		{"||132.235.1.2|6275|", netip.AddrPort{}, protoErr},
		{"|x|132.235.1.2|6275|", netip.AddrPort{}, protoErr},
		{" 1|132.235.1.2|6275|", netip.AddrPort{}, protoErr},
		{"\x7f1\x7f132.235.1.2\x7f6275\x7f", netip.AddrPort{}, protoErr},
		{"", netip.AddrPort{}, protoErr},
	}
	for _, tt := range tests {
		got, err := ParseEPRT(tt.arg)
		if got != tt.want || !checkErr(err, tt.err) {
			t.Errorf("ParseEPRT(%q) = %v, %v; want %v, %v", tt.arg, got, err, tt.want, tt.err)
		}
	}
}

func TestFormatEPRT(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		in   netip.AddrPort
		want string
	}{
		{ap("132.235.1.2:6275"), "|1|132.235.1.2|6275|"},
		{ap("[1080::8:800:200c:417a]:5282"), "|2|1080::8:800:200c:417a|5282|"},
		{ap("[::ffff:10.0.0.1]:1025"), "|1|10.0.0.1|1025|"},
		{ap("[fe80::1%eth0]:1025"), "|2|fe80::1|1025|"},
		{netip.AddrPort{}, ""},
	}
	for _, tt := range tests {
		got := FormatEPRT(tt.in)
		if got != tt.want {
			t.Errorf("FormatEPRT(%v) = %q, want %q", tt.in, got, tt.want)
		}
		if got == "" {
			continue
		}
		want := netip.AddrPortFrom(tt.in.Addr().Unmap().WithZone(""), tt.in.Port())
		if back, err := ParseEPRT(got); err != nil || back != want {
			t.Errorf("ParseEPRT(FormatEPRT(%v)) = %v, %v; want %v", tt.in, back, err, want)
		}
	}
}
