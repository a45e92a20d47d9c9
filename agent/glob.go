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

func matchSegs(pat, p []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			// Collapse runs of "**", then try every split.
			rest := pat[1:]
			for len(rest) > 0 && rest[0] == "**" {
				rest = rest[1:]
			}
			if len(rest) == 0 {
				return true
			}
			for i := 0; i <= len(p); i++ {
				if matchSegs(rest, p[i:]) {
					return true
				}
			}
			return false
		}
		if len(p) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], p[0]); !ok {
			return false
		}
		pat, p = pat[1:], p[1:]
	}
	return len(p) == 0
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
