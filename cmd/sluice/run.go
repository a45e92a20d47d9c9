package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/launch"
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
