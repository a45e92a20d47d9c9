package policy

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// TestWorkloadCgroupsGlobCases runs cgroup2's glob table through a rule's
// workloads.cgroups. The agent's test reads the same table for
// agent.cgroups, so a pattern selects the same cgroups in both.
func TestWorkloadCgroupsGlobCases(t *testing.T) {
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
		pat, cg, want := fs[0], fs[1], fs[2] == "yes"
		sel := newWorkloadSel(Workloads{Cgroups: []string{pat}})
		if got := sel.match(&workload.Identity{Cgroup: cg}); got != want {
			t.Errorf("workloads.cgroups [%q] matches cgroup %q = %v, want %v", pat, cg, got, want)
		}
		n++
	}
	if n < 30 {
		t.Fatalf("read %d cases from glob-cases", n)
	}
}

// A workload whose cgroup is unknown matches no cgroups selector, not even
// "/**".
func TestWorkloadCgroupsUnknown(t *testing.T) {
	sel := newWorkloadSel(Workloads{Cgroups: []string{"/**"}})
	if sel.match(&workload.Identity{Comm: "curl"}) {
		t.Error(`"/**" matched a workload without a cgroup`)
	}
}

func TestWorkloadCgroupsValidation(t *testing.T) {
	src := "version: 1\nrules:\n- name: a\n  action: allow\n  workloads:\n    cgroups: [kubepods, '/a/b**', '/pod[', '/ok/**', '//a/']\n"
	want := []string{
		`p.yaml:6: rules[0].workloads.cgroups[0] "kubepods": a cgroup path starts with /, use "/kubepods"`,
		`p.yaml:6: rules[0].workloads.cgroups[1] "/a/b**": bad glob: use * within one segment and ** as a whole segment, e.g. /kubepods/**`,
		`p.yaml:6: rules[0].workloads.cgroups[2] "/pod[": bad glob: a [...] class or a \ escape is malformed, e.g. use /pod[0-9]/**`,
	}
	_, err := Decode([]byte(src), "p.yaml")
	var got []string
	for _, pr := range Problems(err) {
		got = append(got, pr.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
