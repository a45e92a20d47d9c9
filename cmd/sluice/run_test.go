package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/config"
)

// `sluice run` never uses the node agent's pin directory, intercept
// addresses or proxy port unless --config sets them.
func TestRunAgentDefaultsAreItsOwn(t *testing.T) {
	node := config.DefaultAgent()
	a := config.DefaultAgent()
	priv, err := runAgentDefaults(&a, map[string]bool{}, 4242, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.BPFFS != "/sys/fs/bpf/sluice-run-4242" || priv != a.BPFFS {
		t.Errorf("bpffs %q (private %q), want /sys/fs/bpf/sluice-run-4242", a.BPFFS, priv)
	}
	if a.ProxyPort == node.ProxyPort || a.ProxyPort < runPortBase || a.ProxyPort >= runPortBase+runPorts {
		t.Errorf("proxy port %d: want one in [%d, %d), not the node's %d", a.ProxyPort, runPortBase, runPortBase+runPorts, node.ProxyPort)
	}
	if a.InterceptIPv4 == node.InterceptIPv4 || a.InterceptIPv6 == node.InterceptIPv6 {
		t.Errorf("intercept %v %v: the node agent's", a.InterceptIPv4, a.InterceptIPv6)
	}
	if !netip.MustParsePrefix("169.254.77.0/24").Contains(a.InterceptIPv4) || !netip.MustParsePrefix("fdc5:1ce0:77::/64").Contains(a.InterceptIPv6) {
		t.Errorf("intercept %v %v outside 169.254.77.0/24, fdc5:1ce0:77::/64", a.InterceptIPv4, a.InterceptIPv6)
	}

	// Another run (or anything) holding that pair: the next one is taken.
	b := config.DefaultAgent()
	if _, err := runAgentDefaults(&b, map[string]bool{}, 4242, map[netip.Addr]bool{a.InterceptIPv4: true}); err != nil {
		t.Fatal(err)
	}
	if b.InterceptIPv4 == a.InterceptIPv4 || b.InterceptIPv6 == a.InterceptIPv6 {
		t.Errorf("address in use taken again: %v %v", b.InterceptIPv4, b.InterceptIPv6)
	}
	// Different pids: different ports and addresses.
	c := config.DefaultAgent()
	if _, err := runAgentDefaults(&c, map[string]bool{}, 4243, nil); err != nil {
		t.Fatal(err)
	}
	if c.ProxyPort == a.ProxyPort || c.InterceptIPv4 == a.InterceptIPv4 || c.BPFFS == a.BPFFS {
		t.Errorf("pids 4242 and 4243 share state: %+v %+v", a, c)
	}
}

func TestRunAgentDefaultsAllInUse(t *testing.T) {
	used := map[netip.Addr]bool{}
	for n := runAddrFirst; n <= runAddrLast; n++ {
		used[netip.AddrFrom4([4]byte{169, 254, 77, byte(n)})] = true
	}
	a := config.DefaultAgent()
	_, err := runAgentDefaults(&a, map[string]bool{}, 1, used)
	if err == nil || !strings.Contains(err.Error(), "set agent.interceptIPv4 and agent.interceptIPv6 in --config") {
		t.Fatalf("want an error naming the fix, got %v", err)
	}
}

// What --config sets explicitly is kept.
func TestRunAgentDefaultsKeepExplicitKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	yml := "agent:\n  interceptIPv4: 169.254.77.10\n  interceptIPv6: fdc5:1ce0:77::10\n  proxyPort: 16000\n  bpffs: /sys/fs/bpf/mine\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path, "", "")
	if err != nil {
		t.Fatal(err)
	}
	set, err := agentKeysSet(path)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := runAgentDefaults(&cfg.Agent, set, 7, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Agent
	if a.InterceptIPv4.String() != "169.254.77.10" || a.InterceptIPv6.String() != "fdc5:1ce0:77::10" || a.ProxyPort != 16000 || a.BPFFS != "/sys/fs/bpf/mine" || priv != "" {
		t.Errorf("explicit settings replaced: %+v (private bpffs %q)", a, priv)
	}

	// Only the port set: the rest is the run's own.
	if err := os.WriteFile(path, []byte("agent:\n  proxyPort: 16000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if set, err = agentKeysSet(path); err != nil {
		t.Fatal(err)
	}
	b := config.DefaultAgent()
	b.ProxyPort = 16000
	if _, err := runAgentDefaults(&b, set, 7, nil); err != nil {
		t.Fatal(err)
	}
	if b.ProxyPort != 16000 || b.BPFFS != "/sys/fs/bpf/sluice-run-7" || b.InterceptIPv4 == config.DefaultAgent().InterceptIPv4 {
		t.Errorf("port only: %+v", b)
	}
}
