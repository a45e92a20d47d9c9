package cgroup2

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Problems Compile reports, wrapped with the pattern; test with errors.Is.
// A malformed character class wraps path.ErrBadPattern.
var (
	ErrNotAbsolute = errors.New(`must start with "/" (relative to the cgroup2 mount), e.g. "/kubepods.slice/**"`)
	ErrDoubleStar  = errors.New(`"**" must be a whole segment, e.g. "/a/**/b"`)
)

// Glob is a cgroup path pattern relative to the cgroup2 mount: "/"
// separated segments where "*", "?" and "[…]" match within one segment (as
// path.Match) and a "**" segment matches zero or more whole segments.
//
// Empty segments are ignored in the pattern and in the path, as the kernel
// ignores them when it resolves a path: "/a//b" is "/a/b", "/a/" is "/a",
// and "*" never matches an empty segment. The zero Glob matches nothing.
type Glob struct {
	src  string
	segs []string
}

// Compile checks pattern and returns its Glob.
func Compile(pattern string) (Glob, error) {
	if !strings.HasPrefix(pattern, "/") {
		return Glob{}, fmt.Errorf("cgroup glob %q: %w", pattern, ErrNotAbsolute)
	}
	segs := split(pattern)
	for _, s := range segs {
		if s == "**" {
			continue
		}
		if strings.Contains(s, "**") {
			return Glob{}, fmt.Errorf("cgroup glob %q: %w", pattern, ErrDoubleStar)
		}
		if _, err := path.Match(s, ""); err != nil {
			return Glob{}, fmt.Errorf("cgroup glob %q: segment %q: %w", pattern, s, err)
		}
	}
	return Glob{src: pattern, segs: segs}, nil
}

// String returns the pattern as given to Compile.
func (g Glob) String() string { return g.src }

// Match reports whether the cgroup path p (relative to the mount, starting
// with "/") matches g.
func (g Glob) Match(p string) bool {
	if g.src == "" {
		return false
	}
	return matchSegs(g.segs, split(p))
}

// Match reports whether the cgroup path p matches pattern, with the
// semantics of Glob. A pattern that does not compile matches nothing.
func Match(pattern, p string) bool {
	g, err := Compile(pattern)
	return err == nil && g.Match(p)
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
			found := false
			for j := len(p); j >= 0; j-- {
				found = found || next[j]
				ok[j] = found
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

// split splits a slash path into its non-empty segments.
func split(p string) []string {
	out := []string{}
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
