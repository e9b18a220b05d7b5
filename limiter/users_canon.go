package limiter

// The canonical form of a username: one account, one budget.

import (
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// maxCanonInput bounds the bytes of a username CanonicalUser transforms
// (a command line is at most max_line bytes anyway); the rest is appended
// as it is, so a longer name still has a key of its own.
const maxCanonInput = 4096

// defaultIgnorable reports whether r is a Unicode Default_Ignorable_Code_Point,
// derived as the UCD does (DerivedCoreProperties.txt) from the tables of the
// unicode package: Other_Default_Ignorable_Code_Point + Cf +
// Variation_Selector − White_Space − Prepended_Concatenation_Mark. (The UCD
// also leaves out U+FFF9–FFFB and the Egyptian format controls, which are
// removed here too: a name holding them is no login name.)
func defaultIgnorable(r rune) bool {
	if unicode.Is(unicode.White_Space, r) || unicode.Is(unicode.Prepended_Concatenation_Mark, r) {
		return false
	}
	return unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r) ||
		unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Variation_Selector, r)
}

// CanonicalUser returns the form of a username that its budget, its
// known-good pairs and the names a key tried are kept under: default
// ignorable code points removed (U+200B, U+00AD, …), then NFKC, then full
// Unicode case folding (cases.Fold: "ALICE", "Alice", fullwidth "ａｌｉｃｅ"
// → "alice"; "STRASSE", "straße" → "strasse"; Cherokee to its capitals, see
// cherokeeFold), then NFKC again (folding can
// denormalise), i.e. Unicode's NFKC_Casefold. A daemon whose user lookup
// ignores case or width (LDAP, AD, sssd, MySQL collations) sees one account
// under all those spellings, so the proxy counts them as one. Invalid UTF-8
// is kept byte for byte (each bad byte stays distinct), and so is a run of
// ignorables between two bad bytes (removed, it could join them into a
// character). The name forwarded
// to the daemon is never changed; this is only the key. Safe for concurrent
// use.
func CanonicalUser(name string) string {
	rest := ""
	if len(name) > maxCanonInput {
		name, rest = name[:maxCanonInput], name[maxCanonInput:]
	}
	if !utf8.ValidString(name) {
		// Transform each valid run; invalid bytes stay as they are (the
		// transformers would turn them into U+FFFD, merging distinct names).
		var out []byte
		afterBad := false // out ends with a bad byte
		for len(name) > 0 {
			i := 0
			for i < len(name) {
				r, n := utf8.DecodeRuneInString(name[i:])
				if r == utf8.RuneError && n <= 1 {
					break
				}
				i += n
			}
			c := canonValid(name[:i])
			if c == "" && afterBad && i < len(name) {
				// A run of ignorables between bad bytes stays: removed,
				// it would join them into a character ("\xc3" U+200B
				// "\xa9" into "é").
				c = name[:i]
			}
			out = append(out, c...)
			afterBad = false
			if i < len(name) {
				out = append(out, name[i])
				i++
				afterBad = true
			}
			name = name[i:]
		}
		return string(out) + rest
	}
	return canonValid(name) + rest
}

func canonValid(s string) string {
	if isCanonASCII(s) {
		return s
	}
	t := transform.Chain(runes.Remove(runes.Predicate(defaultIgnorable)), norm.NFKC, cases.Fold(), runes.Map(cherokeeFold), norm.NFKC)
	out, _, err := transform.String(t, s)
	if err != nil {
		return s
	}
	return out
}

// cherokeeFold maps each Cherokee letter to its capital, the one Unicode
// folds it to (CaseFolding.txt: U+AB70–ABBF → U+13A0–13EF, U+13F8–13FD →
// U+13F0–13F5; the capitals, older, fold to themselves). It runs after
// cases.Fold, which folds the small letters right but turns the capitals
// into the small ones: each of the two spellings of a letter then keyed
// as the other, and a name of n Cherokee letters had 2ⁿ keys.
func cherokeeFold(r rune) rune {
	switch {
	case 0xab70 <= r && r <= 0xabbf:
		return r - 0xab70 + 0x13a0
	case 0x13f8 <= r && r <= 0x13fd:
		return r - 8
	}
	return r
}

// isCanonASCII reports whether s is printable ASCII without upper-case
// letters: already canonical (the common case costs no allocation).
func isCanonASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
