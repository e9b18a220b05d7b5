package limiter

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestCanonicalUser: the spellings a case- or width-insensitive user
// lookup (LDAP, AD, sssd, MySQL collations) takes for one account have one
// key; different accounts keep different keys.
func TestCanonicalUser(t *testing.T) {
	tests := []struct {
		names []string
		want  string
	}{
		{[]string{"alice", "ALICE", "Alice", "aLiCe", "ａｌｉｃｅ", "ＡＬＩＣＥ",
			"al\u200bice", "ali\u00adce", "\u200balice\u2060", "a\ufe0flice", "al\u034fice"}, "alice"},
		// German: ß folds to ss, and ẞ (capital sharp s) too.
		{[]string{"straße", "STRASSE", "Strasse", "STRAẞE", "strasse"}, "strasse"},
		// Turkish: İ (U+0130) folds to i + U+0307 (full folding, not the
		// Turkic one), the same as the decomposed spelling.
		{[]string{"İSTANBUL", "i\u0307stanbul", "I\u0307STANBUL"}, "i\u0307stanbul"},
		{[]string{"KADIN", "kadin"}, "kadin"},
		// Greek final sigma; compatibility forms (ligature, superscript).
		{[]string{"ΣΑΣ", "σας", "σασ"}, "σασ"},
		{[]string{"ﬁle", "FILE", "file"}, "file"},
		{[]string{"user²", "USER2"}, "user2"},
		// Cherokee folds to its capital letters (Unicode 8: the small ones
		// came later). x/text's cases.Fold swaps the two cases instead, so
		// each Cherokee letter of a name once doubled its keys: four for
		// these two letters, each the key of another spelling.
		{[]string{"\u13a0\u13a1", "\uab70\u13a1", "\u13a0\uab71", "\uab70\uab71"}, "\u13a0\u13a1"},
		{[]string{"\u13f0", "\u13f8"}, "\u13f0"},
		// Composed and decomposed é.
		{[]string{"josé", "jose\u0301", "JOSÉ"}, "josé"},
		// Invalid UTF-8 is kept byte for byte.
		{[]string{"a\xffB"}, "a\xffb"},
		{[]string{"a\xfeb"}, "a\xfeb"},
		// …and an ignorable between bad bytes stays: removed, it joined
		// them into a character (the key then not a key of itself).
		{[]string{"jos\xc3\u200b\xa9", "JOS\xc3\u200b\xa9"}, "jos\xc3\u200b\xa9"},
		{[]string{"\xe2\x80\u200b\x8b"}, "\xe2\x80\u200b\x8b"},
		{[]string{"\u200b\x8b", "\x8b\u200b"}, "\x8b"},
		// Spaces and other characters stay.
		{[]string{"alice "}, "alice "},
		{[]string{"a.b-c_d@example.com", "A.B-C_D@EXAMPLE.COM"}, "a.b-c_d@example.com"},
		{[]string{""}, ""},
	}
	for _, tt := range tests {
		for _, n := range tt.names {
			if got := CanonicalUser(n); got != tt.want {
				t.Errorf("CanonicalUser(%+q) = %+q, want %+q", n, got, tt.want)
			}
		}
	}
	// Distinct accounts stay distinct.
	distinct := []string{"alice", "alice ", "alicf", "kadın", "kadin", "a\xffb", "a\xfeb", "bob", "bób",
		// Bad bytes around an ignorable: removed, it joined them into "é".
		"josé", "jos\xc3\u200b\xa9"}
	seen := map[string]string{}
	for _, n := range distinct {
		c := CanonicalUser(n)
		if o, ok := seen[c]; ok {
			t.Errorf("%+q and %+q share the key %+q", o, n, c)
		}
		seen[c] = n
	}
	// A long name is transformed up to maxCanonInput bytes, the rest kept.
	long := strings.Repeat("A", maxCanonInput) + "TAIL"
	if got := CanonicalUser(long); got != strings.Repeat("a", maxCanonInput)+"TAIL" {
		t.Errorf("CanonicalUser(long) = %.16q…", got)
	}
}

// TestUsersSpellingsShareBudget: guesses for one account under many
// spellings meet one budget. Before CanonicalUser each spelling had a
// budget of its own, so a case-folding daemon saw Failures guesses per
// spelling (64 guesses with a budget of 2).
func TestUsersSpellingsShareBudget(t *testing.T) {
	const failures = 2
	u := newUsers(t, UserConfig{Failures: failures, Window: time.Hour, MaxNamesPerKey: 1})
	passed := 0
	for i := range 64 {
		// Every mix of cases of "fgtest", each from a key of its own.
		b := []byte("fgtest")
		for j := range b {
			if i>>j&1 == 1 {
				b[j] -= 'a' - 'A'
			}
		}
		key := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), 32)
		d := u.Attempt(ut0, string(b), key)
		if d.Held {
			passed++
			u.Failure(ut0, string(b), key)
			u.Release(string(b))
		}
	}
	if passed != failures {
		t.Fatalf("%d of 64 spellings passed; want %d (one budget)", passed, failures)
	}
	// One key trying several spellings of one name tries one name.
	k := netip.MustParsePrefix(kOwner)
	for _, n := range []string{"bob", "BOB", "Bob", "ｂｏｂ"} {
		if d := u.Check(ut0, n, k); d.TooManyNames {
			t.Fatalf("%q counted as another name: %+v", n, d)
		}
	}
	// A login under one spelling makes the key known-good for all.
	u.Success(ut0, "FgTest", k)
	if d := u.Check(ut0, "fgtest", k); !d.KnownGood || d.Throttled {
		t.Errorf("owner after a login as FgTest: %+v", d)
	}
}

// TestUsersThrottledList: Throttled lists the spent names (canonical,
// sorted) with their retry and refill times; Reset under any spelling
// lifts the throttle and leaves other names and known-good pairs alone.
func TestUsersThrottledList(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 2, Window: 10 * time.Minute})
	k := netip.MustParsePrefix(kBot1)
	for _, n := range []string{"Zed", "zed", "Alice", "alice", "bob"} {
		u.Failure(ut0, n, k)
	}
	long := strings.Repeat("y", 100)
	u.Failure(ut0, long, k)
	u.Failure(ut0, long, k)
	now := ut0.Add(time.Minute)
	got := u.Throttled(now)
	var names []string
	for _, st := range got {
		names = append(names, st.Name)
	}
	want := []string{"alice", strings.Repeat("y", MaxUserName-8) + "…", "zed"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("Throttled = %q, want %q", names, want)
	}
	st := got[0]
	// 1 minute after the budget was emptied: one token is back 5 minutes
	// after, the whole budget 10 minutes after.
	if st.Remaining != 0 || st.Failures != 2 || st.RetryIn != 4*time.Minute || st.FullIn != 9*time.Minute || st.Hashed {
		t.Errorf("alice: %+v", st)
	}
	if !got[1].Hashed {
		t.Errorf("long name not marked hashed: %+v", got[1])
	}
	if d := u.Attempt(now, "ALICE", k); !d.Throttled || d.Held || d.RetryIn != 4*time.Minute {
		t.Errorf("Attempt(ALICE) = %+v, want throttled, retry in 4m", d)
	}
	good := netip.MustParsePrefix(kOwner)
	u.Success(now, "alice", good)
	if found, err := u.Reset("ＡＬＩＣＥ"); !found || err != nil {
		t.Fatalf("Reset = %v, %v", found, err)
	}
	if found, _ := u.Reset("nobody"); found {
		t.Error("Reset(nobody) found a budget")
	}
	if found, _ := u.Reset(long); !found {
		t.Error("Reset(long name) did not find it")
	}
	if d := u.Check(now, "alice", k); d.Throttled || d.Remaining != 2 {
		t.Errorf("after Reset: %+v, want a full budget", d)
	}
	if d := u.Check(now, "alice", good); !d.KnownGood {
		t.Errorf("Reset dropped the known-good pair: %+v", d)
	}
	if got := u.Throttled(now); len(got) != 1 || got[0].Name != "zed" {
		t.Errorf("after Reset: %+v, want zed only", got)
	}
	// Places held by guesses in flight throttle too, and are listed.
	u.Attempt(now, "carol", k)
	u.Attempt(now, "carol", k)
	if got := u.Throttled(now); len(got) != 2 || got[0].Name != "carol" || got[0].Held != 2 || got[0].Remaining != 2 {
		t.Errorf("with 2 guesses in flight: %+v", got)
	}
	// Off: nothing listed.
	off := newUsers(t, UserConfig{})
	if got := off.Throttled(now); got != nil {
		t.Errorf("off: %+v", got)
	}
}

// TestUsersThrottledBounded: the list is bounded.
func TestUsersThrottledBounded(t *testing.T) {
	u := newUsers(t, UserConfig{Failures: 1, Window: time.Hour})
	k := netip.MustParsePrefix(kBot1)
	for i := range MaxThrottledList + 50 {
		u.Failure(ut0, fmt.Sprintf("u%05d", i), k)
	}
	got := u.Throttled(ut0)
	if len(got) != MaxThrottledList || got[0].Name != "u00000" || got[len(got)-1].Name != fmt.Sprintf("u%05d", MaxThrottledList-1) {
		t.Errorf("%d listed, first %q", len(got), got[0].Name)
	}
}

// TestUsersKnownGoodNeighbourhood: with known_good_ipv4_prefix = 24, an
// owner whose ISP changed the last octet is still known-good; another /24
// is not. Without it (the key's own prefix) the new address is a stranger.
func TestUsersKnownGoodNeighbourhood(t *testing.T) {
	for _, tt := range []struct {
		cfg      UserConfig
		neighbor bool
	}{
		{UserConfig{Failures: 1, Window: time.Hour}, false},
		{UserConfig{Failures: 1, Window: time.Hour, KnownGoodIPv4Prefix: 24, KnownGoodIPv6Prefix: 48}, true},
	} {
		u := newUsers(t, tt.cfg)
		u.Success(ut0, "alice", netip.MustParsePrefix("192.0.2.10/32"))
		u.Success(ut0, "alice", netip.MustParsePrefix("2001:db8:1:2::/64"))
		u.Failure(ut0, "alice", netip.MustParsePrefix(kBot1))
		for key, want := range map[string]bool{
			"192.0.2.10/32": true, "192.0.2.77/32": tt.neighbor, "192.0.3.10/32": false,
			"2001:db8:1:2::/64": true, "2001:db8:1:ff::/64": tt.neighbor, "2001:db8:2:2::/64": false,
		} {
			d := u.Check(ut0, "alice", netip.MustParsePrefix(key))
			if d.KnownGood != want || d.Throttled == want {
				t.Errorf("%+v: %s: %+v, want known-good %v", tt.cfg, key, d, want)
			}
		}
	}
	// A neighbourhood longer than the key is the key.
	u := newUsers(t, UserConfig{Failures: 1, Window: time.Hour, KnownGoodIPv4Prefix: 32})
	u.Success(ut0, "alice", netip.MustParsePrefix("192.0.2.0/24"))
	if d := u.Check(ut0, "alice", netip.MustParsePrefix("192.0.2.0/24")); !d.KnownGood {
		t.Errorf("/32 neighbourhood of a /24 key: %+v", d)
	}
}
