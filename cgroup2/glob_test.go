package cgroup2

import (
	"bufio"
	"errors"
	"os"
	"path"
	"strings"
	"testing"
)

// globCase is one line of testdata/glob-cases.
type globCase struct {
	pattern, path string
	want          bool
}

// readGlobCases reads testdata/glob-cases, the table the agent's and the
// policy's tests read too.
func readGlobCases(t *testing.T) []globCase {
	t.Helper()
	f, err := os.Open("testdata/glob-cases")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []globCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		if len(fs) != 3 || (fs[2] != "yes" && fs[2] != "no") {
			t.Fatalf("glob-cases:%d: want \"pattern path yes|no\", got %q", n, sc.Text())
		}
		cases = append(cases, globCase{fs[0], fs[1], fs[2] == "yes"})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cases
}

func TestGlob(t *testing.T) {
	for _, tt := range readGlobCases(t) {
		g, err := Compile(tt.pattern)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tt.pattern, err)
		}
		if got := g.Match(tt.path); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
		if got := Match(tt.pattern, tt.path); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		pattern string
		want    error
	}{
		{"kubepods.slice/**", ErrNotAbsolute},
		{"", ErrNotAbsolute},
		{"/a**/b", ErrDoubleStar},
		{"/a/b**", ErrDoubleStar},
		{"/[", path.ErrBadPattern},
		{"/a/[z-a", path.ErrBadPattern},
	}
	for _, tt := range tests {
		_, err := Compile(tt.pattern)
		if !errors.Is(err, tt.want) {
			t.Errorf("Compile(%q) = %v, want %v", tt.pattern, err, tt.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "cgroup glob \""+tt.pattern+"\": ") {
			t.Errorf("Compile(%q) error %q does not name the pattern", tt.pattern, err)
		}
		if Match(tt.pattern, "/a/b") {
			t.Errorf("Match(%q, ...): a bad pattern matched", tt.pattern)
		}
	}
	if (Glob{}).Match("/") {
		t.Error("the zero Glob matched /")
	}
}

// TestGlobManyDoubleStars: the matcher is not backtracking, so neither a
// long pattern of "**" nor a deep path gives up or blows up.
func TestGlobManyDoubleStars(t *testing.T) {
	pat := strings.Repeat("/**", 40) + "/x"
	p := strings.Repeat("/a", 100) + "/x"
	if !Match(pat, p) {
		t.Errorf("%d \"**\" segments did not match a %d-deep path", 40, 101)
	}
	if Match(pat, p+"y") {
		t.Error("matched a path whose last segment differs")
	}
}

func FuzzGlob(f *testing.F) {
	f.Add("/kubepods.slice/**", "/kubepods.slice/a/b")
	f.Add("/**/x-*.scope", "/a/x-1.scope")
	f.Fuzz(func(t *testing.T, pat, p string) {
		g, err := Compile(pat)
		if err != nil {
			return
		}
		got := g.Match(p)
		// Empty segments do not count.
		if g.Match(strings.ReplaceAll(p, "/", "//")+"/") != got {
			t.Fatalf("%q: %q and its form with doubled slashes disagree", pat, p)
		}
		// A glob without meta characters matches its own path.
		if !strings.ContainsAny(pat, `*?[\`) && !g.Match(pat) {
			t.Fatalf("%q does not match itself", pat)
		}
	})
}
