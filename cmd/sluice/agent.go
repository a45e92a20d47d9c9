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
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/mitm"
	"github.com/sluicehq/sluice/policy"
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

// serveAgent wires the CA, policy, audit sink and proxy to the agent and
// runs until ctx is done.
func serveAgent(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	authority, err := ca.LoadOrInit(cfg.CA.Dir, ca.Options{KeyType: cfg.CA.KeyType, LeafCacheSize: cfg.CA.LeafCacheSize})
	if err != nil {
		return err
	}
	eng, err := policy.Load(cfg.PolicyFile)
	if err != nil {
		return err
	}
	var cur policy.Current
	cur.Store(eng)
	var w io.Writer = stdout
	if f := cfg.Audit.File; f != "" && f != "stdout" {
		af, err := os.OpenFile(f, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open audit log: %w", err)
		}
		defer af.Close()
		w = af
	}
	proxy, err := mitm.New(cfg.Proxy, mitm.Deps{
		CA:            authority,
		Policy:        &cur,
		Audit:         audit.NewJSONLog(w),
		Log:           log,
		Dialer:        &net.Dialer{Control: agent.MarkControl(cfg.Agent.Mark)},
		LogHeaders:    cfg.Audit.LogHeaders,
		RedactHeaders: cfg.Audit.RedactHeaders,
	})
	if err != nil {
		return err
	}
	ag, err := agent.Start(ctx, cfg.Agent, proxy, log, agent.Options{})
	if err != nil {
		return err
	}
	<-ctx.Done()
	return ag.Close()
}
