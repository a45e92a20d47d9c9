package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/node"
)

func init() {
	register("proxy", "run the explicit HTTP proxy (CONNECT and absolute-form) without eBPF", runProxy)
}

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "listen `ADDR` (default: the config's proxy.listen, else 127.0.0.1:3128)")
	cfgPath := fs.String("config", "", "config `FILE` (YAML)")
	policyPath := fs.String("policy", "", "policy `FILE`, reloaded on change; empty uses the embedded default")
	caDir := fs.String("ca-dir", "", "CA `DIR` (default: the config's ca.dir, or $SLUICE_CA_DIR); created on first start")
	auditPath := fs.String("audit-log", "", "write the JSON audit log to `FILE`, or \"stdout\" (default: the config's audit.file)")
	metricsAddr := fs.String("metrics", "", "serve /metrics (and /healthz, /readyz, /api/flows) for Prometheus on `ADDR` (ip:port; default: the config's admin.listen when the file sets it, else none)")
	verbose := fs.Bool("v", false, "log every decision (default: warnings and errors only)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sluice proxy [--listen ADDR] [--metrics ADDR] [--config FILE] [--policy FILE] [--ca-dir DIR] [--audit-log FILE]")
		fmt.Fprintln(stderr, "\nClients use it with HTTPS_PROXY=http://ADDR and trust the CA bundle (sluice ca export).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sluice proxy: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	cfg, err := loadConfig(*cfgPath, *policyPath, *caDir)
	if err != nil {
		fmt.Fprintf(stderr, "sluice proxy: %v\n", err)
		return 2
	}
	if *auditPath != "" {
		cfg.Audit.File = *auditPath
	}
	serveAdmin := cfg.Set.Has("admin.listen")
	if *metricsAddr != "" {
		cfg.Admin.Listen, serveAdmin = *metricsAddr, true
		if err := admin.ValidateListen(*metricsAddr, cfg.Agent.InterceptIPv4, cfg.Agent.InterceptIPv6); err != nil {
			fmt.Fprintf(stderr, "sluice proxy: --metrics: %v\n", err)
			return 2
		}
	}
	addr := *listen
	if addr == "" {
		addr = cfg.Proxy.Listen
	}
	if addr == "" {
		addr = "127.0.0.1:3128"
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	n, err := node.Start(ctx, cfg, node.Options{Log: log, Stdout: stdout, Watch: true, Admin: serveAdmin})
	if err != nil {
		fmt.Fprintf(stderr, "sluice proxy: %v\n", err)
		return 1
	}
	defer n.Close()

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice proxy: listen on %s: %v\n", addr, err)
		return 1
	}
	bundle := filepath.Join(cfg.CA.Dir, ca.CertFile)
	if cfg.CA.Secret != "" {
		bundle = "the " + ca.CertFile + " of secret " + cfg.CA.Secret
	}
	fmt.Fprintf(stderr, "sluice proxy: listening on %s; clients use HTTPS_PROXY=http://%s and trust %s (SHA-256 %s)\n",
		ln.Addr(), ln.Addr(), bundle, n.CA.Fingerprint())
	if a := n.AdminAddr(); a != nil {
		fmt.Fprintf(stderr, "sluice proxy: metrics on http://%s/metrics\n", a)
	}
	if err := n.ServeExplicit(ctx, ln); err != nil {
		fmt.Fprintf(stderr, "sluice proxy: %v\n", err)
		return 1
	}
	return 0
}
