package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/launch"
	"github.com/sluicehq/sluice/node"
)

func init() {
	// The command of `sluice run` starts as sluice itself, the child half
	// (launch.Child), which sets up the command's protections and execs
	// it: that happens here, before main and before anything else.
	if len(os.Args) > 1 && os.Args[1] == launch.ChildArg {
		os.Exit(launch.Child(os.Args[2:]))
	}
	register("run", "run one command with its egress intercepted and print a per-process summary", runRun)
}

func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config `FILE` (YAML): policyFile and the ca, audit, proxy and agent sections apply; keys only a node agent or sluice proxy uses (agent.cgroups, agent.failMode, agent.attach, admin.listen, proxy.listen) are refused, and so is audit.file stdout")
	policyPath := fs.String("policy", "", "policy `FILE`; empty uses the config's policyFile, else the embedded default (audit everything, deny cloud metadata)")
	auditPath := fs.String("audit-log", "", "write the JSON audit log to `FILE` (default: the config's audit.file, else none, only the summary)")
	caDir := fs.String("ca-dir", "", "CA directory (default: the config's ca.dir, or $SLUICE_CA_DIR)")
	noCAEnv := fs.Bool("no-ca-env", false, "do not set the CA-trust variables for the command (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE, GIT_SSL_CAINFO, AWS_CA_BUNDLE, and the trust store in JAVA_TOOL_OPTIONS)")
	noSummary := fs.Bool("no-summary", false, "do not print the egress summary at exit")
	keepCaps := fs.Bool("keep-caps", false, "keep CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_SYS_PTRACE and CAP_SYS_MODULE in the command's capability sets; RISK: a root command can then leave its cgroup, detach the hooks or use raw sockets, and so go around the interception: use only for a command you trust")
	metricsAddr := fs.String("metrics", "", "serve /metrics (and /healthz, /readyz, /api/flows) for Prometheus on `ADDR` (ip:port) while the command runs; the command itself cannot connect to it")
	verbose := fs.Bool("v", false, "log every decision to stderr (default: denials, warnings and errors only)")
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
	privateBPFFS, err := launch.Configure(&cfg, launch.Setup{PID: os.Getpid(), InUse: launch.NodeAddrs(), AuditLog: *auditPath})
	if err != nil {
		fmt.Fprintf(stderr, "sluice run: %v\n", err)
		return 2
	}
	if privateBPFFS != "" {
		defer os.RemoveAll(privateBPFFS)
	}
	if *metricsAddr != "" {
		// After Configure, which refuses admin.listen in --config: the
		// flag is the one way to ask a run for metrics.
		cfg.Admin.Listen = *metricsAddr
		if err := admin.ValidateListen(*metricsAddr, cfg.Agent.InterceptIPv4, cfg.Agent.InterceptIPv6); err != nil {
			fmt.Fprintf(stderr, "sluice run: --metrics: %v\n", err)
			return 2
		}
	}
	// A reader that goes away (sluice run … | head -1) must not kill
	// sluice by SIGPIPE before it has removed its hooks, pins and CA
	// bundle: with SIGPIPE notified, writes to a closed stdout or stderr
	// fail with EPIPE instead. The command itself still gets the default
	// SIGPIPE (handled signals are reset at exec).
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	code, err := runIntercepted(ctx, cfg, log, runArgs{argv: argv, caEnv: !*noCAEnv, summary: !*noSummary, keepCaps: *keepCaps, metrics: *metricsAddr != ""}, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice run: %v\n", err)
	}
	return code
}

// runArgs are the command and the flags of `sluice run` that shape it.
type runArgs struct {
	argv     []string
	caEnv    bool // set the CA-trust variables (not --no-ca-env)
	summary  bool // print the egress summary (not --no-summary)
	keepCaps bool // --keep-caps
	metrics  bool // --metrics: serve the admin API on cfg.Admin.Listen
}

// runIntercepted starts a node intercepting nothing but the command's
// transient cgroup, runs the command, stops the interception and prints
// the egress summary.
func runIntercepted(ctx context.Context, cfg config.Config, log *slog.Logger, a runArgs, stderr io.Writer) (int, error) {
	mount, err := cgroup2.Mount()
	if err != nil {
		return 1, err
	}
	n, err := node.Start(ctx, cfg, node.Options{Log: log, Intercept: true, Admin: a.metrics})
	if err != nil {
		return 1, err
	}
	var caPEM []byte
	if a.caEnv {
		caPEM = n.CA.BundlePEM()
	}
	code, runErr := launch.Run(ctx, launch.Options{
		Argv:         a.argv,
		Env:          withoutVars(os.Environ(), n.CredentialEnv()),
		Stdin:        os.Stdin,
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
		CAPEM:        caPEM,
		Cgroup2Mount: mount,
		KeepCaps:     a.keepCaps,
		Log:          log,
		Intercept: func(_ context.Context, cgroupPath, _ string) error {
			return n.SelectCgroup(cgroupPath)
		},
	})
	if err := n.Close(); err != nil {
		log.Warn("stop interception", audit.KeyError, err)
	}
	if a.summary {
		fmt.Fprintln(stderr, "\nsluice: egress summary")
		writeFlowsTable(stderr, n.Flows.Snapshot())
	}
	return code, runErr
}

// withoutVars is env without the variables named in drop: the
// credentials' variables stay with Sluice, out of the command's reach.
func withoutVars(env, drop []string) []string {
	if len(drop) == 0 {
		return env
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(drop, k) {
			out = append(out, kv)
		}
	}
	return out
}
