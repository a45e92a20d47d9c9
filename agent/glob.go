package agent

import (
	"fmt"
	"path"
	"strings"
)

// glob is a cgroup path pattern relative to the cgroup2 mount: "/"
// separated segments where "*", "?" and "[…]" match within a segment (as
// path.Match) and a "**" segment matches zero or more whole segments.
type glob struct {
	src  string
	segs []string
}

// compileGlob validates pattern.
func compileGlob(pattern string) (glob, error) {
	if !strings.HasPrefix(pattern, "/") {
		return glob{}, fmt.Errorf("agent.cgroups %q: must start with \"/\" (relative to the cgroup2 mount), e.g. \"/kubepods.slice/**\"", pattern)
	}
	segs := splitPath(pattern)
	for _, s := range segs {
		if s == "**" {
			continue
		}
		if strings.Contains(s, "**") {
			return glob{}, fmt.Errorf("agent.cgroups %q: \"**\" must be a whole segment, e.g. \"/a/**/b\"", pattern)
		}
		if _, err := path.Match(s, ""); err != nil {
			return glob{}, fmt.Errorf("agent.cgroups %q: segment %q: %w", pattern, s, err)
		}
	}
	return glob{src: pattern, segs: segs}, nil
}

// Match reports whether the cgroup path p (relative to the mount, starting
// with "/") matches.
func (g glob) Match(p string) bool {
	return matchSegs(g.segs, splitPath(p))
}

// matchSegs matches pattern segments against path segments by dynamic
// programming, O(len(pat)*len(p)), so no pattern can make it exponential.
func matchSegs(pat, p []string) bool {
	// ok[j] is whether pat[i:] matches p[j:], computed for i from the end.
	ok := make([]bool, len(p)+1)
	ok[len(p)] = true
	for i := len(pat) - 1; i >= 0; i-- {
		next := ok
		ok = make([]bool, len(p)+1)
		if pat[i] == "**" {
			// "**" matches zero or more segments: pat[i:] matches p[j:]
			// when pat[i+1:] matches p[k:] for some k >= j.
			any := false
			for j := len(p); j >= 0; j-- {
				any = any || next[j]
				ok[j] = any
			}
			continue
		}
		for j := 0; j < len(p); j++ {
			if next[j+1] {
				m, _ := path.Match(pat[i], p[j])
				ok[j] = m
			}
		}
	}
	return ok[0]
}

// splitPath splits a slash path into its non-empty segments.
func splitPath(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
