package limiter

import (
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// FuzzCanonicalUser checks the key of a username (the USER argument, any
// bytes): it is a fixed point (the key of a key is itself); the ASCII fast
// path gives what the whole transform chain would; the ASCII case of the
// name does not matter; a default ignorable code point inserted between
// two characters of a valid name does not matter; and a name's invalid
// UTF-8 bytes are all kept, in order.
func FuzzCanonicalUser(f *testing.F) {
	for _, s := range []string{"alice", "ALICE", "ａｌｉｃｅ", "al\u200bice", "straße", "STRAẞE", "İSTANBUL", "ΣΑΣ", "ﬁle",
		"user²", "jose\u0301", "a\xffB", "a\xfeb", "\xe2\x80", "alice ", "\u0345\u0399", "\ufdfa", "ǅ", "K\u212a", "\uab8c", "\u13bc\u13f8",
		"\xe2\x80\u200b\x8b", "jos\xc3\u200b\xa9", ""} {
		f.Add(s, uint16(1))
	}
	chain := transform.Chain(runes.Remove(runes.Predicate(defaultIgnorable)), norm.NFKC, cases.Fold(), runes.Map(cherokeeFold), norm.NFKC)
	f.Fuzz(func(t *testing.T, name string, at uint16) {
		if len(name) > 256 {
			name = name[:256] // cheap enough; the cut at maxCanonInput is TestCanonicalUser's
		}
		c := CanonicalUser(name)
		if again := CanonicalUser(c); again != c {
			t.Fatalf("CanonicalUser(%+q) = %+q, whose key is %+q", name, c, again)
		}
		if isCanonASCII(name) {
			if full, _, err := transform.String(chain, name); err != nil || full != name {
				t.Fatalf("%+q: the fast path keeps it, the chain gives %+q, %v", name, full, err)
			}
		}
		for _, other := range []string{asciiCase(name, true), asciiCase(name, false)} {
			if co := CanonicalUser(other); co != c {
				t.Fatalf("CanonicalUser(%+q) = %+q, CanonicalUser(%+q) = %+q", name, c, other, co)
			}
		}
		if utf8.ValidString(name) {
			i := int(at) % (len(name) + 1)
			for i < len(name) && !utf8.RuneStart(name[i]) {
				i-- // to the start of the character i is in
			}
			for _, ig := range []string{"\u200b", "\u00ad", "\u2060", "\ufe0f"} {
				with := name[:i] + ig + name[i:]
				if cw := CanonicalUser(with); cw != c {
					t.Fatalf("CanonicalUser(%+q) = %+q, CanonicalUser(%+q) = %+q", name, c, with, cw)
				}
			}
		} else if got, want := invalidBytes(c), invalidBytes(name); got != want {
			t.Fatalf("CanonicalUser(%+q) = %+q: invalid bytes %+q, want %+q", name, c, got, want)
		}
	})
}

// asciiCase returns s with its ASCII letters in upper or lower case.
func asciiCase(s string, upper bool) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case upper && 'a' <= c && c <= 'z':
			b[i] = c - 'a' + 'A'
		case !upper && 'A' <= c && c <= 'Z':
			b[i] = c - 'A' + 'a'
		}
	}
	return string(b)
}

// invalidBytes returns the bytes of s that are not part of valid UTF-8.
func invalidBytes(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			b.WriteByte(s[i])
		}
		i += max(n, 1)
	}
	return b.String()
}
