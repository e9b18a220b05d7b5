package admin

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestWriteBansTable(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC
	until := time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	writeBansTable(&buf, []banJSON{
		{Key: "203.0.113.7/32", Reason: "budget", Count: 3, SecondsLeft: 4*3600 + 5*60, Until: until},
		{Key: "2001:db8:1::/64", Reason: "admin", Count: 1, SecondsLeft: 59, Until: until},
		{Key: "198.51.100.0/24", Reason: "bad\treason\n", Count: 12, SecondsLeft: 3 * 86400, Until: until},
		{Key: "192.0.2.0/24", Source: "crowdsec", Reason: "cscli: manual", Count: 1, SecondsLeft: 3600, Until: until},
		{Key: "192.0.2.9/32", Source: "ftpguard", Reason: "budget", Count: 1, SecondsLeft: 60, Until: until},
	})
	want := `KEY              SOURCE    REASON         OFFENCES  LEFT  UNTIL
203.0.113.7/32   ftpguard  budget         3         4h5m  2026-11-25 18:00:00 UTC
2001:db8:1::/64  ftpguard  admin          1         59s   2026-11-25 18:00:00 UTC
198.51.100.0/24  ftpguard  bad?reason?    12        3d0h  2026-11-25 18:00:00 UTC
192.0.2.0/24     crowdsec  cscli: manual  1         1h0m  2026-11-25 18:00:00 UTC
192.0.2.9/32     ftpguard  budget         1         1m0s  2026-11-25 18:00:00 UTC
5 ban(s) in force
`
	if got := buf.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	buf.Reset()
	writeBansTable(&buf, nil)
	if buf.String() != "no bans in force\n" {
		t.Errorf("empty table: %q", buf.String())
	}
}

func TestHumanUnits(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 1500 * time.Millisecond: "2s", 61 * time.Second: "1m1s", 3 * time.Hour: "3h0m",
		49 * time.Hour: "2d1h", -time.Second: "0s",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{time.Hour: "1h", 10 * time.Minute: "10m", 90 * time.Minute: "1h30m",
		500 * time.Millisecond: "500ms", 168 * time.Hour: "168h", 30 * time.Second: "30s"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestParseBanDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "90m": 90 * time.Minute, "7d": 7 * 24 * time.Hour, " 2h ": 2 * time.Hour} {
		if got, err := parseBanDuration(in); err != nil || got != want {
			t.Errorf("parseBanDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	// "-281474976710655d" is 24h once multiplied out in 64 bits: it was
	// taken as a day's ban.
	for _, in := range []string{"0s", "-5m", "soon", "1.5d", "100000d", "0d", "-1d", "-281474976710655d", "-9223372036854775808d"} {
		if _, err := parseBanDuration(in); err == nil || !strings.HasPrefix(err.Error(), "duration: ") {
			t.Errorf("parseBanDuration(%q) = %v, want an error naming duration", in, err)
		}
	}
}
