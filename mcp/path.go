package mcp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Path is a parsed argument path: a small JSONPath subset that names one
// value, "$" followed by steps ".key", "['key']" or "[N]" (a key of an
// object, an index of an array). No wildcards, filters or recursion, so a
// path names at most one value and a lookup is one walk.
type Path []step

type step struct {
	key   string
	index int // -1 for a key step
}

// ParsePath reads a path such as $.bcc, $.to[0].address or
// $['x-header'].
func ParsePath(s string) (Path, error) {
	if !strings.HasPrefix(s, "$") {
		return nil, fmt.Errorf("a path starts with $, as in $.bcc")
	}
	var p Path
	rest := s[1:]
	for rest != "" {
		switch {
		case rest[0] == '.':
			rest = rest[1:]
			n := strings.IndexAny(rest, ".[")
			if n < 0 {
				n = len(rest)
			}
			if n == 0 {
				return nil, fmt.Errorf("empty key after '.' at offset %d", len(s)-len(rest))
			}
			p, rest = append(p, step{key: rest[:n], index: -1}), rest[n:]
		case strings.HasPrefix(rest, "['"):
			end := strings.Index(rest[2:], "']")
			if end < 0 {
				return nil, fmt.Errorf("unterminated ['key'] at offset %d", len(s)-len(rest))
			}
			p, rest = append(p, step{key: rest[2 : 2+end], index: -1}), rest[2+end+2:]
		case rest[0] == '[':
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return nil, fmt.Errorf("unterminated [N] at offset %d", len(s)-len(rest))
			}
			i, err := strconv.Atoi(rest[1:end])
			if err != nil || i < 0 {
				return nil, fmt.Errorf("%q is not an array index (a number >= 0) or a quoted key ['key']", rest[:end+1])
			}
			p, rest = append(p, step{index: i}), rest[end+1:]
		default:
			return nil, fmt.Errorf("unexpected %q at offset %d: write .key, ['key'] or [N]", rest[:1], len(s)-len(rest))
		}
	}
	return p, nil
}

// Lookup returns the value p names in v (a JSON document, e.g. a
// tools/call's params.arguments) as text: a string as its contents, any
// other value as its JSON. ok is false when the value is absent or null.
// Keys match exactly and the last of duplicate keys wins, as JSON.parse
// reads them.
func (p Path) Lookup(v json.RawMessage) (s string, ok bool) {
	for _, st := range p {
		if len(v) == 0 {
			return "", false
		}
		if st.index < 0 {
			var o map[string]json.RawMessage
			if json.Unmarshal(v, &o) != nil {
				return "", false
			}
			v = o[st.key]
		} else {
			var a []json.RawMessage
			if json.Unmarshal(v, &a) != nil || st.index >= len(a) {
				return "", false
			}
			v = a[st.index]
		}
	}
	v = bytes.TrimSpace(v)
	if len(v) == 0 || bytes.Equal(v, []byte("null")) {
		return "", false
	}
	if v[0] == '"' {
		if json.Unmarshal(v, &s) != nil {
			return "", false
		}
		return s, true
	}
	var c bytes.Buffer
	if json.Compact(&c, v) != nil {
		return "", false
	}
	return c.String(), true
}
