package test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// agentEnv is one agent test: a topology (workload namespaces 0 and 2,
// upstream namespace 1), a test cgroup, an upstream that answers
// "direct …" on the ports the tests use, and an agent whose handler
// records each connection and answers "proxied <original destination>".
type agentEnv struct {
	t     *testing.T
	mount string
	tp    *Topology
	cg    *Cgroup
	cfg   config.Agent
	rec   *recorder
	ag    *agent.Agent
	// opts are passed to agent.Start (OnEvent is set by start).
	opts agent.Options
	mu   sync.Mutex
	evs  []agent.Event
	// direct counts connections the upstream accepted.
	directMu sync.Mutex
	direct   []string
}

// seen is one connection the agent handed to the proxy.
type seen struct {
	Dst workload.Destination
	ID  workload.Identity
}

type recorder struct {
	mu    sync.Mutex
	conns []seen
	// hold, when set, is waited on before answering (bounded).
	hold chan struct{}
}

func (r *recorder) Handle(ctx context.Context, c net.Conn, dst workload.Destination, id workload.Identity) {
	defer c.Close()
	r.mu.Lock()
	r.conns = append(r.conns, seen{dst, id})
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
		}
	}
	fmt.Fprintf(c, "proxied %s", dst.Addr)
}

func (r *recorder) all() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.conns...)
}

func randByte() byte {
	b := make([]byte, 1)
	_, _ = rand.Read(b)
	return b[0]
}

// testAgentConfig picks an intercept address and pin directory of its own,
// so the test cannot touch another agent's state on this machine.
func testAgentConfig() config.Agent {
	cfg := config.DefaultAgent()
	n := 100 + randByte()%100
	cfg.InterceptIPv4 = netip.AddrFrom4([4]byte{169, 254, 77, n})
	cfg.InterceptIPv6 = netip.MustParseAddr(fmt.Sprintf("fdc5:1ce0:77::%x", n))
	cfg.BPFFS = fmt.Sprintf("/sys/fs/bpf/sluice-test-%x%x", randByte(), randByte())
	cfg.FailMode = "open"
	cfg.Ports = []string{"80", "443"}
	cfg.DenyCIDRs = nil
	return cfg
}

var upstreamPorts = []uint16{80, 443, 9999}

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	RequireE2E(t)
	RequireTool(t, "python3")
	mount, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	e := &agentEnv{t: t, mount: mount, cfg: testAgentConfig(), rec: &recorder{}}
	e.tp = NewTopology(t, 3)
	e.cg = NewCgroup(t, mount)
	up := e.tp.Hosts[1]
	for _, a := range []netip.Addr{up.IP4, up.IP6} {
		for _, p := range upstreamPorts {
			ln := up.Listen(t, netip.AddrPortFrom(a, p))
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					e.directMu.Lock()
					e.direct = append(e.direct, c.LocalAddr().String())
					e.directMu.Unlock()
					fmt.Fprintf(c, "direct %s", c.LocalAddr())
					c.Close()
				}
			}()
		}
	}
	// Whatever happens, nothing of the agent's is left behind.
	t.Cleanup(func() {
		if e.ag != nil {
			e.ag.Close()
		}
		if err := agent.Cleanup(e.cfg, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return e
}

func (e *agentEnv) start() {
	e.t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts := e.opts
	opts.OnEvent = func(ev agent.Event) {
		e.mu.Lock()
		e.evs = append(e.evs, ev)
		e.mu.Unlock()
	}
	ag, err := agent.Start(context.Background(), e.cfg, e.rec, log, opts)
	if err != nil {
		e.t.Fatalf("start agent: %v", err)
	}
	e.ag = ag
}

func (e *agentEnv) stop() {
	e.t.Helper()
	if err := e.ag.Close(); err != nil {
		e.t.Fatalf("close agent: %v", err)
	}
	e.ag = nil
}

func (e *agentEnv) events() []agent.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]agent.Event(nil), e.evs...)
}

// waitEvent waits (up to 2 s) for an event matching f.
func (e *agentEnv) waitEvent(f func(agent.Event) bool) (agent.Event, bool) {
	return e.waitEventFor(2*time.Second, f)
}

// waitEventFor waits up to d for an event matching f.
func (e *agentEnv) waitEventFor(d time.Duration, f func(agent.Event) bool) (agent.Event, bool) {
	for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
		for _, ev := range e.events() {
			if f(ev) {
				return ev, true
			}
		}
		if time.Since(start) > d {
			return agent.Event{}, false
		}
	}
}

func (e *agentEnv) directConns() []string {
	e.directMu.Lock()
	defer e.directMu.Unlock()
	return append([]string(nil), e.direct...)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// clientPy connects to argv[1]:argv[2] (optionally with SO_MARK argv[3]
// and source port argv[4]; argv[5] lists options: "mapped" uses an
// AF_INET6 socket with the IPv4-mapped address, "thread" connects from a
// worker thread), and prints its pid, getpeername() and what it read, or
// the connect errno, as JSON.
const clientPy = `
import errno, json, os, socket, sys, threading
dst, port = sys.argv[1], int(sys.argv[2])
mark = int(sys.argv[3]) if len(sys.argv) > 3 else 0
sport = int(sys.argv[4]) if len(sys.argv) > 4 else 0
opts = sys.argv[5].split(",") if len(sys.argv) > 5 else []
mapped = "mapped" in opts
fam = socket.AF_INET6 if (":" in dst or mapped) else socket.AF_INET
if mapped:
    dst = "::ffff:" + dst
out = {"pid": os.getpid()}
def run():
    out["tid"] = threading.get_native_id()
    s = socket.socket(fam, socket.SOCK_STREAM)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, 36, mark)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    s.settimeout(5)
    try:
        s.connect((dst, port))
        p = s.getpeername()
        out["peer"] = ("[%s]:%d" if fam == socket.AF_INET6 else "%s:%d") % (p[0], p[1])
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        out["data"] = data.decode()
    except OSError as e:
        out["errno"] = errno.errorcode.get(e.errno, str(e))
if "thread" in opts:
    t = threading.Thread(target=run)
    t.start()
    t.join()
else:
    run()
print(json.dumps(out))
`

type clientResult struct {
	PID   int    `json:"pid"`
	TID   int    `json:"tid"` // the thread that connected
	Peer  string `json:"peer"`
	Data  string `json:"data"`
	Errno string `json:"errno"`
	// ChildPID is the pid of the process the test started.
	ChildPID int `json:"-"`
}

type clientOpts struct {
	host     int  // topology host index (0 or 2 are workload hosts)
	inCgroup bool // start inside the test cgroup
	mark     uint32
	sport    uint16
	mapped   bool
	thread   bool // connect from a worker thread
	uid      int  // run as this uid and gid (setpriv); 0: root
}

// startClient starts the python client; wait returns its result.
func (e *agentEnv) startClient(dst netip.AddrPort, o clientOpts) (wait func() clientResult) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	var flags []string
	if o.mapped {
		flags = append(flags, "mapped")
	}
	if o.thread {
		flags = append(flags, "thread")
	}
	args := []string{"python3", "-c", clientPy, dst.Addr().String(), fmt.Sprint(dst.Port()), fmt.Sprint(o.mark), fmt.Sprint(o.sport), strings.Join(flags, ",")}
	argv := args
	if o.uid != 0 {
		// The system's python: one found on root's PATH (pyenv under
		// /root) may not be readable by the uid.
		id := fmt.Sprint(o.uid)
		argv = append([]string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "/usr/bin/python3"}, args[1:]...)
	}
	cmd := e.tp.Hosts[o.host].Exec(ctx, argv...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := func() {}
	if o.inCgroup {
		done = e.cg.Command(e.t, cmd)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		e.t.Fatalf("start client: %v", err)
	}
	done()
	return func() clientResult {
		defer cancel()
		if err := cmd.Wait(); err != nil {
			e.t.Fatalf("client %v: %v: %s", args[3:], err, errb.String())
		}
		var r clientResult
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			e.t.Fatalf("client output %q: %v (stderr %s)", out.String(), err, errb.String())
		}
		r.ChildPID = cmd.Process.Pid
		return r
	}
}

func (e *agentEnv) client(dst netip.AddrPort, o clientOpts) clientResult {
	e.t.Helper()
	return e.startClient(dst, o)()
}

// cgroupHooks counts the programs attached directly to dir, per attach type.
func cgroupHooks(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	defer f.Close()
	n := 0
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
		ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername, ebpf.AttachCGroupSockOps} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatalf("query %s programs of %s: %v", at, dir, err)
		}
		n += len(r.Programs)
	}
	return n
}

// assertNothingLeft checks that the agent with cfg left no pin, no
// address and no hook on the test cgroup.
func (e *agentEnv) assertNothingLeft() {
	e.t.Helper()
	if _, err := os.Stat(e.cfg.BPFFS); !os.IsNotExist(err) {
		ents, _ := filepath.Glob(filepath.Join(e.cfg.BPFFS, "*", "*"))
		e.t.Errorf("pin directory %s still exists (%v): %v", e.cfg.BPFFS, err, ents)
	}
	if n := cgroupHooks(e.t, e.cg.Dir); n != 0 {
		e.t.Errorf("%d programs still attached to %s", n, e.cg.Dir)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		e.t.Fatal(err)
	}
	addrs, err := netlink.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip.Unmap() == e.cfg.InterceptIPv4 || ip == e.cfg.InterceptIPv6 {
			e.t.Errorf("intercept address %s still on lo", ip)
		}
	}
	for _, a := range []netip.Addr{e.cfg.InterceptIPv4, e.cfg.InterceptIPv6} {
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: prefixNet(a), Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			e.t.Fatal(err)
		}
		if len(rs) != 0 {
			e.t.Errorf("route for intercept address %s still in the main table: %v", a, rs)
		}
	}
	// No link in the kernel is attached to the test cgroup.
	id, err := cgroup2.ID(e.cg.Dir)
	if err != nil {
		e.t.Fatal(err)
	}
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if cg := info.Cgroup(); cg != nil && cg.CgroupId == id {
			e.t.Errorf("link %d still attached to the test cgroup", it.ID)
		}
	}
	if err := it.Err(); err != nil {
		e.t.Errorf("iterate links: %v", err)
	}
}

func readAllTimeout(c net.Conn) string {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func prefixNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// freeAdminPort is a TCP port below the ephemeral range (so an outgoing
// connection cannot take it meanwhile) that nothing listens on, on any
// address: for a listener the test starts in another process.
func freeAdminPort(t *testing.T) int {
	t.Helper()
	for range 50 {
		port := 20000 + int(randByte())*40 + int(randByte())%40
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port in 20000-30239 after 50 tries")
	return 0
}
