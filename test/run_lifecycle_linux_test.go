package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
)

// cgroupLinks lists the link IDs attached directly to dir, sorted.
func cgroupLinks(t *testing.T, dir string) []link.ID {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	defer f.Close()
	var ids []link.ID
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
		ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername, ebpf.AttachCGroupSockOps} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatalf("query %s programs of %s: %v", at, dir, err)
		}
		for _, p := range r.Programs {
			id, _ := p.LinkID()
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func pinNames(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, kind := range []string{"links", "maps"} {
		ents, err := os.ReadDir(filepath.Join(dir, kind))
		if err != nil {
			t.Fatalf("list pins: %v", err)
		}
		for _, e := range ents {
			out = append(out, kind+"/"+e.Name())
		}
	}
	return out
}

// A `sluice run` while a closed-mode agent is pinned leaves that agent's
// pins, hooks and intercept address in place, and uses an intercept
// address, proxy port and pin directory of its own (never the node
// agent's defaults), all gone when it exits.
func TestRunLeavesPinnedAgentAlone(t *testing.T) {
	curl := RequireTool(t, "curl")
	e := newRunEnv(t)
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	cg := NewCgroup(t, mount)
	cfg := testAgentConfig()
	cfg.FailMode = "closed"
	t.Cleanup(func() {
		if err := agent.Cleanup(cfg, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ag, err := agent.Start(context.Background(), cfg, &recorder{}, log, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.SelectCgroup(cg.Path); err != nil {
		ag.Close()
		t.Fatal(err)
	}
	ag.Close() // closed mode: pins, hooks and address stay
	pins, hooks := pinNames(t, cfg.BPFFS), cgroupLinks(t, cg.Dir)
	if len(hooks) != 5 || len(pins) == 0 {
		t.Fatalf("pinned agent: hooks %v, pins %v", hooks, pins)
	}

	resolve := "api.test:443:" + e.api.IP4.String()
	code, out, errOut := e.runFlags(t, []string{"-v"}, curl, "-sS", "--resolve", resolve, "https://api.test/v1/isolated")
	if code != 0 || !strings.HasPrefix(out, "hello GET /v1/isolated from the API") {
		t.Fatalf("curl exit %d: %q\n%s", code, out, errOut)
	}
	m := regexp.MustCompile(`msg="agent started".* intercept4=(\S+) intercept6=(\S+) proxy_port=(\d+)`).FindStringSubmatch(errOut)
	if m == nil {
		t.Fatalf("no agent start line in:\n%s", errOut)
	}
	v4, v6 := netip.MustParseAddr(m[1]), netip.MustParseAddr(m[2])
	port, _ := strconv.Atoi(m[3])
	node := config.DefaultAgent()
	if v4 == node.InterceptIPv4 || v4 == cfg.InterceptIPv4 || v6 == node.InterceptIPv6 || v6 == cfg.InterceptIPv6 {
		t.Errorf("sluice run used an agent's intercept address: %v %v", v4, v6)
	}
	if port == int(node.ProxyPort) {
		t.Errorf("sluice run used the node agent's proxy port %d", port)
	}
	if _, err := os.Stat(node.BPFFS); err == nil {
		t.Errorf("sluice run created the node agent's pin directory %s", node.BPFFS)
	}
	if left, _ := filepath.Glob("/sys/fs/bpf/sluice-run-*"); len(left) != 0 {
		t.Errorf("sluice run left its pin directory: %v", left)
	}
	if routedLocal(v4) || routedLocal(v6) {
		t.Errorf("sluice run left its intercept address %v / %v", v4, v6)
	}

	if got := pinNames(t, cfg.BPFFS); !slices.Equal(got, pins) {
		t.Errorf("pins of the pinned agent changed: %v, was %v", got, pins)
	}
	if got := cgroupLinks(t, cg.Dir); !slices.Equal(got, hooks) {
		t.Errorf("hooks of the pinned agent changed: %v, was %v", got, hooks)
	}
	if !routedLocal(cfg.InterceptIPv4) {
		t.Errorf("the pinned agent's intercept address %v was removed", cfg.InterceptIPv4)
	}
}

// runSignalled starts `sluice run -- argv` in a process group of its
// own, as a shell would, waits for the command to print "ready", sends
// sig to the whole group (a terminal's Ctrl-C) and returns sluice's exit
// code and the command's output.
func runSignalled(t *testing.T, sig syscall.Signal, argv ...string) (int, string) {
	t.Helper()
	RequireE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sluiceBin, append([]string{"run", "--no-summary", "--"}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("command did not get ready: %q %v\n%s", line, err, stderr.String())
	}
	if err := syscall.Kill(-pgid, sig); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	err = cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sluice run: %v\n%s", err, stderr.String())
	}
	return code, string(rest)
}

// Ctrl-C reaches the command and sluice alike: sluice lets the command
// handle it (here a trap that cleans up for a while) and passes its own
// exit code through, instead of cutting the cleanup short with SIGTERM.
func TestRunInterruptLetsCommandFinish(t *testing.T) {
	code, out := runSignalled(t, syscall.SIGINT, "sh", "-c",
		`trap 'sleep 0.5; echo cleaned; exit 5' INT; echo ready; while :; do sleep 0.1; done`)
	if code != 5 || out != "cleaned\n" {
		t.Fatalf("exit %d, output %q; want 5 and the trap's output", code, out)
	}
}

// A command that Ctrl-C ends reports 130 (128+SIGINT).
func TestRunInterruptExitCode(t *testing.T) {
	code, _ := runSignalled(t, syscall.SIGINT, "sh", "-c", `echo ready; exec sleep 30`)
	if code != 130 {
		t.Fatalf("exit %d, want 130", code)
	}
}

// A command that ignores Ctrl-C gets SIGTERM after the wait (143).
func TestRunIgnoredInterruptGetsTerm(t *testing.T) {
	code, _ := runSignalled(t, syscall.SIGINT, "sh", "-c", `trap '' INT; echo ready; exec sleep 30`)
	if code != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit %d, want %d", code, 128+int(syscall.SIGTERM))
	}
}

// Killing sluice (SIGKILL, no cleanup of its own) kills the command: it
// never runs on without its interception.
func TestRunCommandDiesWithSluice(t *testing.T) {
	RequireE2E(t)
	// Explicit intercept settings, so that what SIGKILL leaves behind is
	// known and removed.
	cfg := testAgentConfig()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config.yaml")
	yml := fmt.Sprintf("ca:\n  dir: %s\nagent:\n  interceptIPv4: %s\n  interceptIPv6: %s\n  bpffs: %s\n  proxyPort: %d\n",
		filepath.Join(dir, "ca"), cfg.InterceptIPv4, cfg.InterceptIPv6, cfg.BPFFS, cfg.ProxyPort)
	if err := os.WriteFile(cfgFile, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := agent.Cleanup(cfg, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sluiceBin, "run", "--config", cfgFile, "--no-summary", "--", "sh", "-c", `echo $$; exec sleep 30`)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sluicePID := cmd.Process.Pid
	line, err := bufio.NewReader(stdout).ReadString('\n')
	child, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child pid: %q %v %v", line, err, perr)
	}
	// The run's cgroup outlives a killed sluice: remove it (its processes
	// are the test's own).
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	cgDir := childCgroupDir(t, mount, child)
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(cgDir, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 50; i++ {
			if err := os.Remove(cgDir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove run cgroup %s: still busy", cgDir)
	})
	if !strings.Contains(cgDir, fmt.Sprintf("sluice-run-%d-", sluicePID)) {
		t.Fatalf("command runs in %s, not the run's cgroup", cgDir)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for i := 0; i < 100; i++ {
		if !alive(child) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("command (pid %d) still running after sluice was killed", child)
}

// childCgroupDir is the cgroup v2 directory of pid.
func childCgroupDir(t *testing.T, mount string, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return filepath.Join(mount, p)
		}
	}
	t.Fatalf("no cgroup v2 entry for pid %d: %s", pid, b)
	return ""
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// `sluice run … 2>&1 | head -1`: the reader of sluice's stdout and
// stderr goes away while the command runs. Sluice is not killed by
// SIGPIPE: it passes the command's own exit code through (141, the
// command's SIGPIPE) and removes its CA bundle directory and pins.
func TestRunClosedOutputLeavesNothing(t *testing.T) {
	RequireE2E(t)
	tmp := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sluiceBin, "run", "--", "sh", "-c", "echo one; sleep .3; echo two")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "SLUICE_CA_DIR="+filepath.Join(t.TempDir(), "ca"))
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	line, err := bufio.NewReader(r).ReadString('\n')
	r.Close() // head -1
	if line != "one\n" {
		t.Errorf("first line %q (%v), want \"one\"", line, err)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("sluice killed by %v", ws.Signal())
	}
	if code := cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGPIPE) {
		t.Errorf("exit %d (%v), want %d: the command's SIGPIPE passed through", code, err, 128+int(syscall.SIGPIPE))
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("sluice run left %v in its TMPDIR", left)
	}
	if _, err := os.Stat(fmt.Sprintf("/sys/fs/bpf/sluice-run-%d", cmd.Process.Pid)); err == nil {
		t.Errorf("sluice run left its pin directory")
	}
}
