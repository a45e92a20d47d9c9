package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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

	path, err := exec.LookPath(o.Argv[0])
	if err != nil {
		return 127, fmt.Errorf("run %s: %w", o.Argv[0], err)
	}
	cmd := exec.Command(path, o.Argv[1:]...)
	cmd.Args[0] = o.Argv[0]
	cmd.Env = childEnv(o.Env, o.CABundle)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dirFD.Fd())}
	if err := cmd.Start(); err != nil {
		return 126, fmt.Errorf("start %s in cgroup %s: %w", o.Argv[0], cg.path, err)
	}

	grace := o.StopGrace
	if grace == 0 {
		grace = 10 * time.Second
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waitErr:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case werr = <-waitErr:
		case <-time.After(grace):
			_ = cmd.Process.Kill()
			werr = <-waitErr
		}
	}
	return exitCode(cmd, werr), nil
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

