package main

import (
	"unicode"
	"unicode/utf8"
)

// approxTokens counts what tgipool.approx_tokens counts: the pieces of the regular expression
// `\s*(?:[^\W\d_]{1,4}|\d|[^\w\s]|_)|\s+` with Python's Unicode classes, left to right. The emulator
// validates with the same count, so the core, the Python gateway and the emulator agree on every prompt.
// A scanner instead of Go's regexp: RE2 has no Unicode \w/\d/\s with Python's meaning, and it is 10x slower.
func approxTokens(s string) int {
	n := 0
	i := 0
	for i < len(s) {
		// \s* then one of the alternatives; if none follows, the whitespace run is a piece of its own (\s+).
		j := i
		for j < len(s) {
			r, size := utf8.DecodeRuneInString(s[j:])
			if !isSpace(r) {
				break
			}
			j += size
		}
		if j == len(s) { // trailing whitespace
			n++
			break
		}
		r, size := utf8.DecodeRuneInString(s[j:])
		j += size
		if isLetter(r) { // up to 4 letters
			for k := 1; k < 4 && j < len(s); k++ {
				r2, size2 := utf8.DecodeRuneInString(s[j:])
				if !isLetter(r2) {
					break
				}
				j += size2
			}
		}
		// a digit, an underscore or any other non-space character: one piece
		n++
		i = j
	}
	return n
}

// isSpace is Python's str.isspace for one character (what `\s` matches in a str pattern).
func isSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0x1c, 0x1d, 0x1e, 0x1f, 0x85:
		return true
	}
	if r < 0x80 {
		return false
	}
	// Python: bidirectional type WS, B or S, or category Zs.
	return unicode.Is(unicode.Zs, r) || r == 0x2028 || r == 0x2029
}

// isLetter is `[^\W\d_]` in Python: a word character that is not a decimal digit nor '_'. Python's \w is
// str.isalnum(): letters (L*) and numeric characters (Nd, Nl, No).
func isLetter(r rune) bool {
	if r < 0x80 {
		return ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z')
	}
	return unicode.IsLetter(r) || unicode.In(r, unicode.Nl, unicode.No)
}
