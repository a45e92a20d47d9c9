package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/mitm"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
)

// stack is the proxy side that `sluice agent`, `sluice run` and `sluice
// proxy` share: the CA, the policy in force (reloaded on change), the audit
// sinks (JSON log, metrics, flows table) and the proxy.
type stack struct {
	ca      *ca.Authority
	policy  *policy.Current
	metrics *metrics.Metrics
	flows   *flows.Table
	proxy   *mitm.Proxy
	closers []io.Closer
}

type stackOptions struct {
	// Audit, when set, receives the JSON audit log instead of cfg.Audit.File.
	Audit io.Writer
	// Dialer dials upstreams (the agent sets its SO_MARK on it).
	Dialer *net.Dialer
	// Watch reloads the policy file on change and on SIGHUP.
	Watch bool
}

func newStack(ctx context.Context, cfg config.Config, log *slog.Logger, o stackOptions) (_ *stack, err error) {
	s := &stack{policy: &policy.Current{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.ca, err = ca.LoadOrInit(cfg.CA.Dir, ca.Options{KeyType: cfg.CA.KeyType, LeafCacheSize: cfg.CA.LeafCacheSize})
	if err != nil {
		return nil, err
	}

	popts := policy.Options{Limiters: policy.NewLimiters(0), Log: log.With("component", "policy")}
	if cfg.PolicyFile == "" {
		eng, err := policy.Default(popts)
		if err != nil {
			return nil, fmt.Errorf("load embedded default policy: %w", err)
		}
		s.policy.Store(eng)
	} else {
		w := &policy.Watcher{Path: cfg.PolicyFile, Options: popts, Apply: func(e *policy.Engine) { s.policy.Store(e) }, Log: log}
		eng, err := w.Load()
		if err != nil {
			return nil, err
		}
		s.policy.Store(eng)
		if o.Watch {
			w.Start(ctx)
		}
	}

	var sinks audit.Multi
	switch {
	case o.Audit != nil:
		sinks = append(sinks, audit.NewJSONLog(o.Audit))
	case cfg.Audit.File == "" || cfg.Audit.File == "stdout":
		sinks = append(sinks, audit.NewJSONLog(os.Stdout))
	case cfg.Audit.File == "none":
	default:
		f, err := os.OpenFile(cfg.Audit.File, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open audit log: %w", err)
		}
		s.closers = append(s.closers, f)
		sinks = append(sinks, audit.NewJSONLog(f))
	}
	if cfg.Audit.AccessLog != "" {
		f, err := os.OpenFile(cfg.Audit.AccessLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open access log: %w", err)
		}
		s.closers = append(s.closers, f)
		sinks = append(sinks, audit.NewCombinedLog(f))
	}
	s.metrics = metrics.New(metrics.Options{})
	s.metrics.SetLeafStats(func() metrics.LeafStats {
		st := s.ca.Stats()
		return metrics.LeafStats{Size: st.Size, Hits: st.Hits, Misses: st.Misses, Issued: st.Issued}
	})
	s.flows = flows.New(flows.Options{})
	sinks = append(sinks, s.metrics, s.flows)

	capture, closer, err := openCapture(cfg.Audit.Capture)
	if err != nil {
		return nil, err
	}
	if closer != nil {
		s.closers = append(s.closers, closer)
	}
	var resolver mitm.Resolver
	if o.Dialer != nil {
		// Explicit-mode lookups go out with the agent's mark too.
		d := *o.Dialer
		resolver = &net.Resolver{PreferGo: true, Dial: d.DialContext}
	}
	s.proxy, err = mitm.New(cfg.Proxy, mitm.Deps{
		CA:            s.ca,
		Policy:        s.policy,
		Audit:         sinks,
		Log:           log,
		Dialer:        o.Dialer,
		Resolver:      resolver,
		LogHeaders:    cfg.Audit.LogHeaders,
		RedactHeaders: cfg.Audit.RedactHeaders,
		Capture:       capture,
		Observer:      s.metrics,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// loadConfig reads the config file (defaults when empty) and applies the
// command-line overrides that `sluice run` and `sluice proxy` share: the
// policy file, and the CA directory (flag, else $SLUICE_CA_DIR when no
// config file was given).
func loadConfig(cfgPath, policyPath, caDir string) (config.Config, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return cfg, err
	}
	if policyPath != "" {
		cfg.PolicyFile = policyPath
	}
	switch {
	case caDir != "":
		cfg.CA.Dir = caDir
	case os.Getenv("SLUICE_CA_DIR") != "" && cfgPath == "":
		cfg.CA.Dir = os.Getenv("SLUICE_CA_DIR")
	}
	return cfg, nil
}

// openCapture opens the pcapng capture the config names; nil when none.
// A single file must be closed (flushed) at exit; a directory's files are
// closed with their flows.
func openCapture(c config.Capture) (pcap.Capture, io.Closer, error) {
	o := pcap.Options{MaxBytes: int64(c.MaxBytes)}
	switch {
	case c.File != "":
		w, err := pcap.Create(c.File, o)
		if err != nil {
			return nil, nil, fmt.Errorf("open audit.capture.file: %w", err)
		}
		return w, w, nil
	case c.Dir != "":
		d, err := pcap.NewDir(c.Dir, o, c.MaxFiles)
		if err != nil {
			return nil, nil, fmt.Errorf("open audit.capture.dir: %w", err)
		}
		return d, nil, nil
	}
	return nil, nil, nil
}

var (
	_ mitm.Observer = (*metrics.Metrics)(nil)
	_ agent.Handler = (*mitm.Proxy)(nil)
)

// Close closes the audit files. Safe on a partly built stack.
func (s *stack) Close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c.Close())
	}
	s.closers = nil
	return errors.Join(errs...)
}
