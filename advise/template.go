package advise

import (
	"regexp"
	"sort"
	"strings"

	"github.com/sluicehq/sluice/policy"
)

// Path templates: a recorded path becomes a policy path (destinations.paths)
// that matches it and the paths like it. Segments that are identifiers
// (numbers, UUIDs, hex hashes, long tokens) become "*"; a path deeper than
// maxDepth segments ends in "**"; literal segments are kept.

// maxDepth is the number of segments a template keeps before "**".
const maxDepth = 6

var (
	uuidRe  = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)
	hexRe   = regexp.MustCompile(`^[0-9a-fA-F]{16,}$`)
	numRe   = regexp.MustCompile(`^[0-9][0-9.,_:-]*$`)
	tokenRe = regexp.MustCompile(`^[A-Za-z0-9_\-.~=+]{16,}$`)
	digitRe = regexp.MustCompile(`[0-9].*[A-Za-z]|[A-Za-z].*[0-9]`)
)

// Template returns the policy path for the request path p: the path as the
// policy sees it (query dropped, percent-decoded, dot segments resolved),
// with identifier segments replaced by "*" and anything below maxDepth
// segments by "**". The result is a valid policy path that matches p.
func Template(p string) string {
	p = policy.CleanPath(p)
	trailing := strings.HasSuffix(p, "/") && p != "/"
	segs := strings.Split(strings.Trim(p, "/"), "/")
	if len(segs) == 1 && segs[0] == "" {
		return "/"
	}
	for i, s := range segs {
		segs[i] = segment(s)
	}
	if len(segs) > maxDepth {
		segs = append(segs[:maxDepth-1], "**")
		trailing = false
	}
	out := "/" + strings.Join(segs, "/")
	if trailing && strings.Contains(out, "*") {
		// A glob matches the trailing empty segment only when it has one.
		out += "/"
	}
	return out
}

// segment is the template of one path segment.
func segment(s string) string {
	switch {
	case s == "**":
		return s
	case s == "":
		return "*"
	case numRe.MatchString(s), uuidRe.MatchString(s), hexRe.MatchString(s):
		return "*"
	case tokenRe.MatchString(s) && digitRe.MatchString(s):
		return "*" // a long token with digits: an id, a key, a session
	case len(s) > 64:
		return "*"
	}
	for i := 0; i < len(s); i++ {
		// Glob syntax, and bytes a YAML reader or a person may misread,
		// cannot be written literally: the segment becomes "*".
		if c := s[i]; c < 0x21 || c > 0x7e || strings.IndexByte(`*?[]\#"'%;`, c) >= 0 {
			return "*"
		}
	}
	return s
}

// Templates turns a set of paths into sorted, deduplicated templates. When
// more than maxFanout distinct literal segments follow the same prefix,
// they are collapsed to "*" too (a directory of names, not of routes).
func Templates(paths []string) []string {
	const maxFanout = 8
	ts := make([][]string, 0, len(paths))
	for _, p := range paths {
		t := Template(p)
		ts = append(ts, strings.Split(t, "/"))
	}
	for depth := 1; ; depth++ {
		deeper := false
		children := map[string]map[string]bool{}
		for _, t := range ts {
			if len(t) <= depth {
				continue
			}
			deeper = true
			pre := strings.Join(t[:depth], "/")
			if children[pre] == nil {
				children[pre] = map[string]bool{}
			}
			children[pre][t[depth]] = true
		}
		if !deeper {
			break
		}
		for _, t := range ts {
			if len(t) > depth && len(children[strings.Join(t[:depth], "/")]) > maxFanout && t[depth] != "**" && t[depth] != "" {
				t[depth] = "*"
			}
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, t := range ts {
		s := strings.Join(t, "/")
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}
