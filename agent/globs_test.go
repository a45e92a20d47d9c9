package agent

import (
	"bufio"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/cgroup2"
)

// TestGlobCases runs cgroup2's glob table through the agent's own path:
// agent.cgroups compiled by compileGlobs, a cgroup selected by matchesAny
// (what consider does for each cgroup found). The policy's test reads the
// same table, so agent.cgroups and workloads.cgroups agree.
func TestGlobCases(t *testing.T) {
	f, err := os.Open("../cgroup2/testdata/glob-cases")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fs := strings.Fields(line)
		if len(fs) != 3 {
			continue
		}
		pat, rel, want := fs[0], fs[1], fs[2] == "yes"
		globs, err := compileGlobs([]string{pat})
		if err != nil {
			t.Fatalf("compileGlobs(%q): %v", pat, err)
		}
		if got := matchesAny(globs, rel); got != want {
			t.Errorf("agent.cgroups [%q] selects %q = %v, want %v", pat, rel, got, want)
		}
		n++
	}
	if n < 30 {
		t.Fatalf("read %d cases from glob-cases", n)
	}
}

func TestCompileGlobsErrors(t *testing.T) {
	_, err := compileGlobs([]string{"/ok/**", "kubepods.slice/**", "/a**/b"})
	for _, want := range []error{cgroup2.ErrNotAbsolute, cgroup2.ErrDoubleStar} {
		if !errors.Is(err, want) {
			t.Errorf("error %v: want %v", err, want)
		}
	}
	for _, want := range []string{`agent.cgroups[1]: cgroup glob "kubepods.slice/**": must start with "/"`, `agent.cgroups[2]: cgroup glob "/a**/b"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if globs, err := compileGlobs(nil); err != nil || len(globs) != 0 {
		t.Errorf("compileGlobs(nil) = %v, %v", globs, err)
	}
}
