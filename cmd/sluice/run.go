package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/launch"
	"gopkg.in/yaml.v3"
)

func init() {
	register("run", "run one command with its egress intercepted and print a per-process summary", runRun)
}

func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config `FILE` (YAML); the agent section's ports, addresses and denyCIDRs apply")
	policyPath := fs.String("policy", "", "policy `FILE`; empty uses the embedded default (audit everything, deny cloud metadata)")
	auditPath := fs.String("audit-log", "", "write the JSON audit log to `FILE` (default: none, only the summary)")
	caDir := fs.String("ca-dir", "", "CA directory (default: the config's ca.dir, or $SLUICE_CA_DIR)")
	noCAEnv := fs.Bool("no-ca-env", false, "do not set SSL_CERT_FILE and the other CA-trust variables for the command")
	noSummary := fs.Bool("no-summary", false, "do not print the egress summary at exit")
	verbose := fs.Bool("v", false, "log every decision to stderr (default: warnings only)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice run [flags] -- CMD [ARGS…]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	argv := fs.Args()
	if len(argv) == 0 {
		fs.Usage()
		return 2
	}

	cfg, err := loadConfig(*cfgPath, *policyPath, *caDir)
	if err != nil {
		fmt.Fprintf(stderr, "sluice run: %v\n", err)
		return 2
	}
	set, err := agentKeysSet(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "sluice run: %v\n", err)
		return 2
	}
	privateBPFFS, err := runAgentDefaults(&cfg.Agent, set, os.Getpid(), nodeAddrs())
	if err != nil {
		fmt.Fprintf(stderr, "sluice run: %v\n", err)
		return 1
	}
	if privateBPFFS != "" {
		defer os.RemoveAll(privateBPFFS)
	}
	// One command's interception lives and dies with this process: hooks
	// are tied to it (failMode open) and only its transient cgroup is
	// selected.
	cfg.Agent.FailMode = "open"
	cfg.Agent.Cgroups = nil
	cfg.Audit.AccessLog = ""

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var auditOut io.Writer = io.Discard
	if *auditPath != "" {
		f, err := os.OpenFile(*auditPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "sluice run: open audit log: %v\n", err)
			return 1
		}
		defer f.Close()
		auditOut = f
	}

	code, err := runIntercepted(ctx, cfg, log, auditOut, argv, !*noCAEnv, !*noSummary, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice run: %v\n", err)
	}
	return code
}

func runIntercepted(ctx context.Context, cfg config.Config, log *slog.Logger, auditOut io.Writer, argv []string, caEnv, summary bool, stderr io.Writer) (int, error) {
	mount, err := agent.Cgroup2Mount()
	if err != nil {
		return 1, err
	}
	st, err := newStack(ctx, cfg, log, stackOptions{
		Audit:  auditOut,
		Dialer: &net.Dialer{Control: agent.MarkControl(cfg.Agent.Mark)},
	})
	if err != nil {
		return 1, err
	}
	defer st.Close()

	ag, err := agent.Start(ctx, cfg.Agent, st.proxy, log, agent.Options{
		OnEvent: func(e agent.Event) {
			st.metrics.ConnectEvent(string(e.Verdict))
			st.flows.Connect(e.PID, e.Comm, e.Cgroup, e.Dst, string(e.Verdict))
		},
	})
	if err != nil {
		return 1, err
	}

	bundle := ""
	if caEnv {
		dir, err := os.MkdirTemp("", "sluice-run-")
		if err != nil {
			ag.Close()
			return 1, fmt.Errorf("create temporary directory: %w", err)
		}
		defer os.RemoveAll(dir)
		if bundle, err = launch.WriteBundle(dir, st.ca.BundlePEM()); err != nil {
			ag.Close()
			return 1, err
		}
	}

	code, runErr := launch.Run(ctx, launch.Options{
		Argv:         argv,
		Stdin:        os.Stdin,
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
		CABundle:     bundle,
		Cgroup2Mount: mount,
		Intercept: func(_ context.Context, cgroupPath, _ string) error {
			return ag.SelectCgroup(cgroupPath)
		},
	})
	if err := ag.Close(); err != nil {
		log.Warn("stop interception", "error", err)
	}
	if summary {
		fmt.Fprintln(stderr, "\nsluice: egress summary")
		writeFlowsTable(stderr, st.flows.Snapshot())
	}
	return code, runErr
}

// `sluice run` keeps state of its own, apart from a node agent's (the
// defaults in config.DefaultAgent): a node agent's pins, hooks and
// intercept address are never adopted, replaced or removed by a run, and
// concurrent runs do not share an address or a port. A --config that sets
// agent.interceptIPv4, agent.interceptIPv6, agent.proxyPort or agent.bpffs
// explicitly keeps what it sets.
const (
	// runAddrFirst..runAddrLast is the range of the last byte of a run's
	// intercept addresses: 169.254.77.N and fdc5:1ce0:77::1:N (hex). The
	// node agent's default is 169.254.77.77 and fdc5:1ce0:77::77.
	runAddrFirst = 200
	runAddrLast  = 254
	// runPortBase + pid % runPorts is a run's proxy port.
	runPortBase = 15100
	runPorts    = 800
)

// runAgentKeys are the agent settings a run replaces unless they are set.
var runAgentKeys = []string{"interceptIPv4", "interceptIPv6", "proxyPort", "bpffs"}

// agentKeysSet reports which of runAgentKeys the config file sets.
func agentKeysSet(path string) (map[string]bool, error) {
	set := map[string]bool{}
	if path == "" {
		return set, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	var doc struct {
		Agent map[string]yaml.Node `yaml:"agent"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	for _, k := range runAgentKeys {
		_, set[k] = doc.Agent[k]
	}
	return set, nil
}

// runAgentDefaults gives a run its own bpffs directory
// (/sys/fs/bpf/sluice-run-<pid>, returned so that it is removed at exit),
// its own intercept addresses (the first pair in the run range, starting
// from the pid, that no interface holds) and a proxy port derived from the
// pid, for each of those the config does not set.
func runAgentDefaults(a *config.Agent, set map[string]bool, pid int, inUse map[netip.Addr]bool) (privateBPFFS string, err error) {
	if !set["bpffs"] {
		a.BPFFS = fmt.Sprintf("/sys/fs/bpf/sluice-run-%d", pid)
		privateBPFFS = a.BPFFS
	}
	if !set["proxyPort"] {
		a.ProxyPort = uint16(runPortBase + pid%runPorts)
	}
	if set["interceptIPv4"] && set["interceptIPv6"] {
		return privateBPFFS, nil
	}
	n := runAddrLast - runAddrFirst + 1
	for i := 0; i < n; i++ {
		last := byte(runAddrFirst + (pid+i)%n)
		v4 := netip.AddrFrom4([4]byte{169, 254, 77, last})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0xc5, 0x1c, 0xe0, 0, 0x77, 13: 1, 15: last})
		if (!set["interceptIPv4"] && inUse[v4]) || (!set["interceptIPv6"] && inUse[v6]) {
			continue
		}
		if !set["interceptIPv4"] {
			a.InterceptIPv4 = v4
		}
		if !set["interceptIPv6"] && a.InterceptIPv6.IsValid() {
			a.InterceptIPv6 = v6
		}
		return privateBPFFS, nil
	}
	return privateBPFFS, fmt.Errorf("pick intercept address: 169.254.77.%d-%d are all in use (one per running sluice run); set agent.interceptIPv4 and agent.interceptIPv6 in --config", runAddrFirst, runAddrLast)
}

// nodeAddrs lists the addresses the node's interfaces hold.
func nodeAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil {
			out[pfx.Addr().Unmap()] = true
		}
	}
	return out
}
