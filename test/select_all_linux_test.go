package test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
)

// "Every cgroup but the agent's" is agent.cgroups: ["/**"]. On this
// shared machine the test selects a subtree of its own the same way,
// with the agent inside it: ["/sluice-test-X/**"]. The agent leaves out
// its own cgroup and does not attach at an ancestor of it (hooks there
// would cover the agent), but at every other cgroup, including one that
// appears while it runs.
func TestAgentSelectsEveryCgroupButItsOwn(t *testing.T) {
	RequireE2E(t)
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	top := NewCgroup(t, mount)
	own := top.Child(t, "agent")
	work := top.Child(t, "work")
	nested := work.Child(t, "job")

	dir := t.TempDir()
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = "none"
	cfg.Agent = testAgentConfig()
	cfg.Agent.Cgroups = []string{top.Path + "/**"}
	cfg.Admin.Listen = "127.0.0.1:0"
	t.Cleanup(func() { _ = agent.Cleanup(cfg.Agent, nil) })
	proc := startAgentProcIn(t, own, cfg, dir)

	hooked := func(cg *Cgroup) bool {
		for range 100 {
			if cgroupHooks(t, cg.Dir) == 5 {
				return true
			}
			time.Sleep(100 * time.Millisecond)
		}
		return false
	}
	if !hooked(work) {
		t.Fatalf("no hooks on %s, a cgroup next to the agent's:\n%s", work.Path, proc.Logs.String())
	}
	late := top.Child(t, "late")
	if !hooked(late) {
		t.Errorf("no hooks on %s, created while the agent runs:\n%s", late.Path, proc.Logs.String())
	}
	for _, cg := range []*Cgroup{top, own} {
		if n := cgroupHooks(t, cg.Dir); n != 0 {
			t.Errorf("%d hooks on %s, which holds the agent: its own connects would be redirected to itself", n, cg.Path)
		}
	}
	// Hooks on work cover the cgroups below it: none of their own.
	if n := cgroupHooks(t, nested.Dir); n != 0 {
		t.Errorf("%d hooks on %s, below the hooked %s", n, nested.Path, work.Path)
	}
	if logs := proc.Logs.String(); !strings.Contains(logs, "not attaching to an ancestor of the agent's own cgroup") {
		t.Errorf("the agent did not say why %s has no hooks:\n%s", top.Path, logs)
	}
	if err := proc.stop(); err != nil {
		t.Fatalf("sluice agent exit: %v\n%s", err, proc.Logs.String())
	}
	for _, cg := range []*Cgroup{work, late} {
		if n := cgroupHooks(t, cg.Dir); n != 0 {
			t.Errorf("%d hooks on %s after the agent exited in failMode open", n, cg.Path)
		}
	}
}
