package test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluicehq/sluice/config"
)

// agentProc is a `sluice agent` process a test started.
type agentProc struct {
	t    testing.TB
	cmd  *exec.Cmd
	Path string      // the config file
	Logs *syncBuffer // its stdout and stderr
	// exited is closed once the process has been waited for; err is then
	// Wait's error.
	exited chan struct{}
	err    error
}

// startAgentProc writes cfg to dir/config.yaml and starts `sluice agent
// --config dir/config.yaml args…`. The process is killed at the end of the
// test if it still runs.
func startAgentProc(t testing.TB, cfg config.Config, dir string, args ...string) *agentProc {
	t.Helper()
	return startAgentProcIn(t, nil, cfg, dir, args...)
}

// startAgentProcIn is startAgentProc with the agent started inside cg
// (nil: the test's own cgroup).
func startAgentProcIn(t testing.TB, cg *Cgroup, cfg config.Config, dir string, args ...string) *agentProc {
	t.Helper()
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &agentProc{t: t, Path: filepath.Join(dir, "config.yaml"), Logs: &syncBuffer{}, exited: make(chan struct{})}
	if err := os.WriteFile(a.Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(sluiceBin, append([]string{"agent", "--config", a.Path}, args...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.Logs, a.Logs
	done := func() {}
	if cg != nil {
		done = cg.Command(t, a.cmd)
	}
	err = a.cmd.Start()
	done()
	if err != nil {
		t.Fatal(err)
	}
	go func() { a.err = a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	})
	return a
}

// PID is the agent's process id.
func (a *agentProc) PID() int { return a.cmd.Process.Pid }

// stop interrupts the agent and waits up to 15s for it to exit, failing
// the test if it does not; it returns the process's exit error.
func (a *agentProc) stop() error {
	a.t.Helper()
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.exited:
		return a.err
	case <-time.After(15 * time.Second):
		a.t.Fatalf("sluice agent did not exit on SIGINT:\n%s", a.Logs.String())
		return nil
	}
}

// syncBuffer is a bytes.Buffer safe for a writing process and a reading test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
