package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"

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
	adminHost := fs.String("admin-host", "", "serve the admin API (/metrics, /healthz, /readyz, /api/flows) on `IP`, with admin.listen's port: the DaemonSet passes the node's address from the downward API (--admin-host $(HOST_IP)) so that Prometheus can scrape it")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice agent --config FILE [--admin-host IP] [--cleanup] [--force]")
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
	if *adminHost != "" {
		if cfg.Admin.Listen, err = adminOnHost(cfg.Admin.Listen, *adminHost); err != nil {
			fmt.Fprintf(stderr, "sluice agent: %v\n", err)
			return 2
		}
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

// adminOnHost returns listen (admin.listen, ip:port) with its address
// replaced by host, an IPv4 or IPv6 address: what --admin-host does.
func adminOnHost(listen, host string) (string, error) {
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return "", fmt.Errorf("--admin-host %s: admin.listen %q is not ip:port, so it has no port to keep; set admin.listen to e.g. 127.0.0.1:9090", host, listen)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("--admin-host %q: not an IP address; pass the node's address, e.g. from the downward API (status.hostIP)", host)
	}
	return netip.AddrPortFrom(a.Unmap(), ap.Port()).String(), nil
}
