package launch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/audit"
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

	trust := o.Trust
	if trust.Bundle == "" && len(o.CAPEM) > 0 {
		sweepTrustDirs(os.TempDir(), os.Getuid(), o.Log)
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", trustDirPrefix, os.Getpid()))
		if err != nil {
			return 1, fmt.Errorf("create CA bundle directory: %w", err)
		}
		defer os.RemoveAll(dir)
		if trust, err = WriteTrust(dir, o.CAPEM); err != nil {
			return 1, err
		}
		if trust.JavaTrustStore == "" && o.Log != nil {
			o.Log.Info("JAVA_TOOL_OPTIONS not set: the temporary directory's path holds whitespace or quotes, which JAVA_TOOL_OPTIONS cannot carry; set TMPDIR to a plain path", audit.KeyPath, dir)
		}
	}

	path, err := exec.LookPath(o.Argv[0])
	if err != nil {
		return 127, fmt.Errorf("run %s: %w", o.Argv[0], err)
	}
	cmd, waited, err := startChild(o, path, cg.path, int(dirFD.Fd()), childEnv(o.Env, trust))
	if err != nil {
		code := 126
		if cmd != nil {
			code = exitCode(cmd, <-waited)
		}
		return code, fmt.Errorf("start %s in cgroup %s: %w", o.Argv[0], cg.path, err)
	}
	werr := stop(ctx, cmd.Process, waited, o)
	return exitCode(cmd, werr), nil
}

// startChild starts the command at path: sluice itself, as the child half
// (Child), directly inside the cgroup cgroupFD names (cgroupPath below
// the cgroup2 mount), in new cgroup and
// mount namespaces, which then drops the capabilities, makes the cgroup
// mounts read-only and execs the command. Where the kernel refuses the
// namespaces it starts without them and says so at Info. It returns once
// the command runs, or with the reason it does not; cmd is then set when
// a child was started (receive from waited before reading its exit code).
func startChild(o Options, path, cgroupPath string, cgroupFD int, env []string) (cmd *exec.Cmd, waited <-chan error, err error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	newNS := true
	for {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("create status pipe: %w", err)
		}
		cmd = exec.Command("/proc/self/exe", append([]string{ChildArg, childOpts{NewNS: newNS, KeepCaps: o.KeepCaps}.String(), cgroupPath, path}, o.Argv...)...)
		cmd.Args[0] = "sluice"
		cmd.Env = env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
		cmd.ExtraFiles = []*os.File{w} // statusFD
		cmd.SysProcAttr = &syscall.SysProcAttr{
			UseCgroupFD: true,
			CgroupFD:    cgroupFD,
			// Should sluice die (even by SIGKILL), the command dies with
			// it: it never runs on once the hooks are gone.
			Pdeathsig: syscall.SIGKILL,
		}
		if newNS {
			// The cgroup namespace's root is the run's cgroup
			// (clone3 CLONE_INTO_CGROUP applies first), so the command
			// cannot name a cgroup outside it.
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWCGROUP | syscall.CLONE_NEWNS
		}
		started, wt := startLocked(cmd)
		err = <-started
		w.Close()
		if err != nil {
			r.Close()
			if newNS && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
				log.Info("command protection not in place", audit.KeyReason, fmt.Sprintf("start in new cgroup and mount namespaces: %v; started without them, so the command sees the whole cgroup hierarchy, writable where its capabilities allow", err))
				newNS = false
				continue
			}
			return nil, nil, err
		}
		err = readReport(r, log)
		r.Close()
		return cmd, wt, err
	}
}

// readReport reads the child half's report until the pipe closes (the
// exec succeeded, or the child exited): notes go to log at Info, and a
// failed setup or exec is returned.
func readReport(r io.Reader, log *slog.Logger) error {
	var errs []error
	s := bufio.NewScanner(r)
	for s.Scan() {
		kind, msg, _ := strings.Cut(s.Text(), " ")
		switch kind {
		case reportNote:
			log.Info("command protection not in place", audit.KeyReason, msg)
		case reportExec:
			num, text, _ := strings.Cut(msg, " ")
			if n, err := strconv.Atoi(num); err == nil && n != 0 {
				errs = append(errs, fmt.Errorf("exec: %w", syscall.Errno(n)))
			} else {
				errs = append(errs, fmt.Errorf("exec: %s", text))
			}
		case reportFail:
			errs = append(errs, errors.New(msg))
		}
	}
	return errors.Join(errs...)
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
