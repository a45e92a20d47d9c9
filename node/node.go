// Package node assembles one Sluice node from its configuration, so that
// `sluice agent`, `sluice run` and `sluice proxy` share one assembly and
// cmd/sluice stays flags and a call to Start. A node is the CA, the policy
// in force (reloaded on change), the audit sinks (JSON log, access log,
// metrics, flows table, pcapng capture) and the proxy; with
// Options.Intercept also the eBPF agent that steers workloads into the
// proxy (its connect events feed the metrics and the flows table), and
// with Options.Admin the admin listener (/metrics, /healthz, /readyz that
// waits for the hooks and the proxy, /api/flows).
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/containers"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/headroom"
	"github.com/sluicehq/sluice/kubeapi"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/mitm"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// Options say which parts of a node run besides the proxy.
type Options struct {
	// Log receives every component's log lines; nil means slog.Default().
	Log *slog.Logger
	// Stdout receives the JSON audit log when audit.file is "stdout" or
	// empty; nil means os.Stdout.
	Stdout io.Writer
	// Watch reloads the policy file on change and on SIGHUP.
	Watch bool
	// Intercept starts the eBPF agent of cfg.Agent with the proxy as its
	// handler; the proxy's upstream sockets then carry agent.mark. Without
	// it the node is the proxy alone (ServeExplicit).
	Intercept bool
	// Admin serves the admin API (/metrics, /healthz, /readyz,
	// /api/flows) on cfg.Admin.Listen when it is not empty, with or
	// without Intercept (sluice proxy --metrics, sluice run --metrics).
	Admin bool
	// Force lets the agent take over the intercept address and pins
	// that another live agent holds (sluice agent --force).
	Force bool
}

// Node is a running node. Its exported parts may be read at any time,
// also after Close (the flows table for a summary, say).
type Node struct {
	CA      *ca.Authority
	Proxy   *mitm.Proxy
	Metrics *metrics.Metrics
	Flows   *flows.Table
	// DNS is the agent's DNS server (nil without Options.Intercept or
	// with agent.dnsPort 0); DNS.NamesFor gives the names a workload
	// resolved to an address.
	DNS *agent.DNSServer
	// names gives the proxy the DNS server's bindings once it exists (the
	// proxy is built first).
	names lateNames

	log      *slog.Logger
	policy   *policy.Current
	agent    *agent.Agent // nil without Options.Intercept
	logs     audit.Multi  // the audit and access logs (not metrics, flows)
	closers  []io.Closer
	headroom *headroom.Headroom // nil when process.gcHeadroom is off or another node holds it
	// The admin server runs until stop; done is closed when it has
	// returned adminErr.
	stop      context.CancelFunc
	done      chan struct{}
	adminAddr net.Addr // nil without an admin server
	adminErr  error
	closeOnce sync.Once
	closeErr  error
}

// Start assembles the node described by cfg and starts what opts ask for.
// It returns once the proxy is ready and, with Intercept, the hooks are
// attached. On error, everything it started is stopped again. ctx bounds
// the policy watcher and the agent's background work; Close stops the
// rest.
func Start(ctx context.Context, cfg config.Config, opts Options) (_ *Node, err error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	n := &Node{log: log, policy: &policy.Current{}}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if opts.Admin && cfg.Admin.Listen != "" {
		if err := admin.ValidateListen(cfg.Admin.Listen, cfg.Agent.InterceptIPv4, cfg.Agent.InterceptIPv6); err != nil {
			return nil, err
		}
	}
	if err := fitFiles(&cfg.Proxy, cfg.Set, log, processLimits{}); err != nil {
		return nil, err
	}
	n.headroom = headroom.Start(int64(cfg.Process.GCHeadroom), log)
	var dialer *net.Dialer
	if opts.Intercept {
		dialer = &net.Dialer{Control: agent.MarkControl(cfg.Agent.Mark)}
	}
	if err := n.startProxy(ctx, cfg, opts, dialer); err != nil {
		return nil, err
	}
	var adminLns []net.Listener
	if opts.Admin && cfg.Admin.Listen != "" {
		if adminLns, err = listenAdmin(cfg.Admin.Listen, log); err != nil {
			return nil, err
		}
	}
	if !opts.Intercept {
		if adminLns != nil {
			n.serveAdmin(adminLns, nil) // the proxy alone: ready once started
		}
		return n, nil
	}

	const hooksAttached, proxyListening = "hooks attached", "proxy listening"
	gate := admin.NewGate(hooksAttached, proxyListening)
	// What never reached the proxy is recorded too (eventSink).
	sink := &eventSink{metrics: n.Metrics, flows: n.Flows, logs: n.logs}
	aopts := agent.Options{
		Force:      opts.Force,
		OnEvent:    sink.event,
		OnBatchEnd: sink.batchEnd,
	}
	if adminLns != nil {
		// Workloads may not read the admin API, on any node address.
		for _, ln := range adminLns {
			if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil {
				aopts.DenyAddrPorts = append(aopts.DenyAddrPorts, ap)
			}
		}
		// The admin listener answers /healthz while the agent starts;
		// /readyz waits for the hooks and the proxy.
		n.serveAdmin(adminLns, gate.Err)
	}
	if cfg.Agent.DNSPort != 0 {
		if aopts.DNS, err = newDNSServer(cfg, n, dialer, log); err != nil {
			return nil, err
		}
		n.DNS = aopts.DNS
		n.names.p.Store(n.DNS) // the proxy hears what workloads resolved
	}
	if aopts.Metadata, err = n.startContainers(ctx, cfg.Agent.Runtime, log); err != nil {
		return nil, err
	}
	n.agent, err = agent.Start(ctx, cfg.Agent, n.Proxy, log, aopts)
	if err != nil {
		return nil, err
	}
	gate.Done(hooksAttached)
	gate.Done(proxyListening)
	gate.Watch(n.agent.Ready) // the intercept address and its guards, live
	n.Metrics.SetRingDrops(n.agent.Drops)
	n.Metrics.SetMapErrors(n.agent.MapErrors)
	n.Metrics.SetInterceptRestorations(n.agent.Restorations)
	n.Metrics.SetEgressDrops(n.agent.EgressDrops)
	return n, nil
}

// listenAdmin listens on admin.listen and, when that is not a loopback
// address (a node address for Prometheus), on the loopback address of its
// family with the same port too: the API under /api/ answers loopback
// peers only (admin.APIPrefix), so `sluice flows` on the node reads it
// there. A busy loopback port is logged, not fatal: /metrics still works.
func listenAdmin(listen string, log *slog.Logger) ([]net.Listener, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen on admin.listen %s: %w", listen, err)
	}
	lns := []net.Listener{ln}
	ap, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil || ap.Addr().Unmap().IsLoopback() {
		return lns, nil
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		lo = netip.IPv6Loopback()
	}
	local := netip.AddrPortFrom(lo, ap.Port()).String()
	if l, err := net.Listen("tcp", local); err != nil {
		log.Warn("admin API: no loopback listener, so sluice flows can't read this agent (the API answers loopback peers only); /metrics and the probes are served on admin.listen", audit.KeyAddr, local, audit.KeyError, err.Error())
	} else {
		lns = append(lns, l)
	}
	return lns, nil
}

// startContainers runs the container metadata cache of agent.runtime
// until Close; nil (and no error) when it finds no runtime.
func (n *Node) startContainers(ctx context.Context, r config.Runtime, log *slog.Logger) (agent.Metadata, error) {
	c, err := containers.FromConfig(r, log)
	if err != nil || len(c.Sources()) == 0 {
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(cctx) }()
	n.closers = append(n.closers, closerFunc(func() error {
		cancel()
		<-done
		return c.Close()
	}))
	for _, s := range c.Sources() {
		log.Info("container metadata from the runtime", audit.KeyComponent, audit.ComponentContainers, audit.KeyRuntime, s.Name())
	}
	return c, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// serveAdmin serves the admin API (/metrics, /healthz, /readyz asking
// ready, /api/flows) on lns until Close; AdminAddr is the first's.
func (n *Node) serveAdmin(lns []net.Listener, ready func() error) {
	actx, stop := context.WithCancel(context.Background())
	n.stop, n.done, n.adminAddr = stop, make(chan struct{}), lns[0].Addr()
	srv := admin.New(admin.Options{Registry: n.Metrics.Registry(), Ready: ready, Flows: n.Flows, MCP: n.Proxy.MCPTools(), Log: n.log})
	errs := make([]error, len(lns))
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Go(func() {
			errs[i] = srv.Serve(actx, ln)
			if errs[i] != nil {
				stop() // one failed: end the others, Wait reports it
			}
		})
	}
	go func() {
		wg.Wait()
		n.adminErr = errors.Join(errs...)
		close(n.done)
	}()
}

// newDNSServer builds the agent's DNS server: upstreams from
// agent.dns.upstreams, else the node's /etc/resolv.conf; its forwarding
// carries the agent's mark (dialer); records go to the audit sinks and
// the metrics.
func newDNSServer(cfg config.Config, n *Node, dialer *net.Dialer, log *slog.Logger) (*agent.DNSServer, error) {
	d := cfg.Agent.DNS
	var ups []netip.AddrPort
	for _, u := range d.Upstreams {
		ap, err := config.ParseUpstream(u)
		if err != nil {
			return nil, fmt.Errorf("agent.dns.upstreams: %w", err)
		}
		ups = append(ups, ap)
	}
	if len(ups) == 0 {
		var err error
		if ups, err = agent.ResolvConfUpstreams("/etc/resolv.conf"); err != nil {
			return nil, fmt.Errorf("agent.dnsPort %d needs resolvers: %w (or set agent.dnsPort: 0)", cfg.Agent.DNSPort, err)
		}
	}
	rcode := dns.RcodeNameError
	if d.DenyRcode == "refused" {
		rcode = dns.RcodeRefused
	}
	var exfil *agent.ExfilOptions
	if x := d.Exfil; x.Mode != "off" {
		exfil = &agent.ExfilOptions{
			Enforce: x.Mode == "enforce", QueriesPerSecond: x.QueriesPerSecond,
			MaxLabelLength: x.MaxLabelLength, MaxLabelEntropy: x.MaxLabelEntropy, EntropyMinLength: x.EntropyMinLength,
			UniqueSubdomainsPerMinute: x.UniqueSubdomainsPerMinute, TrackSize: x.TrackSize,
		}
	}
	return agent.NewDNSServer(agent.DNSOptions{
		Upstreams: ups, DenyRcode: rcode, CacheSize: d.CacheSize, NamesSize: d.NamesSize,
		Policy: n.policy, Audit: append(n.logs, n.Metrics), Log: log, Dialer: dialer, Exfil: exfil,
	})
}

// caSecretTimeout bounds the Kubernetes API's part in a start with
// ca.secret.
const caSecretTimeout = 30 * time.Second

// caSecretRetry is the first wait before asking the API again, doubled
// up to eight times that.
const caSecretRetry = 500 * time.Millisecond

// loadCA is the CA of c: the Kubernetes Secret every node shares
// (ca.secret), created there by the first agent to find it missing or
// empty; else this host's own, in ca.dir.
func loadCA(ctx context.Context, c config.CA, log *slog.Logger) (*ca.Authority, error) {
	o := ca.Options{KeyType: c.KeyType, LeafCacheSize: c.LeafCacheSize}
	if c.Secret == "" {
		return ca.LoadOrInit(c.Dir, o)
	}
	ns, name, err := config.SplitSecret(c.Secret)
	if err != nil {
		return nil, fmt.Errorf("ca.secret %q: %w", c.Secret, err)
	}
	api, ok, err := kubeapi.InCluster()
	if err != nil {
		return nil, fmt.Errorf("ca.secret %s: %w", c.Secret, err)
	}
	if !ok {
		return nil, fmt.Errorf("ca.secret %s: not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST, or no service account token in %s): set ca.dir instead", c.Secret, kubeapi.ServiceAccountDir)
	}
	return loadSharedCA(ctx, api, ns, name, o, log)
}

// loadSharedCA is the CA in the Secret namespace/name of api.
func loadSharedCA(ctx context.Context, api *kubeapi.Client, ns, name string, o ca.Options, log *slog.Logger) (*ca.Authority, error) {
	sec := api.Secret(ns, name)
	sec.Labels = map[string]string{"app.kubernetes.io/name": "sluice", "app.kubernetes.io/component": "ca"}
	ctx, cancel := context.WithTimeout(ctx, caSecretTimeout)
	defer cancel()
	var (
		a       *ca.Authority
		created bool
		err     error
	)
	// An API server that is briefly away (a control-plane upgrade, a
	// node that starts before its route to the Service) is waited for,
	// within caSecretTimeout; a refusal is not.
	for wait := caSecretRetry; ; wait = min(2*wait, 8*caSecretRetry) {
		a, created, err = ca.LoadOrInitShared(ctx, sec, o)
		if err == nil || !kubeapi.Transient(err) || ctx.Err() != nil {
			break
		}
		log.Warn("ca secret unreachable, retrying", audit.KeySecret, ns+"/"+name, audit.KeyError, err, audit.KeyRetryIn, wait.String())
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	if err != nil {
		return nil, err
	}
	msg := "ca loaded from the secret"
	if created {
		msg = "ca created in the secret"
	}
	log.Info(msg, audit.KeySecret, ns+"/"+name, audit.KeyFingerprint, a.Fingerprint())
	return a, nil
}

// startProxy builds the CA, the policy, the audit sinks and the proxy.
func (n *Node) startProxy(ctx context.Context, cfg config.Config, opts Options, dialer *net.Dialer) error {
	var err error
	n.CA, err = loadCA(ctx, cfg.CA, n.log)
	if err != nil {
		return err
	}
	if err := n.loadPolicy(ctx, cfg.PolicyFile, opts.Watch); err != nil {
		return err
	}
	sinks, err := n.openAudit(cfg.Audit, opts.Stdout)
	if err != nil {
		return err
	}
	n.Metrics = metrics.New(metrics.Options{})
	n.Metrics.SetLeafStats(func() metrics.LeafStats {
		st := n.CA.Stats()
		return metrics.LeafStats{Size: st.Size, Hits: st.Hits, Misses: st.Misses, Issued: st.Issued}
	})
	n.Flows = flows.New(flows.Options{})
	n.logs = sinks
	sinks = append(sinks, n.Metrics, n.Flows)

	capture, closer, err := openCapture(cfg.Audit.Capture)
	if err != nil {
		return err
	}
	if closer != nil {
		n.closers = append(n.closers, closer)
	}
	var resolver mitm.Resolver
	if dialer != nil {
		// Explicit-mode lookups go out with the agent's mark too.
		d := *dialer
		resolver = &net.Resolver{PreferGo: true, Dial: d.DialContext}
	}
	n.Proxy, err = mitm.New(cfg.Proxy, mitm.Deps{
		CA:            n.CA,
		Policy:        n.policy,
		Audit:         sinks,
		Log:           n.log,
		Dialer:        dialer,
		Resolver:      resolver,
		LogHeaders:    cfg.Audit.LogHeaders,
		RedactHeaders: cfg.Audit.RedactHeaders,
		Capture:       capture,
		Observer:      n.Metrics,
		Names:         n.namesDep(cfg, opts),
	})
	if err != nil {
		return err
	}
	n.Metrics.SetUpstreamHealth(func() []metrics.UpstreamHealth {
		hs := n.Proxy.UpstreamHealth()
		out := make([]metrics.UpstreamHealth, len(hs))
		for i, h := range hs {
			out[i] = metrics.UpstreamHealth{Group: h.Group, Target: h.Target, Healthy: h.Healthy}
		}
		return out
	})
	return nil
}

// loadPolicy puts the policy file (the embedded default when empty) in
// force and, with watch, reloads it on change and on SIGHUP.
func (n *Node) loadPolicy(ctx context.Context, file string, watch bool) error {
	popts := policy.Options{Limiters: policy.NewLimiters(0), Log: n.log.With(audit.KeyComponent, audit.ComponentPolicy)}
	if file == "" {
		eng, err := policy.Default(popts)
		if err != nil {
			return fmt.Errorf("load embedded default policy: %w", err)
		}
		n.policy.Store(eng)
		return nil
	}
	w := &policy.Watcher{Path: file, Options: popts, Apply: func(e *policy.Engine) { n.policy.Store(e) }, Log: n.log}
	eng, err := w.Load()
	if err != nil {
		return err
	}
	n.policy.Store(eng)
	if watch {
		w.Start(ctx)
	}
	return nil
}

// openAudit opens the JSON audit log (audit.file: a path, "stdout" or
// "none") and the access log (audit.accessLog).
func (n *Node) openAudit(a config.Audit, stdout io.Writer) (audit.Multi, error) {
	if stdout == nil {
		stdout = os.Stdout
	}
	// hold wraps a log's writer in the flush interval's buffer, closed
	// (flushed) before the file under it.
	hold := func(w io.Writer) io.Writer {
		if a.FlushInterval.D() <= 0 {
			return w
		}
		fw := audit.NewFlushWriter(w, a.FlushInterval.D())
		n.closers = append(n.closers, fw)
		return fw
	}
	var sinks audit.Multi
	switch a.File {
	case "", "stdout":
		sinks = append(sinks, audit.NewJSONLog(hold(stdout)))
	case "none":
	default:
		f, err := os.OpenFile(a.File, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open audit log: %w", err)
		}
		sinks = append(sinks, audit.NewJSONLog(hold(f)))
		n.closers = append(n.closers, f)
	}
	if a.AccessLog != "" {
		f, err := os.OpenFile(a.AccessLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open access log: %w", err)
		}
		sinks = append(sinks, audit.NewCombinedLog(hold(f)))
		n.closers = append(n.closers, f)
	}
	return sinks, nil
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

// AdminAddr is where the admin API listens (admin.listen, its port
// resolved), nil when the node serves none.
func (n *Node) AdminAddr() net.Addr { return n.adminAddr }

// SelectCgroup intercepts the cgroup at path (relative to the cgroup2
// mount). It needs Options.Intercept.
func (n *Node) SelectCgroup(path string) error {
	if n.agent == nil {
		return errors.New("select cgroup: the node was started without interception")
	}
	return n.agent.SelectCgroup(path)
}

// ServeExplicit serves the explicit proxy (CONNECT and absolute-form) on
// ln until ctx ends.
func (n *Node) ServeExplicit(ctx context.Context, ln net.Listener) error {
	return n.Proxy.ServeExplicit(ctx, ln)
}

// Wait blocks until ctx ends (nil) or the admin server fails (its error).
func (n *Node) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-n.done: // a nil channel without an admin server
		return n.adminErr
	}
}

// Close stops the agent (in failMode open its hooks go with it), the
// admin server and the proxy, and closes the audit files. It may be
// called more than once and on a partly started node.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.agent != nil {
			errs = append(errs, n.agent.Close())
		}
		if n.stop != nil {
			n.stop()
			<-n.done
		}
		if n.Proxy != nil {
			errs = append(errs, n.Proxy.Close())
		}
		for _, c := range n.closers {
			errs = append(errs, c.Close())
		}
		n.headroom.Stop()
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

var (
	_ mitm.Observer = (*metrics.Metrics)(nil)
	_ agent.Handler = (*mitm.Proxy)(nil)
)

// lateNames is mitm.Names backed by a DNS server set after the proxy is
// built; until then (and without one) it knows no names.
type lateNames struct {
	p atomic.Pointer[agent.DNSServer]
}

func (l *lateNames) NamesFor(id workload.Identity, addr netip.Addr) []string {
	if s := l.p.Load(); s != nil {
		return s.NamesFor(id, addr)
	}
	return nil
}

var _ mitm.Names = (*lateNames)(nil)

// namesDep is the proxy's Deps.Names: the DNS server's bindings when the
// agent will run one, nil otherwise, so that the proxy never takes a
// missing server for a workload that resolved nothing
// (policy.Conn.Unresolved).
func (n *Node) namesDep(cfg config.Config, opts Options) mitm.Names {
	if !opts.Intercept || cfg.Agent.DNSPort == 0 {
		return nil
	}
	return &n.names
}
