package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Run runs the command and returns its exit code: the child's own, or
// 128+N when a signal N ended it. err is set only when the child could not
// be started or the cgroup could not be prepared.
func Run(ctx context.Context, o Options) (int, error) {
	if len(o.Argv) == 0 {
		return 2, errors.New("run: no command given; usage: sluice run [flags] -- CMD ARGS…")
	}
	cg, err := newCgroup(o.Cgroup2Mount)
	if err != nil {
		return 1, err
	}
	defer cg.remove()

	if o.Intercept != nil {
		if err := o.Intercept(ctx, cg.path, cg.dir); err != nil {
			return 1, fmt.Errorf("intercept cgroup %s: %w", cg.path, err)
		}
	}

	dirFD, err := os.Open(cg.dir)
	if err != nil {
		return 1, fmt.Errorf("open cgroup %s: %w", cg.dir, err)
	}
	defer dirFD.Close()

	bundle := o.CABundle
	if bundle == "" && len(o.CAPEM) > 0 {
		dir, err := os.MkdirTemp("", "sluice-run-")
		if err != nil {
			return 1, fmt.Errorf("create CA bundle directory: %w", err)
		}
		defer os.RemoveAll(dir)
		if bundle, err = WriteBundle(dir, o.CAPEM); err != nil {
			return 1, err
		}
	}

	path, err := exec.LookPath(o.Argv[0])
	if err != nil {
		return 127, fmt.Errorf("run %s: %w", o.Argv[0], err)
	}
	cmd := exec.Command(path, o.Argv[1:]...)
	cmd.Args[0] = o.Argv[0]
	cmd.Env = childEnv(o.Env, bundle)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(dirFD.Fd()),
		// Should sluice die (even by SIGKILL), the command dies with it:
		// it never runs on once the hooks are gone.
		Pdeathsig: syscall.SIGKILL,
	}
	started, waited := startLocked(cmd)
	if err := <-started; err != nil {
		return 126, fmt.Errorf("start %s in cgroup %s: %w", o.Argv[0], cg.path, err)
	}
	werr := stop(ctx, cmd.Process, waited, o)
	return exitCode(cmd, werr), nil
}

// startLocked starts cmd from a goroutine locked to its OS thread until
// the child has been waited for: the kernel sends Pdeathsig when the
// thread that forked the child exits, not the process, and the Go runtime
// may end an idle thread. started receives Start's error; waited, when
// Start succeeded, Wait's.
func startLocked(cmd *exec.Cmd) (started, waited <-chan error) {
	s, w := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		s <- err
		if err != nil {
			return
		}
		w <- cmd.Wait()
	}()
	return s, w
}

// signaler is the part of os.Process that stop uses.
type signaler interface{ Signal(os.Signal) error }

// stop waits for the child. When ctx ends first (SIGINT or SIGTERM to
// sluice), it gives the child InterruptWait to exit by itself, as a
// terminal's Ctrl-C reached the child too, then sends SIGTERM, and SIGKILL
// after StopGrace. It returns Wait's error.
func stop(ctx context.Context, p signaler, waited <-chan error, o Options) error {
	select {
	case err := <-waited:
		return err
	case <-ctx.Done():
	}
	interrupt, grace := o.waits()
	select {
	case err := <-waited:
		return err
	case <-time.After(interrupt):
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case err := <-waited:
		return err
	case <-time.After(grace):
	}
	_ = p.Signal(syscall.SIGKILL)
	return <-waited
}

func exitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		if err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}
