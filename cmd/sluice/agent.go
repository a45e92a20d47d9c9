package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/node"
)

func init() {
	register("agent", "run the node agent (eBPF interception + proxy); --cleanup removes what it installed", runAgent)
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config `FILE` (YAML); empty uses the defaults")
	cleanup := fs.Bool("cleanup", false, "remove every hook, pin, map and the intercept address, then exit")
	force := fs.Bool("force", false, "take over (or, with --cleanup, remove) the address and pins another live agent holds")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice agent --config FILE [--cleanup] [--force]")
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
		if err := agent.CleanupWith(cfg.Agent, log, agent.CleanupOptions{Force: *force}); err != nil {
			fmt.Fprintf(stderr, "sluice agent: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, "sluice agent: removed hooks, pins and the intercept address")
		return 0
	}
	if err := serveAgent(ctx, cfg, log, stdout, *force); err != nil {
		fmt.Fprintf(stderr, "sluice agent: %v\n", err)
		return 1
	}
	return 0
}

// serveAgent runs the node (proxy, policy with reload, audit sinks,
// metrics, flows, admin listener, eBPF agent) until ctx is done.
func serveAgent(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer, force bool) error {
	n, err := node.Start(ctx, cfg, node.Options{Log: log, Stdout: stdout, Watch: true, Intercept: true, Admin: true, Force: force})
	if err != nil {
		return err
	}
	return errors.Join(n.Wait(ctx), n.Close())
}
