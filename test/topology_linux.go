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
	id     string
	Hosts  []*Host
	guards [][]string // "ip route del" arguments of the guard routes it added
}

// The ranges a test namespace can reach: the benchmarking ranges the test
// hosts live in, and the intercept addresses test agents and `sluice run`
// use. Nothing else is routed, so a stray packet (DNS to the machine's
// resolver, a connect that was not redirected) fails in the namespace
// with ENETUNREACH instead of leaving the machine.
var (
	testNet4      = netip.MustParsePrefix("198.18.0.0/15")
	testNet6      = netip.MustParsePrefix("2001:2::/48")
	interceptNet4 = netip.MustParsePrefix("169.254.77.0/24")
	interceptNet6 = netip.MustParsePrefix("fdc5:1ce0:77::/64")
)

// guardProto marks the root namespace's unreachable routes for the test
// ranges, so cleanup removes only routes a topology added.
const guardProto = "94"

// NewTopology creates n hosts. Host i gets the /24 k+i of 198.18.0.0/15
// (.2 for the host, .1 for the root-namespace end) and the /64 k+i of
// 2001:2::/48 (::2 and ::1), where k is random and chosen so that no
// address of those subnets is on the machine yet: concurrent runs do not
// collide. A namespace has routes only for the test ranges and the
// intercept ranges (no default route), and `ip netns exec` gives it a
// resolv.conf naming 127.0.0.1. IP forwarding is on in the root namespace
// for the test's duration, which also gets unreachable routes for the
// test ranges, so a packet for a test address no host holds is dropped
// there. Everything is removed in t.Cleanup, also when setup fails half
// way.
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
	for _, pfx := range []netip.Prefix{testNet4, testNet6, interceptNet4, interceptNet6} {
		tp.guard(t, pfx)
	}
	base := freeSubnets(t, n)
	for i := 1; i <= n; i++ {
		tp.addHost(t, i, base+i-1)
	}
	return tp
}

// guard adds an unreachable route for pfx to the root namespace's main
// table unless one is there already. Connected routes of the test hosts
// and the intercept addresses (local table) are more specific and win.
func (tp *Topology) guard(t testing.TB, pfx netip.Prefix) {
	t.Helper()
	fam := "-4"
	if pfx.Addr().Is6() {
		fam = "-6"
	}
	args := []string{fam, "route", "add", "unreachable", pfx.String(), "proto", guardProto}
	out, err := exec.Command("ip", args...).CombinedOutput()
	switch {
	case err == nil:
		tp.guards = append(tp.guards, []string{fam, "route", "del", "unreachable", pfx.String(), "proto", guardProto})
	case strings.Contains(string(out), "File exists"):
		// Another topology's guard, or the machine's own route.
	default:
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// subnet4 and subnet6 are the /24 and /64 with index k in the test ranges.
func subnet4(k int, host byte) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte(k>>8), byte(k), host})
}

func subnet6(k int, host byte) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:2:0:%x::%x", k, host))
}

// freeSubnets picks k at random such that subnets k..k+n-1 hold no address
// on the machine (in the root namespace).
func freeSubnets(t testing.TB, n int) int {
	t.Helper()
	const subnets = 512 // /24s in 198.18.0.0/15
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("list addresses: %v", err)
	}
	used := map[int]bool{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		switch {
		case testNet4.Contains(ip):
			b := ip.As4()
			used[int(b[1]-18)<<8|int(b[2])] = true
		case testNet6.Contains(ip):
			b := ip.As16()
			used[int(b[6])<<8|int(b[7])] = true
		}
	}
	for try := 0; try < 100; try++ {
		var r [2]byte
		_, _ = rand.Read(r[:])
		k := 1 + (int(r[0])<<8|int(r[1]))%(subnets-n-1)
		free := true
		for i := k; i < k+n; i++ {
			free = free && !used[i]
		}
		if free {
			return k
		}
	}
	t.Fatalf("no %d free subnets in %s", n, testNet4)
	return 0
}

func (tp *Topology) addHost(t testing.TB, i, k int) *Host {
	t.Helper()
	h := &Host{
		NS:   NS{Name: fmt.Sprintf("sl%s-%d", tp.id, i)},
		IP4:  subnet4(k, 2),
		GW4:  subnet4(k, 1),
		IP6:  subnet6(k, 2),
		GW6:  subnet6(k, 1),
		Veth: fmt.Sprintf("sl%s-%d", tp.id, i),
	}
	// Registered before the first command: Close removes whatever part of
	// the host exists when a step below fails.
	tp.Hosts = append(tp.Hosts, h)
	etc := filepath.Join("/etc/netns", h.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	// `ip netns exec` bind-mounts this over /etc/resolv.conf: DNS stays
	// in the namespace instead of heading for the machine's resolver.
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
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
	for _, pfx := range []netip.Prefix{testNet4, interceptNet4} {
		run(t, "ip", "-n", h.Name, "route", "add", pfx.String(), "via", h.GW4.String())
	}
	for _, pfx := range []netip.Prefix{testNet6, interceptNet6} {
		run(t, "ip", "-n", h.Name, "-6", "route", "add", pfx.String(), "via", h.GW6.String())
	}
	return h
}

// Close removes every namespace, veth, /etc/netns directory and guard
// route the topology made. Safe to call more than once.
func (tp *Topology) Close() {
	for _, h := range tp.Hosts {
		_ = exec.Command("ip", "link", "del", h.Veth).Run()
		_ = exec.Command("ip", "netns", "del", h.Name).Run()
		_ = os.RemoveAll(filepath.Join("/etc/netns", h.Name))
	}
	tp.Hosts = nil
	for _, g := range tp.guards {
		_ = exec.Command("ip", g...).Run()
	}
	tp.guards = nil
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
	return makeCgroup(t, &Cgroup{Path: "/" + name, Dir: filepath.Join(mount, name)})
}

// Child creates the cgroup name below cg, removed in t.Cleanup (before
// cg, which was created first).
func (cg *Cgroup) Child(t testing.TB, name string) *Cgroup {
	t.Helper()
	return makeCgroup(t, &Cgroup{Path: cg.Path + "/" + name, Dir: filepath.Join(cg.Dir, name)})
}

func makeCgroup(t testing.TB, cg *Cgroup) *Cgroup {
	t.Helper()
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
