package launch

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
	priv, err := agentDefaults(&a, config.Keys{}, 4242, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.BPFFS != "/sys/fs/bpf/sluice-run-4242" || priv != a.BPFFS {
		t.Errorf("bpffs %q (private %q), want /sys/fs/bpf/sluice-run-4242", a.BPFFS, priv)
	}
	if a.ProxyPort == node.ProxyPort || a.ProxyPort < portBase || a.ProxyPort >= portBase+portCount {
		t.Errorf("proxy port %d: want one in [%d, %d), not the node's %d", a.ProxyPort, portBase, portBase+portCount, node.ProxyPort)
	}
	if a.InterceptIPv4 == node.InterceptIPv4 || a.InterceptIPv6 == node.InterceptIPv6 {
		t.Errorf("intercept %v %v: the node agent's", a.InterceptIPv4, a.InterceptIPv6)
	}
	if !netip.MustParsePrefix("169.254.77.0/24").Contains(a.InterceptIPv4) || !netip.MustParsePrefix("fdc5:1ce0:77::/64").Contains(a.InterceptIPv6) {
		t.Errorf("intercept %v %v outside 169.254.77.0/24, fdc5:1ce0:77::/64", a.InterceptIPv4, a.InterceptIPv6)
	}

	// Another run (or anything) holding that pair: the next one is taken.
	b := config.DefaultAgent()
	if _, err := agentDefaults(&b, config.Keys{}, 4242, map[netip.Addr]bool{a.InterceptIPv4: true}); err != nil {
		t.Fatal(err)
	}
	if b.InterceptIPv4 == a.InterceptIPv4 || b.InterceptIPv6 == a.InterceptIPv6 {
		t.Errorf("address in use taken again: %v %v", b.InterceptIPv4, b.InterceptIPv6)
	}
	// Different pids: different ports and addresses.
	c := config.DefaultAgent()
	if _, err := agentDefaults(&c, config.Keys{}, 4243, nil); err != nil {
		t.Fatal(err)
	}
	if c.ProxyPort == a.ProxyPort || c.InterceptIPv4 == a.InterceptIPv4 || c.BPFFS == a.BPFFS {
		t.Errorf("pids 4242 and 4243 share state: %+v %+v", a, c)
	}
}

func TestRunAgentDefaultsAllInUse(t *testing.T) {
	used := map[netip.Addr]bool{}
	for n := addrFirst; n <= addrLast; n++ {
		used[netip.AddrFrom4([4]byte{169, 254, 77, byte(n)})] = true
	}
	a := config.DefaultAgent()
	_, err := agentDefaults(&a, config.Keys{}, 1, used)
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
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := agentDefaults(&cfg.Agent, cfg.Set, 7, nil)
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
	only, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	set := only.Set
	b := config.DefaultAgent()
	b.ProxyPort = 16000
	if _, err := agentDefaults(&b, set, 7, nil); err != nil {
		t.Fatal(err)
	}
	if b.ProxyPort != 16000 || b.BPFFS != "/sys/fs/bpf/sluice-run-7" || b.InterceptIPv4 == config.DefaultAgent().InterceptIPv4 {
		t.Errorf("port only: %+v", b)
	}
}

// Every key of --config either applies to a run or is refused with the
// key and the fix; the audit log goes to --audit-log, else audit.file
// when the file sets it, else nowhere.
func TestConfigure(t *testing.T) {
	tests := []struct {
		name      string
		yml       string
		auditLog  string
		wantErr   []string // substrings of the error; none: accepted
		wantAudit string
	}{
		{"no config: no audit log", "", "", nil, "none"},
		{"--audit-log", "", "/tmp/a.jsonl", nil, "/tmp/a.jsonl"},
		{"audit.file applies", "audit:\n  file: /tmp/f.jsonl\n  accessLog: /tmp/access.log\n", "", nil, "/tmp/f.jsonl"},
		{"--audit-log wins over audit.file", "audit:\n  file: stdout\n", "/tmp/a.jsonl", nil, "/tmp/a.jsonl"},
		{"audit.file none", "audit:\n  file: none\n", "", nil, "none"},
		{"proxy and agent keys apply", "proxy:\n  dialTimeout: 5s\nagent:\n  ports: [\"all\"]\n  mark: 7\n  denyCIDRs: [10.0.0.0/8]\n", "", nil, "none"},
		{"audit.file stdout is the command's", "audit:\n  file: stdout\n", "", []string{`config audit.file "stdout": sluice run's stdout is the command's; use a path, none, or --audit-log FILE`}, ""},
		{"node-only keys, every one at once", "agent:\n  cgroups: [\"/x/**\"]\n  failMode: closed\n  attach: root\nadmin:\n  listen: 127.0.0.1:9999\nproxy:\n  listen: 127.0.0.1:3128\n", "", []string{
			"config agent.cgroups: sluice run selects its own transient cgroup; remove this key",
			"config agent.failMode: sluice run's hooks always end with the run (open); remove this key",
			"config agent.attach: sluice run attaches its hooks to its own transient cgroup only; remove this key",
			"config admin.listen: sluice run serves the admin API only when asked with --metrics ADDR",
			"config proxy.listen: sluice run has no explicit proxy listener; remove this key, or run sluice proxy",
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.yml != "" {
				path = filepath.Join(t.TempDir(), "config.yaml")
				if err := os.WriteFile(path, []byte(tt.yml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Configure(&cfg, Setup{PID: 9, AuditLog: tt.auditLog})
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if cfg.Audit.File != tt.wantAudit || cfg.Agent.FailMode != "open" || cfg.Agent.Cgroups != nil {
					t.Errorf("audit.file %q failMode %q cgroups %v; want %q, open, none", cfg.Audit.File, cfg.Agent.FailMode, cfg.Agent.Cgroups, tt.wantAudit)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}
