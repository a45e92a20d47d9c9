package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkConnectHook measures what the connect hooks cost, under `sluice
// run`: the kernel's time per run of the cgroup connect4 program
// (ProgramStats with kernel.bpf_stats_enabled=1, restored afterwards) and
// sluice's CPU time per connect event (utime+stime of the sluice process,
// which reads the ring buffer and holds the proxy). Two kinds of connect:
// a UDP connect to a port other than 53 (not redirected: the program
// decides "direct" and emits an event, the agent reads it, no packet
// leaves), and a TCP connect to the API's port 443 (redirected to the
// proxy, which accepts it and sees it closed). The workload is this test
// binary in connectLoop mode, b.N connects per kind (make bench uses
// -benchtime 20000x). Root only (SLUICE_E2E=1).
//
// SLUICE_BENCH_SLUICE=PATH runs that sluice binary instead of the suite's
// build (to compare a build of main with a change within one run, or to
// profile a -tags pprof build, which serves pprof on SLUICE_PPROF).
// SLUICE_BENCH_CONNECTS=udp-direct (or tcp-redirected) runs that kind
// only, e.g. many unredirected connects to measure the agent's CPU per
// event finer than the 10 ms tick of the process's CPU time.
// SLUICE_BENCH_AUDIT_FLUSH=100ms sets audit.flushInterval (by default
// each batch of event records is written at once).
func BenchmarkConnectHook(b *testing.B) {
	e := newRunEnv(b)
	if d := os.Getenv("SLUICE_BENCH_AUDIT_FLUSH"); d != "" {
		f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, err = fmt.Fprintf(f, "audit:\n  flushInterval: %s\n", d)
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			b.Fatalf("set audit.flushInterval: %v", err)
		}
	}
	restore := setSysctl(b, "kernel/bpf_stats_enabled", "1")
	defer restore()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := sluiceBin
	if p := os.Getenv("SLUICE_BENCH_SLUICE"); p != "" {
		bin = p
	}
	cmd := exec.CommandContext(ctx, bin, "run", "--config", e.config, "--policy", e.policy,
		"--audit-log", filepath.Join(b.TempDir(), "audit.jsonl"), "--", self)
	cmd.Env = append(os.Environ(), "SLUICE_E2E_CONNECT_LOOP=1")
	stdin, _ := cmd.StdinPipe()
	stdoutPipe, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("sluice run: %v\n%s", err, stderr.String())
		}
	}()
	out := bufio.NewReader(stdoutPipe)
	expect := func(want string) {
		line, err := out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != want {
			b.Fatalf("connect loop said %q (%v), want %q; sluice:\n%s", line, err, want, stderr.String())
		}
	}
	expect("ready")
	progs := connectPrograms(b, cmd.Process.Pid)
	api := e.api.IP4.String()
	b.ResetTimer()
	for _, kind := range []struct{ name, spec string }{
		{"udp-direct", "udp " + api + ":9"},
		{"tcp-redirected", "tcp " + api + ":443"},
	} {
		if only := os.Getenv("SLUICE_BENCH_CONNECTS"); only != "" && only != kind.name {
			continue
		}
		before := programStats(b, progs)
		cpu0 := procCPU(b, cmd.Process.Pid)
		fmt.Fprintf(stdin, "%s %d\n", kind.spec, b.N)
		expect("done")
		time.Sleep(300 * time.Millisecond) // let the agent drain the ring buffer
		cpu := procCPU(b, cmd.Process.Pid) - cpu0
		after := programStats(b, progs)
		for name, a := range after {
			runs := a.RunCount - before[name].RunCount
			if runs == 0 {
				continue
			}
			ns := float64(a.Runtime-before[name].Runtime) / float64(runs)
			b.ReportMetric(ns, kind.name+"/"+name+"-ns/run")
			b.Logf("%s: %s %.0f ns per run over %d runs", kind.name, name, ns, runs)
		}
		perConnect := float64(cpu.Nanoseconds()) / float64(b.N) / 1000
		b.ReportMetric(perConnect, kind.name+"/sluice-cpu-us/connect")
		b.Logf("%s: sluice CPU %.1f µs per connect (%v for %d)", kind.name, perConnect, cpu, b.N)
	}
}

// connectPrograms finds the ids of the connect4/6 programs the sluice
// process pid holds open (its fds of kind bpf-prog).
func connectPrograms(t testing.TB, pid int) map[string]*ebpf.Program {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	progs := map[string]*ebpf.Program{}
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			v, ok := strings.CutPrefix(line, "prog_id:")
			if !ok {
				continue
			}
			id, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err != nil {
				continue
			}
			info, err := p.Info()
			if err != nil || (info.Name != "sluice_connect4" && info.Name != "sluice_connect6") {
				p.Close()
				continue
			}
			progs[info.Name] = p
			t.Cleanup(func() { p.Close() })
		}
	}
	if progs["sluice_connect4"] == nil {
		t.Fatalf("sluice (pid %d) holds no connect4 program", pid)
	}
	return progs
}

func programStats(t testing.TB, progs map[string]*ebpf.Program) map[string]ebpf.ProgramStats {
	t.Helper()
	out := map[string]ebpf.ProgramStats{}
	for name, p := range progs {
		s, err := p.Stats()
		if err != nil {
			t.Fatalf("stats of %s: %v", name, err)
		}
		out[name] = *s
	}
	return out
}

// procCPU is the user and system time process pid has used.
func procCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the comm, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)        // field 14 of stat
	st, _ := strconv.ParseInt(f[12], 10, 64)        // field 15
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// connectLoop is the workload of BenchmarkConnectHook: after "ready", for
// each line "udp|tcp ADDR N" of stdin it makes N connects (a UDP connect
// sends nothing; a TCP connection is closed at once with a reset, so no
// TIME_WAIT piles up) and says "done". It stops at the end of stdin or
// after a connect fails.
func connectLoop() int {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var network, addr string
		var n int
		if _, err := fmt.Sscan(in.Text(), &network, &addr, &n); err != nil {
			fmt.Fprintln(os.Stderr, "connect loop:", err)
			return 2
		}
		for range n {
			c, err := net.DialTimeout(network, addr, 5*time.Second)
			if err != nil {
				fmt.Fprintln(os.Stderr, "connect loop:", err)
				return 1
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
		fmt.Println("done")
	}
	if err := in.Err(); err != nil && err != io.EOF {
		return 1
	}
	return 0
}
