package test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireE2E skips t unless SLUICE_E2E=1, and fails it when the gate is
// set but the test cannot run (not root).
func RequireE2E(t testing.TB) {
	t.Helper()
	if os.Getenv("SLUICE_E2E") != "1" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but SLUICE_E2E is not 1: the end-to-end suite must run in CI")
		}
		t.Skip("end-to-end test: set SLUICE_E2E=1 and run as root")
	}
	if os.Geteuid() != 0 {
		t.Fatal("SLUICE_E2E=1 needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	}
}

// RequireTool fails t when a binary the test drives is missing.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required by this test and is not installed (.ci/run installs it): %v", name, err)
	}
	return p
}

// NS is a network namespace created by a test.
type NS struct {
	Name string
}

// Exec returns a command that runs argv inside the namespace.
func (n *NS) Exec(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, argv...)...)
}

// Do runs f on an OS thread switched into the namespace. Sockets created
// by f stay in the namespace after Do returns.
func (n *NS) Do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	defer netns.Set(orig)
	return f()
}

// Listen opens a TCP listener inside the namespace.
func (n *NS) Listen(t testing.TB, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, n.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Host is one test host: a namespace joined to the host namespace by a
// veth pair, with an IPv4 and an IPv6 address on each end.
type Host struct {
	NS
	IP4, GW4 netip.Addr // the host's address and the root-namespace end
	IP6, GW6 netip.Addr
	Veth     string // root-namespace end of the veth pair
}

// Topology is a set of test hosts routed through the root namespace.
type Topology struct {
	id    string
	Hosts []*Host
}

// NewTopology creates n hosts. Host i gets 198.18.i.2/24 (gateway
// 198.18.i.1) and 2001:2:0:i::2/64 (gateway 2001:2:0:i::1), a default
// route via the root namespace, and IP forwarding is on in the root
// namespace for the test's duration. Everything is removed in t.Cleanup.
func NewTopology(t testing.TB, n int) *Topology {
	t.Helper()
	RequireTool(t, "ip")
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tp := &Topology{id: hex.EncodeToString(b)}
	restore4 := setSysctl(t, "net/ipv4/ip_forward", "1")
	restore6 := setSysctl(t, "net/ipv6/conf/all/forwarding", "1")
	t.Cleanup(func() {
		tp.Close()
		restore4()
		restore6()
	})
	for i := 1; i <= n; i++ {
		tp.Hosts = append(tp.Hosts, tp.addHost(t, i))
	}
	return tp
}

func (tp *Topology) addHost(t testing.TB, i int) *Host {
	t.Helper()
	h := &Host{
		NS:   NS{Name: fmt.Sprintf("sl%s-%d", tp.id, i)},
		IP4:  netip.AddrFrom4([4]byte{198, 18, byte(i), 2}),
		GW4:  netip.AddrFrom4([4]byte{198, 18, byte(i), 1}),
		IP6:  netip.MustParseAddr(fmt.Sprintf("2001:2:0:%x::2", i)),
		GW6:  netip.MustParseAddr(fmt.Sprintf("2001:2:0:%x::1", i)),
		Veth: fmt.Sprintf("sl%s-%d", tp.id, i),
	}
	peer := "eth0"
	tmp := h.Veth + "p"
	run(t, "ip", "netns", "add", h.Name)
	run(t, "ip", "link", "add", h.Veth, "type", "veth", "peer", "name", tmp)
	run(t, "ip", "link", "set", tmp, "netns", h.Name)
	run(t, "ip", "-n", h.Name, "link", "set", tmp, "name", peer)
	run(t, "ip", "addr", "add", h.GW4.String()+"/24", "dev", h.Veth)
	run(t, "ip", "-6", "addr", "add", h.GW6.String()+"/64", "dev", h.Veth, "nodad")
	run(t, "ip", "link", "set", h.Veth, "up")
	run(t, "ip", "-n", h.Name, "link", "set", "lo", "up")
	run(t, "ip", "-n", h.Name, "addr", "add", h.IP4.String()+"/24", "dev", peer)
	run(t, "ip", "-n", h.Name, "-6", "addr", "add", h.IP6.String()+"/64", "dev", peer, "nodad")
	run(t, "ip", "-n", h.Name, "link", "set", peer, "up")
	run(t, "ip", "-n", h.Name, "route", "add", "default", "via", h.GW4.String())
	run(t, "ip", "-n", h.Name, "-6", "route", "add", "default", "via", h.GW6.String())
	return h
}

// Close removes every namespace and veth the topology made. Safe to call
// more than once.
func (tp *Topology) Close() {
	for _, h := range tp.Hosts {
		_ = exec.Command("ip", "link", "del", h.Veth).Run()
		_ = exec.Command("ip", "netns", "del", h.Name).Run()
	}
	tp.Hosts = nil
}

func run(t testing.TB, argv ...string) {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func setSysctl(t testing.TB, key, val string) (restore func()) {
	t.Helper()
	p := filepath.Join("/proc/sys", key)
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read sysctl %s: %v", key, err)
	}
	if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
		t.Fatalf("set sysctl %s=%s: %v", key, val, err)
	}
	return func() { _ = os.WriteFile(p, old, 0o644) }
}

// Cgroup is a cgroup v2 directory created by a test.
type Cgroup struct {
	Path string // relative to the cgroup2 mount, starting with "/"
	Dir  string // absolute directory
}

// NewCgroup creates a fresh cgroup below the cgroup2 mount found in
// /proc/self/mountinfo. It is removed in t.Cleanup after its processes
// have been killed (only processes the test started can be in it).
func NewCgroup(t testing.TB, mount string) *Cgroup {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "sluice-test-" + hex.EncodeToString(b)
	cg := &Cgroup{Path: "/" + name, Dir: filepath.Join(mount, name)}
	if err := os.Mkdir(cg.Dir, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", cg.Dir, err)
	}
	t.Cleanup(func() {
		// cgroup.kill ends what the test started in it (kernel >= 5.14).
		_ = os.WriteFile(filepath.Join(cg.Dir, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 50; i++ {
			if err := os.Remove(cg.Dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: still busy", cg.Dir)
	})
	return cg
}

// Command prepares cmd to start directly inside the cgroup (clone3 with
// CLONE_INTO_CGROUP), so not even its first connect escapes selection.
// The returned func closes the cgroup fd; call it after cmd.Start.
func (cg *Cgroup) Command(t testing.TB, cmd *exec.Cmd) (done func()) {
	t.Helper()
	f, err := os.Open(cg.Dir)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", cg.Dir, err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = sysProcAttr()
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(f.Fd())
	return func() { f.Close() }
}

func nsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

// routedLocal reports whether the kernel delivers packets for a locally
// (RTN_LOCAL). Tests check it before dialing an address the agent owns.
func routedLocal(a netip.Addr) bool {
	routes, err := netlink.RouteGet(a.AsSlice())
	if err != nil || len(routes) == 0 {
		return false
	}
	return routes[0].Type == unix.RTN_LOCAL
}
