package redisstore

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
)

// luaBanEvent and luaUnbanEvent are the channel's messages as the scripts
// (scripts.go) publish them: table.concat of the fields with "|", the times
// in Unix ms and the count as decimal integers.
func luaBanEvent(instance string, b limiter.Ban) string {
	return strings.Join([]string{"B", instance, b.Key.String(), ms(b.Until), ms(b.Since), ms(b.Forget),
		strconv.Itoa(b.Count), b.Reason}, "|")
}

func luaUnbanEvent(instance string, key netip.Prefix) string {
	return strings.Join([]string{"U", instance, key.String()}, "|")
}

// luaBanRecord is the hash ban:K as redisSaveBan and ban() write it.
func luaBanRecord(b limiter.Ban) map[string]string {
	return map[string]string{"u": ms(b.Until), "s": ms(b.Since), "f": ms(b.Forget), "c": strconv.Itoa(b.Count), "r": b.Reason}
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// FuzzParseEvent checks what the store takes from a message of the ban
// channel, which any client of the Redis server can publish. A message it
// takes is a ban or an unban of a valid prefix (normalised later, by the
// limiter), from an instance that holds no "|"; published again in the
// scripts' format it reads back as the same event, and that format is the
// message itself when the message wrote each field canonically (the
// prefix as netip writes it, the numbers as decimal integers without sign
// or leading zeros, an unban with no field after the key).
func FuzzParseEvent(f *testing.F) {
	t1 := time.UnixMilli(1748779200123)
	key := netip.MustParsePrefix("192.0.2.7/32")
	for _, s := range []string{
		luaBanEvent("0123456789abcdef", limiter.Ban{Key: key, Until: t1, Since: t1.Add(-time.Hour), Forget: t1.Add(time.Hour),
			Count: 2, Reason: "budget"}),
		luaBanEvent("i", limiter.Ban{Key: netip.MustParsePrefix("2001:db8::/64"), Until: t1, Count: 1, Reason: "a|b"}),
		luaUnbanEvent("0123456789abcdef", key),
		"B|i|192.0.2.7/32|+1|007|-0|1|", "B|i|192.0.2.7/24|1|2|3|4", "B|i|192.0.2.7/32|1|2|3|4",
		"U|i|2001:DB8::/64|extra", "B|i|::ffff:1.2.3.4/128|9223372036854775807|-9223372036854775808|0|0|r",
		"B|i|192.0.2.7|1|2|3|4|r", "X|i|192.0.2.7/32",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		from, ev, ok := parseEvent(payload)
		if !ok {
			return
		}
		if strings.Contains(from, "|") || !ev.Ban.Key.IsValid() {
			t.Fatalf("parseEvent(%q) = %q, %+v", payload, from, ev)
		}
		var again string
		switch ev.Kind {
		case limiter.EventBan:
			again = luaBanEvent(from, ev.Ban)
		case limiter.EventUnban:
			if ev.Ban != (limiter.Ban{Key: ev.Ban.Key}) {
				t.Fatalf("parseEvent(%q): an unban with more than a key: %+v", payload, ev)
			}
			again = luaUnbanEvent(from, ev.Ban.Key)
		default:
			t.Fatalf("parseEvent(%q) = kind %v", payload, ev.Kind)
		}
		from2, ev2, ok := parseEvent(again)
		if !ok || from2 != from || ev2 != ev {
			t.Fatalf("parseEvent(%q) = %q, %+v; published again as %q it reads %q, %+v, %v", payload, from, ev, again, from2, ev2, ok)
		}
		if again != payload && canonicalFields(strings.SplitN(payload, "|", 8), ev.Kind == limiter.EventBan) {
			t.Fatalf("parseEvent(%q): canonical, but published again as %q", payload, again)
		}
	})
}

// canonicalFields reports whether the fields of a message that parses are
// written as the scripts write them.
func canonicalFields(f []string, ban bool) bool {
	p, _ := netip.ParsePrefix(f[2])
	if f[2] != p.String() {
		return false
	}
	if !ban {
		return len(f) == 3
	}
	for _, s := range f[3:7] {
		n, _ := strconv.ParseInt(s, 10, 64)
		if s != strconv.FormatInt(n, 10) {
			return false
		}
	}
	return true
}

// FuzzParseBanRecord checks what LoadBans takes from a hash ban:K (any of
// its fields may be missing or hold anything): a record it takes has a
// key that netip reads and all four numbers; written again as the scripts
// write it, it reads back as the same Ban.
func FuzzParseBanRecord(f *testing.F) {
	f.Add("192.0.2.7/32", "1748779200123", "1748775600123", "1748782800123", "2", "budget", uint8(0))
	f.Add("2001:db8::/64", "1", "2", "3", "1", "", uint8(0))
	f.Add("192.0.2.7/32", "1", "2", "3", "1", "r", uint8(1<<2)) // "f" missing
	f.Add("192.0.2.7/32", "+1", "0x2", "3.5", "1e3", "r", uint8(0))
	f.Add("192.0.2.7/32", "1", "2", "3", "4", "", uint8(1<<4)) // no reason: ""
	f.Fuzz(func(t *testing.T, key, u, s, fg, c, r string, missing uint8) {
		h := map[string]string{}
		for i, kv := range [][2]string{{"u", u}, {"s", s}, {"f", fg}, {"c", c}, {"r", r}} {
			if missing&(1<<i) == 0 {
				h[kv[0]] = kv[1]
			}
		}
		b, ok := parseBanRecord(key, h)
		if !ok {
			if b != (limiter.Ban{}) {
				t.Fatalf("parseBanRecord(%q, %q) = %+v, false", key, h, b)
			}
			return
		}
		if missing&0b1111 != 0 || !b.Key.IsValid() || b.Reason != h["r"] {
			t.Fatalf("parseBanRecord(%q, %q) = %+v", key, h, b)
		}
		if back, ok := parseBanRecord(b.Key.String(), luaBanRecord(b)); !ok || back != b {
			t.Fatalf("parseBanRecord(%q, %q) = %+v; written again it reads %+v, %v", key, h, b, back, ok)
		}
	})
}
