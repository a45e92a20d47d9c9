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

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/config"
)

func init() {
	register("agent", "run the node agent (eBPF interception + proxy); --cleanup removes what it installed", runAgent)
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config `FILE` (YAML); empty uses the defaults")
	cleanup := fs.Bool("cleanup", false, "remove every hook, pin, map and the intercept address, then exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice agent --config FILE [--cleanup]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "sluice agent: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	if *cleanup {
		if err := agent.Cleanup(cfg.Agent, log); err != nil {
			fmt.Fprintf(stderr, "sluice agent: cleanup: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, "sluice agent: removed hooks, pins and the intercept address")
		return 0
	}
	if err := serveAgent(ctx, cfg, log, stdout); err != nil {
		fmt.Fprintf(stderr, "sluice agent: %v\n", err)
		return 1
	}
	return 0
}

// serveAgent runs the proxy stack (CA, policy with reload, audit sinks,
// metrics, flows), the admin listener and the agent until ctx is done.
func serveAgent(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	if cfg.Admin.Listen != "" {
		if err := admin.ValidateListen(cfg.Admin.Listen, cfg.Agent.InterceptIPv4, cfg.Agent.InterceptIPv6); err != nil {
			return err
		}
	}
	var auditOut io.Writer
	if cfg.Audit.File == "" || cfg.Audit.File == "stdout" {
		auditOut = stdout
	}
	st, err := newStack(ctx, cfg, log, stackOptions{
		Audit:  auditOut,
		Dialer: &net.Dialer{Control: agent.MarkControl(cfg.Agent.Mark)},
		Watch:  true,
	})
	if err != nil {
		return err
	}
	defer st.Close()
	defer st.proxy.Close()

	const hooksAttached, proxyListening = "hooks attached", "proxy listening"
	gate := admin.NewGate(hooksAttached, proxyListening)
	opts := agent.Options{
		OnEvent: func(e agent.Event) {
			st.metrics.ConnectEvent(string(e.Verdict))
			st.flows.Connect(e.PID, e.Comm, e.Cgroup, e.Dst, string(e.Verdict))
		},
	}
	var adminLn net.Listener
	if cfg.Admin.Listen != "" {
		adminLn, err = net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			return fmt.Errorf("listen on admin.listen %s: %w", cfg.Admin.Listen, err)
		}
		defer adminLn.Close()
		// Workloads may not read the admin API, on any node address.
		if ap, err := netip.ParseAddrPort(adminLn.Addr().String()); err == nil {
			opts.DenyAddrPorts = append(opts.DenyAddrPorts, ap)
		}
	}
	// The admin listener answers /healthz while the agent starts; /readyz
	// waits for the hooks and the proxy.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	if adminLn != nil {
		srv := admin.New(admin.Options{Registry: st.metrics.Registry(), Ready: gate.Err, Flows: st.flows, Log: log})
		go func() { errc <- srv.Serve(actx, adminLn) }()
	}
	ag, err := agent.Start(ctx, cfg.Agent, st.proxy, log, opts)
	if err != nil {
		return err
	}
	gate.Done(hooksAttached)
	gate.Done(proxyListening)
	st.metrics.SetRingDrops(ag.Drops)

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	return errors.Join(err, ag.Close())
}
