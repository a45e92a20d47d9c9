package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
)

// leakPy connects to argv[1]:argv[2] once it reads a line on stdin (it
// prints "ready" first, so the test decides the moment of the connect),
// sends "LEAK argv[3]", and prints its pid, what it read and any error as
// JSON.
const leakPy = `
import errno, json, os, socket, sys
dst, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
print("ready", flush=True)
sys.stdin.readline()
out = {"pid": os.getpid(), "data": ""}
def name(e):
    return errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect((dst, port))
except OSError as e:
    out["errno"] = name(e)
else:
    data = b""
    try:
        s.sendall(("LEAK " + marker + "\n").encode())
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except OSError as e:
        out["after"] = name(e)
    out["data"] = data.decode()
print(json.dumps(out))
`

type leakResult struct {
	PID   int    `json:"pid"`
	Data  string `json:"data"`
	Errno string `json:"errno"` // the connect failed
	After string `json:"after"` // an error after the connect succeeded
}

// trap is a test host placed where a redirected connect that escaped the
// node would land: it holds the intercept addresses itself, the root
// namespace routes them to it (a /31 and a /127, standing in for the
// default route of a real node, and less specific than the agent's
// guards), and it logs every byte it receives on the proxy port.
type trap struct {
	t      *testing.T
	mu     sync.Mutex
	got    []string // "peer: bytes" per connection
	routes []*netlink.Route
}

func newTrap(t *testing.T, h *Host, port uint16, addrs ...netip.Addr) *trap {
	t.Helper()
	tr := &trap{t: t}
	for _, a := range addrs {
		bits := "/32"
		fam := "-4"
		if a.Is6() {
			bits, fam = "/128", "-6"
		}
		args := []string{"-n", h.Name, fam, "addr", "add", a.String() + bits, "dev", "lo"}
		if a.Is6() {
			args = append(args, "nodad")
		}
		run(t, append([]string{"ip"}, args...)...)
		// Created here, removed here: nothing else routes these.
		gw := h.IP4
		if a.Is6() {
			gw = h.IP6
		}
		pfx := netip.PrefixFrom(a, a.BitLen()-1).Masked()
		r := &netlink.Route{Dst: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), a.BitLen())}, Gw: gw.AsSlice()}
		if err := netlink.RouteAdd(r); err != nil {
			t.Fatalf("route %s via the trap %s: %v", pfx, gw, err)
		}
		tr.routes = append(tr.routes, r)
		t.Cleanup(func() { _ = netlink.RouteDel(r) })
	}
	ln := h.Listen(t, netip.AddrPortFrom(netip.IPv6Unspecified(), port))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			line := fmt.Sprintf("%s: %q", c.RemoteAddr(), b)
			t.Logf("trap received from %s", line)
			tr.mu.Lock()
			tr.got = append(tr.got, line)
			tr.mu.Unlock()
		}
	}()
	return tr
}

func (tr *trap) received() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.got...)
}

// startLeak starts leakPy in host's namespace (in the test cgroup when
// inCgroup); connect makes it connect and returns its result.
func (e *agentEnv) startLeak(host int, inCgroup bool, dst netip.AddrPort, marker string) (connect func() leakResult) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	cmd := e.tp.Hosts[host].Exec(ctx, "python3", "-c", leakPy, dst.Addr().String(), fmt.Sprint(dst.Port()), marker)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	done := func() {}
	if inCgroup {
		done = e.cg.Command(e.t, cmd)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		e.t.Fatalf("start client: %v", err)
	}
	done()
	rd := bufio.NewReader(stdout)
	if line, err := rd.ReadString('\n'); err != nil || line != "ready\n" {
		cancel()
		e.t.Fatalf("client did not start: %q %v %s", line, err, errb.String())
	}
	return func() leakResult {
		defer cancel()
		fmt.Fprintln(stdin, "go")
		out, _ := io.ReadAll(rd)
		if err := cmd.Wait(); err != nil {
			e.t.Fatalf("client: %v: %s", err, errb.String())
		}
		var r leakResult
		if err := json.Unmarshal(out, &r); err != nil {
			e.t.Fatalf("client output %q: %v (stderr %s)", out, err, errb.String())
		}
		return r
	}
}

func (e *agentEnv) leak(host int, inCgroup bool, dst netip.AddrPort, marker string) leakResult {
	e.t.Helper()
	return e.startLeak(host, inCgroup, dst, marker)()
}

// interceptState is what the kernel has of an intercept address's setup.
type interceptState struct {
	local     bool // routed as local
	mainGuard bool // unreachable route in the main table
	tabGuard  bool // unreachable route in agent.GuardTable
	rule      bool // a rule "to a lookup agent.GuardTable"
}

func (s interceptState) whole() bool { return s.local && s.mainGuard && s.tabGuard && s.rule }
func (s interceptState) none() bool  { return !s.mainGuard && !s.tabGuard && !s.rule }

func stateOf(t *testing.T, a netip.Addr) interceptState {
	t.Helper()
	s := interceptState{local: routedLocal(a)}
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	for _, table := range []int{unix.RT_TABLE_MAIN, agent.GuardTable} {
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: prefixNet(a), Table: table}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Error(err) // not Fatal: waitRestored calls this off the test goroutine
		}
		for _, r := range rs {
			if r.Type == unix.RTN_UNREACHABLE {
				if table == unix.RT_TABLE_MAIN {
					s.mainGuard = true
				} else {
					s.tabGuard = true
				}
			}
		}
	}
	s.rule = len(guardRulesOf(t, a)) > 0
	return s
}

func guardRulesOf(t *testing.T, a netip.Addr) []netlink.Rule {
	t.Helper()
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	rules, err := netlink.RuleList(fam)
	if err != nil {
		t.Error(err)
	}
	var out []netlink.Rule
	for _, r := range rules {
		if r.Table == agent.GuardTable && r.Dst != nil && r.Dst.String() == prefixNet(a).String() {
			out = append(out, r)
		}
	}
	return out
}

// removeIntercept does what took the address away under a running agent:
// as root in the node's namespace, it deletes the intercept address a
// (placed by this test's own agent, on a test-only address) and the
// main-table guard route.
func removeIntercept(t *testing.T, a netip.Addr) {
	t.Helper()
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, fam)
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if ip, _ := netip.AddrFromSlice(ad.IP); ip.Unmap() != a {
			continue
		}
		l, err := netlink.LinkByIndex(ad.LinkIndex)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrDel(l, &ad); err != nil {
			t.Fatalf("remove intercept address %s: %v", a, err)
		}
	}
	rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: prefixNet(a), Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Type == unix.RTN_UNREACHABLE {
			if err := netlink.RouteDel(&r); err != nil {
				t.Fatalf("remove guard route %v: %v", r, err)
			}
		}
	}
}

// waitRestored polls, from now on and for a second, until a's setup is
// whole again; the returned func waits for the outcome: the last state
// seen and when, after the call, it was seen.
func waitRestored(t *testing.T, a netip.Addr) func() (interceptState, time.Duration) {
	start := time.Now()
	var s interceptState
	var at time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s, at = stateOf(t, a), time.Since(start)
			if s.whole() || at > time.Second {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() (interceptState, time.Duration) { <-done; return s, at }
}

// waitRestorations returns the agent's count of restorations once it
// exceeds before (it is counted when the whole repair is done, just after
// the kernel shows it), or after a second.
func (e *agentEnv) waitRestorations(before uint64) uint64 {
	n := e.ag.Restorations()
	for i := 0; i < 100 && n <= before; i++ {
		time.Sleep(10 * time.Millisecond)
		n = e.ag.Restorations()
	}
	return n
}

// refused reports whether a connect failed on the node.
func refused(r leakResult) bool {
	switch r.Errno {
	case "EHOSTUNREACH", "ENETUNREACH", "ECONNREFUSED", "EPERM":
		return true
	}
	return false
}

// The intercept address never goes missing silently. Root on the node
// deletes the address and its guard route under a running agent, while
// the node routes the address off the node (to a trap host that logs
// every byte): a workload's redirected connect made in the gap fails on
// the node or reaches the proxy, never the trap; Ready names what is
// missing while it is; the agent puts everything back within a second,
// counts it, and is ready again. With the agent stopped in failMode
// closed, nothing restores the address, and the guard rule alone keeps
// connects on the node.
func TestInterceptAddressRestored(t *testing.T) {
	e := newAgentEnv(t)
	e.cfg.FailMode = "closed"
	up, tr := e.tp.Hosts[1], e.tp.Hosts[2]
	v4, v6 := e.cfg.InterceptIPv4, e.cfg.InterceptIPv6
	trap := newTrap(t, tr, e.cfg.ProxyPort, v4, v6)

	// The trap works: without an agent, a connect to the intercept
	// address leaves for it.
	for _, a := range []netip.Addr{v4, v6} {
		r := e.leak(0, false, netip.AddrPortFrom(a, e.cfg.ProxyPort), "control")
		if r.Errno != "" {
			t.Fatalf("control connect to %s through the trap route: %+v", a, r)
		}
	}
	if got := trap.received(); len(got) != 2 {
		t.Fatalf("the trap saw %v, want the two control connections", got)
	}
	controls := 2

	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{v4, v6} {
		if s := stateOf(t, a); !s.whole() {
			t.Fatalf("after start, %s: %+v, want the address local with both guard routes and the rule", a, s)
		}
	}
	if err := e.ag.Ready(); err != nil {
		t.Fatalf("Ready after start: %v", err)
	}

	tests := []struct {
		name string
		addr netip.Addr
		dst  netip.AddrPort
	}{
		{"ipv4", v4, netip.AddrPortFrom(up.IP4, 80)},
		{"ipv6", v6, netip.AddrPortFrom(up.IP6, 443)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.ag.Restorations()
			connect := e.startLeak(0, true, tt.dst, tt.name)
			removed := time.Now()
			removeIntercept(t, tt.addr)
			err := e.ag.Ready()
			restored := waitRestored(t, tt.addr)
			r := connect()
			t.Logf("Ready in the gap: %v; connect in the gap (%v after the removal): %+v", err, time.Since(removed), r)
			// The watcher may have put the address back already (within
			// tens of ms); Ready must still name what is missing of it.
			if err == nil || !strings.Contains(err.Error(), tt.addr.String()) {
				t.Errorf("Ready while the address was missing: %v, want an error naming what is missing of %s", err, tt.addr)
			}
			if !refused(r) && r.Data != "proxied "+tt.dst.String() {
				t.Errorf("connect in the gap: %+v, want refused on the node or proxied", r)
			}
			if s, at := restored(); !s.whole() {
				t.Fatalf("%v after the removal, %s: %+v; want everything restored within a second", at, tt.addr, s)
			}
			if n := e.waitRestorations(before); n <= before {
				t.Errorf("restorations %d, want more than %d", n, before)
			}
			if err := e.ag.Ready(); err != nil {
				t.Errorf("Ready after the restore: %v", err)
			}
			if r := e.leak(0, true, tt.dst, "after"); r.Data != "proxied "+tt.dst.String() {
				t.Errorf("connect after the restore: %+v", r)
			}
		})
	}

	// The guard rule and its table's route alone: the address stays, the
	// agent puts them back within a second and Ready names them meanwhile.
	t.Run("guard rule", func(t *testing.T) {
		before := e.ag.Restorations()
		removed := time.Now()
		for _, r := range guardRulesOf(t, v4) {
			if err := netlink.RuleDel(&r); err != nil {
				t.Fatalf("remove guard rule %v: %v", r, err)
			}
		}
		err := e.ag.Ready()
		if err == nil || !strings.Contains(err.Error(), "guard rule to "+v4.String()) {
			t.Errorf("Ready while the rule was missing: %v, want an error naming it", err)
		}
		if s, at := waitRestored(t, v4)(); !s.whole() {
			t.Fatalf("%v after the removal, %s: %+v; want the rule restored within a second", at, v4, s)
		}
		t.Logf("rule restored within %v", time.Since(removed))
		if n := e.waitRestorations(before); n <= before {
			t.Errorf("restorations %d, want more than %d", n, before)
		}
	})

	// Agent stopped, failMode closed: the hooks stay, nothing restores
	// the address; the guard rule keeps connects on the node even though
	// the main table now routes the address to the trap.
	e.stop()
	removeIntercept(t, v4)
	removeIntercept(t, v6)
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP6, 443)} {
		if r := e.leak(0, true, dst, "stopped"); !refused(r) {
			t.Errorf("connect to %s with the agent stopped and its address gone: %+v, want refused on the node", dst, r)
		}
	}
	if got := trap.received(); len(got) != controls {
		t.Errorf("the trap received %v from workloads: redirected connects left the node", got[controls:])
	}
	if d := e.directConns(); len(d) != 0 {
		t.Errorf("upstream saw direct connections %v", d)
	}

	// A new agent puts everything back; cleanup then removes the rules
	// and both tables' routes too.
	e.start()
	for _, a := range []netip.Addr{v4, v6} {
		if s := stateOf(t, a); !s.whole() {
			t.Errorf("after restart, %s: %+v", a, s)
		}
	}
	e.stop()
	if err := agent.Cleanup(e.cfg, nil); err != nil {
		t.Fatal(err)
	}
	e.assertNothingLeft()
	for _, a := range []netip.Addr{v4, v6} {
		if s := stateOf(t, a); s.local || !s.none() {
			t.Errorf("after cleanup, %s: %+v, want nothing", a, s)
		}
	}
}

// While a `sluice agent` process runs, neither agent.Cleanup nor
// `sluice agent --cleanup` nor a second agent with the same settings
// removes or replaces its address, guards or pins: each refuses, naming
// the live agent's pid and --force. Forced, cleanup goes ahead; once the
// agent has exited, an ordinary cleanup does.
func TestCleanupRefusesLiveAgent(t *testing.T) {
	RequireE2E(t)
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	cg := NewCgroup(t, mount)
	dir := t.TempDir()
	cfg := config.Default()
	cfg.CA.Dir = filepath.Join(dir, "ca")
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	cfg.Agent = testAgentConfig()
	cfg.Agent.FailMode = "closed"
	cfg.Agent.Cgroups = []string{cg.Path}
	cfg.Admin.Listen = "127.0.0.1:0"
	t.Cleanup(func() {
		if err := agent.CleanupWith(cfg.Agent, nil, agent.CleanupOptions{Force: true}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	proc := startAgentProc(t, cfg, dir)
	path, logs, pid := proc.Path, proc.Logs, proc.PID()
	attached := false
	for i := 0; i < 100 && !attached; i++ {
		attached = cgroupHooks(t, cg.Dir) == 5
		if !attached {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !attached {
		t.Fatalf("sluice agent did not attach to %s:\n%s", cg.Dir, logs.String())
	}
	held := func(what string, err error) {
		t.Helper()
		var he *agent.HeldError
		if !errors.As(err, &he) || he.PID != pid {
			t.Fatalf("%s: %v, want a HeldError naming pid %d", what, err, pid)
		}
		msg := err.Error()
		t.Logf("%s refused: %s", what, msg)
		for _, want := range []string{fmt.Sprintf("pid %d", pid), "intercept address " + cfg.Agent.InterceptIPv4.String(), "pins under " + cfg.Agent.BPFFS, "--force"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: %q lacks %q", what, msg, want)
			}
		}
	}
	intact := func(when string) {
		t.Helper()
		if s := stateOf(t, cfg.Agent.InterceptIPv4); !s.whole() {
			t.Errorf("%s: %s %+v, want the live agent's address and guards intact", when, cfg.Agent.InterceptIPv4, s)
		}
		if pins, _ := filepath.Glob(filepath.Join(cfg.Agent.BPFFS, "links", "*")); len(pins) != 11 { // cgroupHooks's 5, setsockopt, egress, sendmsg4/6, recvmsg4/6
			t.Errorf("%s: pins %v, want the live agent's 11", when, pins)
		}
		if n := cgroupHooks(t, cg.Dir); n != 5 {
			t.Errorf("%s: %d hooks on the cgroup, want 5", when, n)
		}
	}

	held("agent.Cleanup", agent.Cleanup(cfg.Agent, nil))
	intact("after agent.Cleanup")

	out, err := exec.Command(sluiceBin, "agent", "--config", path, "--cleanup").CombinedOutput()
	t.Logf("sluice agent --cleanup: %v: %s", err, out)
	if err == nil || !strings.Contains(string(out), fmt.Sprintf("pid %d", pid)) || !strings.Contains(string(out), "--force") {
		t.Errorf("sluice agent --cleanup while the agent runs: %v\n%s\nwant a failure naming pid %d and --force", err, out, pid)
	}
	intact("after sluice agent --cleanup")

	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ag, err := agent.Start(context.Background(), cfg.Agent, &recorder{}, log, agent.Options{})
	if err == nil {
		ag.Close()
		t.Fatal("a second agent with the same settings started")
	}
	held("agent.Start", err)
	intact("after the refused start")

	// Forced, the pins go even though the agent lives.
	if err := agent.CleanupWith(cfg.Agent, nil, agent.CleanupOptions{Force: true}); err != nil {
		t.Fatalf("forced cleanup: %v", err)
	}
	if _, err := os.Stat(cfg.Agent.BPFFS); !os.IsNotExist(err) {
		t.Errorf("forced cleanup left %s (%v)", cfg.Agent.BPFFS, err)
	}

	if err := proc.stop(); err != nil {
		t.Errorf("sluice agent exit: %v\n%s", err, logs.String())
	}
	// Gone, it holds nothing: an ordinary cleanup removes what its
	// address watch put back after the forced cleanup.
	if out, err := exec.Command(sluiceBin, "agent", "--config", path, "--cleanup").CombinedOutput(); err != nil {
		t.Fatalf("sluice agent --cleanup after the agent exited: %v\n%s", err, out)
	}
	if s := stateOf(t, cfg.Agent.InterceptIPv4); s.local || !s.none() {
		t.Errorf("after cleanup: %+v, want nothing", s)
	}
}
