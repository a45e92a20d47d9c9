package mcp

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// A scanner of JSON that json.Valid has accepted: it walks an object's
// members or an array's elements without decoding them, so reading a
// message costs a pass over its bytes and no allocation per key (a
// small tools/call read through encoding/json's maps cost ~40
// allocations). Keys are compared unescaped, and values decoded, as
// encoding/json (and JSON.parse) would.

// ws skips white space from i.
func ws(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// strEnd returns the index after the string that starts at b[i] ('"').
func strEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the index after the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return strEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = strEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	}
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// members calls fn with each member of the object b (valid JSON,
// surrounding white space allowed), in order: its key as written
// (without quotes, escapes kept) and its raw value. It reports whether b
// is an object.
func members(b []byte, fn func(key, val []byte)) bool {
	i := ws(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	for i = ws(b, i+1); i < len(b) && b[i] != '}'; {
		ke := strEnd(b, i)
		key := b[i+1 : ke-1]
		i = ws(b, ke)
		i = ws(b, i+1) // past ':'
		ve := valueEnd(b, i)
		fn(key, b[i:ve])
		i = ws(b, ve)
		if i < len(b) && b[i] == ',' {
			i = ws(b, i+1)
		}
	}
	return true
}

// elements calls fn with each element of the array b (valid JSON), in
// order. It reports whether b is an array.
func elements(b []byte, fn func(val []byte)) bool {
	i := ws(b, 0)
	if i >= len(b) || b[i] != '[' {
		return false
	}
	for i = ws(b, i+1); i < len(b) && b[i] != ']'; {
		ve := valueEnd(b, i)
		fn(b[i:ve])
		i = ws(b, ve)
		if i < len(b) && b[i] == ',' {
			i = ws(b, i+1)
		}
	}
	return true
}

// plain reports whether a string's bytes need no decoding: no escapes,
// and valid UTF-8 (encoding/json replaces invalid bytes).
func plain(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			return c != '\\' && utf8.Valid(s)
		}
	}
	return true
}

// keyIs reports whether the key as written (escapes kept) is name.
func keyIs(key []byte, name string) bool {
	if plain(key) {
		return string(key) == name
	}
	var k string
	quoted := make([]byte, 0, len(key)+2)
	quoted = append(append(append(quoted, '"'), key...), '"')
	return json.Unmarshal(quoted, &k) == nil && k == name
}

// str decodes a raw JSON string value; ok is false for any other value.
func str(raw []byte) (s string, ok bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if in := raw[1 : len(raw)-1]; plain(in) {
		return string(in), true
	}
	return s, json.Unmarshal(raw, &s) == nil
}

// integer decodes a raw JSON number that is an int, as json.Unmarshal
// into an int does (null is 0).
func integer(raw []byte) (int, bool) {
	if string(raw) == "null" {
		return 0, true
	}
	n, err := strconv.Atoi(string(raw))
	return n, err == nil
}
