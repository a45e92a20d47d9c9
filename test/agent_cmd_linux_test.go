package test

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
)

// `sluice agent` in failMode closed leaves its pinned hooks on the
// selected cgroup when it exits; `sluice agent --cleanup` removes every
// hook, pin and the intercept address.
func TestAgentCommandClosedThenCleanup(t *testing.T) {
	RequireE2E(t)
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	e := &agentEnv{t: t, mount: mount, cg: NewCgroup(t, mount)}
	dir := t.TempDir()
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	cfg.Agent = testAgentConfig()
	cfg.Agent.FailMode = "closed"
	cfg.Agent.Cgroups = []string{e.cg.Path}
	cfg.Admin.Listen = "127.0.0.1:0"
	e.cfg = cfg.Agent
	t.Cleanup(func() { _ = agent.Cleanup(cfg.Agent, nil) })
	proc := startAgentProc(t, cfg, dir)
	path, logs := proc.Path, proc.Logs
	attached := false
	for i := 0; i < 100 && !attached; i++ {
		attached = cgroupHooks(t, e.cg.Dir) == 5
		if !attached {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !attached {
		t.Fatalf("sluice agent did not attach to %s:\n%s", e.cg.Dir, logs.String())
	}
	if err := proc.stop(); err != nil {
		t.Fatalf("sluice agent exit: %v\n%s", err, logs.String())
	}
	if n := cgroupHooks(t, e.cg.Dir); n != 5 {
		t.Errorf("%d hooks left after exit in failMode closed, want 5", n)
	}
	if pins, _ := filepath.Glob(filepath.Join(cfg.Agent.BPFFS, "links", "*")); len(pins) != 11 { // the 5 hooks cgroupHooks counts, setsockopt, egress, sendmsg4/6 and recvmsg4/6
		t.Errorf("pins after exit: %v, want 11", pins)
	}
	if !routedLocal(cfg.Agent.InterceptIPv4) {
		t.Errorf("intercept address %s gone after exit in failMode closed", cfg.Agent.InterceptIPv4)
	}

	out, err := exec.Command(sluiceBin, "agent", "--config", path, "--cleanup").CombinedOutput()
	if err != nil {
		t.Fatalf("sluice agent --cleanup: %v\n%s", err, out)
	}
	e.assertNothingLeft()
}
