// Package admin is the agent's admin HTTP listener: /metrics for
// Prometheus, /healthz and /readyz for Kubernetes probes, and /api/flows,
// the live egress table `sluice flows` reads. It listens apart from the
// intercept address (default 127.0.0.1:9090, config admin.listen), and the
// hooks refuse selected workloads' connects to it, so a workload cannot
// read what other workloads do.
//
// The API under /api/ names every workload's processes and destinations,
// so it answers connections from a loopback address only (403 otherwise),
// whichever address the listener has: on a node address (the DaemonSet's
// --admin-host, for Prometheus) the hooks keep selected workloads out,
// but pods that are not selected, and other nodes, reach that address
// too. /metrics, /healthz and /readyz stay on every listener. The agent
// serves a loopback listener beside a node-address one for `sluice flows`
// on the node (kubectl exec into the agent pod).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/mcpstate"
)

// DefaultListen is where the admin listener binds unless configured.
const DefaultListen = "127.0.0.1:9090"

// FlowsPath is the path of the flows API.
const FlowsPath = "/api/flows"

// APIPrefix is where the read API lives: loopback peers only.
const APIPrefix = "/api/"

// loopbackOnly answers 403 to a request whose peer is not a loopback
// address (see the package comment).
func loopbackOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintln(w, "forbidden: the admin API answers loopback connections only; run sluice flows on the node (in Kubernetes: kubectl exec into the agent pod)")
			return
		}
		h(w, r)
	}
}

// MCPPath is the path of the MCP tools API (GET: an mcpstate.Snapshot);
// MCPAckPath acknowledges tool changes (POST an AckRequest as JSON).
const (
	MCPPath    = "/api/mcp"
	MCPAckPath = "/api/mcp/ack"
)

// AckRequest is the body of a POST to MCPAckPath: the changes of Tool
// (every changed tool of the server with All) at Server, seen by
// Workload (every workload when empty), are acknowledged.
type AckRequest struct {
	Server   string `json:"server"`
	Workload string `json:"workload,omitempty"`
	Tool     string `json:"tool,omitempty"`
	All      bool   `json:"all,omitempty"`
}

// AckResponse lists what an ack acknowledged.
type AckResponse struct {
	Acknowledged []mcpstate.Server `json:"acknowledged"`
}

// Options are the collaborators of a Server. All may be nil.
type Options struct {
	// Registry is served at /metrics (a *prometheus.Registry, e.g.
	// metrics.Metrics.Registry()). Nil: /metrics answers 404.
	Registry prometheus.Gatherer
	// Ready returns nil once the agent can do its job (hooks attached,
	// proxy listening), else an error saying what it waits for. It is
	// called on every /readyz request and must be fast. Nil: always ready.
	Ready func() error
	// Flows is served at /api/flows. Nil: an empty table.
	Flows *flows.Table
	// MCP is served at /api/mcp and acknowledged through /api/mcp/ack
	// (sluice mcp). Nil: an empty store.
	MCP *mcpstate.Store
	Log *slog.Logger
}

// Server is the admin HTTP server.
type Server struct {
	o   Options
	log *slog.Logger
	mux *http.ServeMux
}

// New builds the server; Serve runs it.
func New(o Options) *Server {
	if o.Flows == nil {
		o.Flows = flows.New(flows.Options{MaxRows: 1})
	}
	if o.MCP == nil {
		o.MCP, _ = mcpstate.Open("", 1)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, log: log.With(audit.KeyComponent, audit.ComponentAdmin), mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if o.Registry != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{
			ErrorLog:          slogPrinter{s.log},
			ErrorHandling:     promhttp.ContinueOnError,
			EnableOpenMetrics: true,
		}))
	}
	s.mux.HandleFunc("GET "+FlowsPath, loopbackOnly(s.flows))
	s.mux.HandleFunc("GET "+MCPPath, loopbackOnly(s.mcp))
	s.mux.HandleFunc("POST "+MCPAckPath, loopbackOnly(s.mcpAck))
	s.mux.HandleFunc(APIPrefix, loopbackOnly(http.NotFound))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "sluice admin: /metrics /healthz /readyz "+FlowsPath+" "+MCPPath)
	})
	return s
}

// Handler serves the admin endpoints (for tests and for callers that run
// their own http.Server).
func (s *Server) Handler() http.Handler { return s.mux }

// Serve answers on ln until ctx is done, then shuts down gracefully
// (waiting up to 5s for requests in flight) and returns nil. Serve owns ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	s.log.Info("admin listening", audit.KeyAddr, ln.Addr().String())
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	// Serve failed on its own: release the shutdown goroutine's wait by
	// closing the server now.
	_ = hs.Close()
	return fmt.Errorf("serve admin on %s: %w", ln.Addr(), err)
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.o.Ready != nil {
		if err := s.o.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

func (s *Server) flows(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	if err := enc.Encode(s.o.Flows.Snapshot()); err != nil {
		s.log.Debug("write flows", audit.KeyError, err)
	}
}

func (s *Server) mcp(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(s.o.MCP.Snapshot()); err != nil {
		s.log.Debug("write mcp tools", audit.KeyError, err)
	}
}

// mcpAck acknowledges tool changes. It takes JSON only, which a browser
// cannot send to another origin without asking first, so a page open on
// the node cannot acknowledge for its user.
func (s *Server) mcpAck(w http.ResponseWriter, r *http.Request) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" {
		http.Error(w, "send the acknowledgement as application/json", http.StatusUnsupportedMediaType)
		return
	}
	var req AckRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "read acknowledgement: "+err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case req.Server == "":
		http.Error(w, "server is required", http.StatusBadRequest)
		return
	case req.Tool == "" && !req.All:
		http.Error(w, "name a tool, or set all", http.StatusBadRequest)
		return
	case req.Tool != "" && req.All:
		http.Error(w, "name a tool or set all, not both", http.StatusBadRequest)
		return
	}
	acked, err := s.o.MCP.Ack(req.Server, req.Workload, req.Tool)
	if err != nil {
		s.log.Error("acknowledge mcp tool change", audit.KeyError, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for _, sv := range acked {
		for _, t := range sv.Tools {
			s.log.Info("mcp tool change acknowledged", audit.KeyHost, sv.Server, audit.KeyWorkload, sv.Workload, audit.KeyMCPTool, t.Name)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if acked == nil {
		acked = []mcpstate.Server{}
	}
	_ = json.NewEncoder(w).Encode(AckResponse{Acknowledged: acked})
}

type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.l.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }

// Gate is a readiness check made of named conditions, each marked done
// once, and of live checks that are asked on every call: the agent
// creates it with "hooks attached" and "proxy listening", marks each when
// it happens, adds the running agent's Ready with Watch (a missing
// intercept address makes it unready), and passes Err as Options.Ready.
type Gate struct {
	mu      sync.Mutex
	pending []string
	checks  []func() error
}

// NewGate waits for every condition named.
func NewGate(conditions ...string) *Gate {
	return &Gate{pending: slices.Clone(conditions)}
}

// Done marks a condition met; unknown names are ignored.
func (g *Gate) Done(condition string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pending = slices.DeleteFunc(g.pending, func(c string) bool { return c == condition })
}

// Undo marks a condition unmet again (e.g. the proxy listener failed).
func (g *Gate) Undo(condition string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !slices.Contains(g.pending, condition) {
		g.pending = append(g.pending, condition)
	}
}

// Watch adds a live check, asked on every Err once the conditions are
// done; it must be fast and safe for concurrent use (agent.Agent.Ready).
func (g *Gate) Watch(check func() error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checks = append(g.checks, check)
}

// Err is nil once every condition is done and every live check passes,
// else names the conditions pending, or what the failing checks say.
func (g *Gate) Err() error {
	g.mu.Lock()
	pending, checks := slices.Clone(g.pending), slices.Clone(g.checks)
	g.mu.Unlock()
	if len(pending) > 0 {
		return fmt.Errorf("waiting for %s", strings.Join(pending, ", "))
	}
	var errs []error
	for _, c := range checks {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ValidateListen checks the admin listen address (config admin.listen):
// it must be host:port with an IP host, and never one of the intercept
// addresses, where workloads' redirected traffic arrives. The error names
// the key, the value and the fix. An unspecified host (0.0.0.0, [::]) is
// refused: the hooks deny selected workloads' connects to the concrete
// admin address and port only, and a listener on every address would be
// reachable through an address the node gains later (or one the deny
// list was not built from). Prometheus scraping a node address binds that
// address.
func ValidateListen(listen string, intercept ...netip.Addr) error {
	ap, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("admin.listen %q: must be ip:port, e.g. %s", listen, DefaultListen)
	}
	if ap.Addr().Unmap().IsUnspecified() {
		return fmt.Errorf("admin.listen %q: an unspecified address listens on every address, and workloads could reach it through one the hooks do not deny; bind a specific address such as %s", listen, DefaultListen)
	}
	for _, a := range intercept {
		if a.IsValid() && ap.Addr().Unmap() == a.Unmap() {
			return fmt.Errorf("admin.listen %q: is the intercept address, which workloads reach; use a loopback or node address, e.g. %s", listen, DefaultListen)
		}
	}
	return nil
}
