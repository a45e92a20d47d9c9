// Package metrics turns what Sluice sees into Prometheus metrics, so the
// dashboards and alerts people already run can watch egress. Its main input
// is the audit record (Metrics is an audit.Sink); the agent, the CA and the
// proxy feed the rest through small methods and read-at-scrape functions.
//
// Everything lives on a private prometheus.Registry (never the global
// default), served by admin/. Names follow the Prometheus conventions:
// sluice_<subsystem>_<name>_<unit>, counters end in _total, durations are
// seconds and sizes bytes. Label values a workload controls (host, workload,
// rule, reason, connect decision) are bounded: past a limit they fold into
// "other".
//
// The metrics, with their labels:
//
//	sluice_proxy_requests_total{workload,host,method,code,decision,source}
//	sluice_proxy_request_duration_seconds{host,decision}      histogram of Record.Duration
//	sluice_proxy_upstream_duration_seconds{host}              histogram of Record.UpstreamDuration (when set)
//	sluice_proxy_transferred_bytes_total{workload,host,kind,direction}  direction "in" (from the client) or "out" (to the client)
//	sluice_proxy_l4_flows_total{workload,host,tls,decision}
//	sluice_proxy_tls_connections_total{mode}                  mode decrypted|passthrough|failed
//	sluice_proxy_untrusted_clients_total{workload,host}       clients that rejected Sluice's certificate (records with decision client_untrusted)
//	sluice_proxy_open_connections                             gauge, ConnOpened/ConnClosed
//	sluice_proxy_errors_total{kind,reason}                    records with decision "error" (upstream unreachable, verification failed, …)
//	sluice_proxy_cache_requests_total{status}                 X-Cache-Status of requests a rule caches: hit|miss|bypass|expired|revalidated
//	sluice_policy_denials_total{rule,reason,decision}         decision deny|would_deny; also the
//	                                                          resolution denials of connections (rule
//	                                                          public-resolver or require-resolved)
//	sluice_policy_rate_limited_total{workload,host,rule}      429 produced by Sluice
//	sluice_mcp_requests_total{workload,server,method,tool,decision}  MCP requests (records with mcp_method)
//	sluice_mcp_tool_duration_seconds{server,tool}              histogram of a tools/call's Record.Duration
//	sluice_mcp_tool_changes_total{workload,server,tool}        tools whose description or schema changed (rug pulls)
//	sluice_dns_queries_total{workload,rcode,decision}
//	sluice_dns_query_duration_seconds{rcode}                  query to answer, forwarding included
//	sluice_dns_exfil_flags_total{workload,reason,decision}    queries the exfiltration guard flagged; reason
//	                                                          rate|label_length|entropy|subdomains
//	sluice_workload_info{workload,namespace,pod,container,image}  1 for each workload the container runtime
//	                                                          named (an info metric: join on workload); bounded
//	                                                          by MaxWorkloads workloads and 5 series per workload
//	sluice_agent_connect_events_total{decision}
//	sluice_agent_events_dropped_total                         read at scrape time (SetRingDrops)
//	sluice_bpf_map_update_errors_total{map}                   read at scrape time (SetMapErrors)
//	sluice_agent_egress_denied_packets_total                  read at scrape time (SetEgressDrops)
//	sluice_agent_intercept_restorations_total                 read at scrape time (SetInterceptRestorations)
//	sluice_ca_leaf_cache_size, sluice_ca_leaf_cache_hits_total,
//	sluice_ca_leaf_cache_misses_total, sluice_ca_leaf_issued_total  read at scrape time (SetLeafStats)
//
//	sluice_upstream_healthy{group,target}                      read at scrape time (SetUpstreamHealth): 1 healthy, 0 unhealthy or ejected
package metrics

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// Options bound label cardinality. Zero values take the defaults.
type Options struct {
	// MaxHosts distinct host label values before the rest fold into
	// "other" (default 100).
	MaxHosts int
	// MaxWorkloads distinct workload label values (default 100).
	MaxWorkloads int
	// MaxRules distinct rule, reason, upstream and connect-decision
	// values (default 200). They come from configuration, so the limit is
	// a safety net.
	MaxRules int
	// Buckets for the latency histograms, in seconds; nil takes
	// LatencyBuckets.
	Buckets []float64
}

// LatencyBuckets suit API calls from a millisecond to the two-minute
// completions of a large language model.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// LeafStats is what the CA's certificate cache reports; the ca package
// has its own type, and the caller adapts it in a closure:
//
//	m.SetLeafStats(func() metrics.LeafStats { s := auth.Stats(); return metrics.LeafStats{Size: s.Size, Hits: s.Hits, Misses: s.Misses, Issued: s.Issued} })
type LeafStats struct {
	Size                 int
	Hits, Misses, Issued uint64
}

// Metrics is safe for concurrent use. Its methods never block on I/O.
type Metrics struct {
	reg *prometheus.Registry

	hosts, workloads, rules, reasons, connectDecisions *folder
	// connectCounters holds the counter of each admitted connect
	// decision (at most MaxRules): one lookup per connect event instead
	// of folding and hashing the label again.
	connectCounters sync.Map // string → prometheus.Counter
	// httpSeries holds the series an HTTP record counts in, by their
	// labels (httpLabels): one lookup per request instead of hashing and
	// validating the labels of five series again. It holds at most one
	// entry per sluice_proxy_requests_total series.
	httpSeries sync.Map // httpLabels → *httpSeries
	// recent holds, for the label sets of the last HTTP records, what
	// their labels folded to and their series (recentHTTP): a request
	// like the one before it (a keep-alive connection's next request)
	// costs a few string compares instead of four map lookups, the
	// workload's name and its info series check. noRecent turns it off
	// (tests compare with and without it).
	recent     [recentSlots]atomic.Pointer[recentHTTP]
	recentMask uint // recentSlots-1; tests set 0 (every record in one slot)
	noRecent   bool
	// tools folds MCP tool (and resource, prompt) names; MCP methods
	// outside the specification's set are "other".
	tools *folder
	// infos admits the label sets of sluice_workload_info.
	infos *folder
	// infosSet holds the infoLabels already set: a record of a known
	// workload builds no admission key.
	infosSet sync.Map // infoLabels → struct{}
	info     *prometheus.GaugeVec

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	upstreamDur     *prometheus.HistogramVec
	bytes           *prometheus.CounterVec
	l4Flows         *prometheus.CounterVec
	untrusted       *prometheus.CounterVec
	tls             *prometheus.CounterVec
	openConns       prometheus.Gauge
	errors          *prometheus.CounterVec
	denials         *prometheus.CounterVec
	rateLimited     *prometheus.CounterVec
	cache           *prometheus.CounterVec
	connects        *prometheus.CounterVec
	mcpRequests     *prometheus.CounterVec
	mcpToolDur      *prometheus.HistogramVec
	mcpToolChanges  *prometheus.CounterVec
	dnsQueries      *prometheus.CounterVec
	dnsDuration     *prometheus.HistogramVec
	exfilFlags      *prometheus.CounterVec

	ringDrops atomic.Pointer[func() uint64]
	mapErrors atomic.Pointer[func() map[string]uint64]
	egress    atomic.Pointer[func() uint64]
	restores  atomic.Pointer[func() uint64]
	leafStats atomic.Pointer[func() LeafStats]
	upHealth  atomic.Pointer[func() []UpstreamHealth]
}

var _ audit.Sink = (*Metrics)(nil)

// New builds the metrics on a fresh private registry, which also carries
// the Go runtime and process collectors.
func New(o Options) *Metrics {
	if o.MaxHosts <= 0 {
		o.MaxHosts = 100
	}
	if o.MaxWorkloads <= 0 {
		o.MaxWorkloads = 100
	}
	if o.MaxRules <= 0 {
		o.MaxRules = 200
	}
	if o.Buckets == nil {
		o.Buckets = LatencyBuckets
	}
	m := &Metrics{
		reg:              prometheus.NewRegistry(),
		hosts:            newFolder(o.MaxHosts),
		workloads:        newFolder(o.MaxWorkloads),
		rules:            newFolder(o.MaxRules),
		reasons:          newFolder(o.MaxRules),
		connectDecisions: newFolder(o.MaxRules),
		tools:            newFolder(o.MaxRules),
		infos:            newFolder(5 * o.MaxWorkloads),
		recentMask:       recentSlots - 1,
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "requests_total",
		Help: "HTTP requests seen by the proxy, by workload, host, method, status code, decision and who produced the status (upstream or sluice).",
	}, []string{"workload", "host", "method", "code", "decision", "source"})
	m.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "request_duration_seconds",
		Help:    "Time from the start of a request to its last byte, as the client saw it.",
		Buckets: o.Buckets,
	}, []string{"host", "decision"})
	m.upstreamDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "upstream_duration_seconds",
		Help:    "Time from dialling the upstream (or sending the request) to its response headers.",
		Buckets: o.Buckets,
	}, []string{"host"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "transferred_bytes_total",
		Help: "Payload bytes relayed, direction \"in\" from the client toward the upstream and \"out\" toward the client; kind is http or l4.",
	}, []string{"workload", "host", "kind", "direction"})
	m.l4Flows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "l4_flows_total",
		Help: "TCP flows relayed without HTTP parsing (TLS passthrough, other TCP), or ended before HTTP began.",
	}, []string{"workload", "host", "tls", "decision"})
	m.tls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "tls_connections_total",
		Help: "TLS client connections by mode: decrypted, passthrough, or failed (the handshake with the client or the upstream failed).",
	}, []string{"mode"})
	m.openConns = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "open_connections",
		Help: "Client connections the proxy holds open now.",
	})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "errors_total",
		Help: "Requests (kind http) and flows (kind l4) Sluice could not complete, by reason: upstream unreachable, certificate verification failed, client handshake failed, timeouts.",
	}, []string{"kind", "reason"})
	m.denials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "policy", Name: "denials_total",
		Help: "Requests and flows a rule denied (decision deny) or would have denied in audit mode (decision would_deny), by rule and reason.",
	}, []string{"rule", "reason", "decision"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "policy", Name: "rate_limited_total",
		Help: "Requests answered 429 by Sluice's rate limiter, by workload, host and rule.",
	}, []string{"workload", "host", "rule"})
	m.cache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "cache_requests_total",
		Help: "Requests a rule's response cache saw, by what it did (the X-Cache-Status the client got): hit, miss, bypass, expired or revalidated.",
	}, []string{"status"})
	m.connects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "agent", Name: "connect_events_total",
		Help: "Connects of selected workloads, by the hook's decision: kernel events, and redirected connects counted when the proxy accepts them.",
	}, []string{"decision"})

	m.mcpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "mcp", Name: "requests_total",
		Help: "MCP requests (JSON-RPC over Streamable HTTP) by workload, server host, JSON-RPC method, tool (or resource, prompt; \"none\") and decision.",
	}, []string{"workload", "server", "method", "tool", "decision"})
	m.mcpToolDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "sluice", Subsystem: "mcp", Name: "tool_duration_seconds",
		Help:    "Time from the start of a tools/call to its last byte, by server host and tool.",
		Buckets: o.Buckets,
	}, []string{"server", "tool"})
	m.mcpToolChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "mcp", Name: "tool_changes_total",
		Help: "MCP tools whose description or input schema in tools/list changed after the workload first saw them (rug pulls), by workload, server host and tool.",
	}, []string{"workload", "server", "tool"})
	m.dnsQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "dns", Name: "queries_total",
		Help: "Queries to the agent's DNS server, by workload, answer code (NOERROR, NXDOMAIN, REFUSED, SERVFAIL, other) and decision (allow, deny, would_deny, error).",
	}, []string{"workload", "rcode", "decision"})
	m.dnsDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "sluice", Subsystem: "dns", Name: "query_duration_seconds",
		Help:    "Time from a query to the agent's DNS server to its answer (forwarding to the upstream resolvers included), by answer code.",
		Buckets: o.Buckets,
	}, []string{"rcode"})

	m.untrusted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "proxy", Name: "untrusted_clients_total",
		Help: "Client connections that rejected the certificate Sluice minted (a TLS alert unknown_ca, bad_certificate or certificate_unknown, or a close right after the handshake): the client lacks the Sluice CA or pins the host's certificate. By workload and host.",
	}, []string{"workload", "host"})

	m.exfilFlags = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "dns", Name: "exfil_flags_total",
		Help: "Queries the DNS server's exfiltration guard flagged, by workload, reason (rate, label_length, entropy, subdomains) and decision (deny in enforce mode, would_deny in audit mode).",
	}, []string{"workload", "reason", "decision"})

	m.info = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "sluice", Subsystem: "workload", Name: "info",
		Help: "1 for each workload the container runtime named: its namespace, pod, container name and image (join on workload).",
	}, []string{"workload", "namespace", "pod", "container", "image"})

	m.reg.MustRegister(
		m.info,
		m.mcpRequests, m.mcpToolDur, m.mcpToolChanges,
		m.requests, m.requestDuration, m.upstreamDur, m.bytes, m.l4Flows, m.tls,
		m.openConns, m.errors, m.denials, m.rateLimited, m.cache, m.connects, m.dnsQueries, m.dnsDuration, m.exfilFlags, m.untrusted,
		&funcCollector{m: m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry is what admin/ serves at /metrics. Callers may register more
// collectors on it.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Record implements audit.Sink. HTTP records update the request, latency,
// byte, denial and rate-limit metrics; L4 records the flow, byte, TLS and
// denial metrics; connect records (KindConnect) count as ConnectEvent(
// r.Decision). Feed kernel connect events either as records or through
// ConnectEvent, not both.
//
// TLS modes are keyed on the records mitm/ writes: an L4 record with TLS
// "passthrough" is one passthrough connection (mitm's serveOther writes
// one per pass-through flow); an L4 record with TLS "decrypted" and Error
// set is one failed handshake (mitm writes it with reason "client TLS
// handshake failed" when the client refuses the minted leaf; a failed
// upstream handshake instead completes the client's and answers each
// request 502, counted in sluice_proxy_errors_total by reason). Decrypted
// connections have no record of their own (HTTP records are per request),
// so the proxy calls TLSConnection(audit.TLSDecrypted) once per connection
// after the client handshake succeeds.
func (m *Metrics) Record(r *audit.Record) {
	if r.Kind == audit.KindConnect {
		m.workloadInfo(&r.Workload, "")
		m.ConnectEvent(r.Decision)
		return
	}
	if r.Kind == audit.KindHTTP {
		m.recordHTTP(r)
		return
	}
	wl := m.workloads.fold(r.Workload.Name())
	m.workloadInfo(&r.Workload, wl)
	switch r.Kind {
	case audit.KindL4:
		m.recordL4(r, wl)
	case audit.KindMCPToolChanged:
		m.mcpToolChanges.WithLabelValues(wl, m.host(r.Host), m.tool(r.MCPTool)).Inc()
	case audit.KindDNS:
		m.recordDNS(r, wl)
	}
}

// workloadInfo sets sluice_workload_info for a workload the container
// runtime named, when its workload label is admitted (not "other") and
// the info series are within their bound; a series already set is not
// touched again. wl is the record's workload label, "" when the caller
// has not folded it.
func (m *Metrics) workloadInfo(id *workload.Identity, wl string) {
	if id.Container == "" && id.Image == "" && id.Namespace == "" {
		return
	}
	if wl == "" {
		wl = m.workloads.fold(id.Name())
	}
	if wl == Other {
		return
	}
	k := infoLabels{wl, id.Namespace, id.Pod, id.Container, id.Image}
	if _, ok := m.infosSet.Load(k); ok {
		return
	}
	// Set once, when the series is admitted: it stays 1.
	if _, isNew := m.infos.admit(wl + "\x00" + id.Namespace + "\x00" + id.Pod + "\x00" + id.Container + "\x00" + id.Image); isNew {
		m.info.WithLabelValues(wl, id.Namespace, id.Pod, id.Container, id.Image).Set(1)
		m.infosSet.Store(k, struct{}{})
	}
}

// infoLabels are the labels of one sluice_workload_info series.
type infoLabels struct{ wl, namespace, pod, container, image string }

// httpLabels are the label values of an HTTP record's series, folded:
// status is the code, or 0 for "none" and -1 for Other (codeLabel).
type httpLabels struct {
	wl, host, method, decision, source string
	status                             int
}

// httpSeries are the series one httpLabels counts in. The upstream
// duration and byte series appear in the scrape only once a record has
// something to count in them, so they are made on first use.
type httpSeries struct {
	requests          prometheus.Counter
	duration          prometheus.Observer
	upstream          atomic.Pointer[prometheus.Observer]
	bytesIn, bytesOut atomic.Pointer[prometheus.Counter]
}

// series returns the series of k, made on its first use.
func (m *Metrics) series(k httpLabels) *httpSeries {
	if s, ok := m.httpSeries.Load(k); ok {
		return s.(*httpSeries)
	}
	s := &httpSeries{

		requests: m.requests.WithLabelValues(k.wl, k.host, k.method, codeLabel(k.status), k.decision, k.source),
		duration: m.requestDuration.WithLabelValues(k.host, k.decision),
	}
	got, _ := m.httpSeries.LoadOrStore(k, s)
	return got.(*httpSeries)
}

// once returns *p, storing make() there first when p is empty. Two
// callers may both make it: the vec returns the same series to both.
func once[T any](p *atomic.Pointer[T], make func() T) T {
	if v := p.Load(); v != nil {
		return *v
	}
	v := make()
	p.Store(&v)
	return v
}

// recentSlots is the number of label sets recent keeps (a power of two).
const recentSlots = 64

// recentHTTP is what an HTTP record's raw label values (the workload
// fields its workload and info labels come from, and host, method,
// decision, source, status) came to: the folded labels, and their
// series. Folding is stable (a folder admits a value for good, and once
// full stays full) and the info series, once handled, is never handled
// differently, so the same raw values always come to the same entry.
// Never modified once stored.
type recentHTTP struct {
	cgroup, containerID, container, namespace, pod, image string
	host, method, decision, source                        string
	status                                                int

	k httpLabels
	s *httpSeries
}

// matches reports whether r has the raw label values of e.
func (e *recentHTTP) matches(r *audit.Record) bool {
	w := &r.Workload
	return e.status == r.Status && e.host == r.Host && e.method == r.Method && e.decision == r.Decision &&
		e.source == r.Source && e.pod == w.Pod && e.namespace == w.Namespace && e.cgroup == w.Cgroup &&
		e.containerID == w.ContainerID && e.container == w.Container && e.image == w.Image
}

// recentSlot picks r's slot in recent (masked with recentMask) from
// cheap facts of its raw label values.
func recentSlot(r *audit.Record) uint {
	h := uint(r.Workload.Spread()) ^ uint(r.Status)*0x9e3779b1 ^ uint(len(r.Host))<<4 ^
		uint(len(r.Decision))<<17 ^ uint(len(r.Method))<<21
	if n := len(r.Host); n > 0 {
		h ^= uint(r.Host[0])<<3 ^ uint(r.Host[n-1])<<11
	}
	return h ^ h>>16 ^ h>>27
}

// httpEntry returns the folded labels and series of r, from recent
// when a record of the same raw values was counted there before.
func (m *Metrics) httpEntry(r *audit.Record) *recentHTTP {
	slot := &m.recent[recentSlot(r)&m.recentMask]
	if e := slot.Load(); e != nil && e.matches(r) && !m.noRecent {
		return e
	}
	wl := m.workloads.fold(r.Workload.Name())
	m.workloadInfo(&r.Workload, wl)
	k := httpLabels{
		wl:       wl,
		host:     m.host(r.Host),
		method:   oneOf(r.Method, "OTHER", methods...),
		decision: decisionLabel(r.Decision),
		source:   oneOf(r.Source, "unknown", "upstream", "sluice"),
		status:   r.Status,
	}
	if k.status < 0 || k.status > 0 && (k.status < 100 || k.status > 599) {
		k.status = -1
	}
	w := &r.Workload
	e := &recentHTTP{
		cgroup: w.Cgroup, containerID: w.ContainerID, container: w.Container, namespace: w.Namespace, pod: w.Pod, image: w.Image,
		host: r.Host, method: r.Method, decision: r.Decision, source: r.Source, status: r.Status,
		k: k, s: m.series(k),
	}
	slot.Store(e)
	return e
}

func (m *Metrics) recordHTTP(r *audit.Record) {
	e := m.httpEntry(r)
	s, wl, host, decision := e.s, e.k.wl, e.k.host, e.k.decision
	s.requests.Inc()
	s.duration.Observe(r.Duration.Seconds())
	if r.UpstreamDuration > 0 {
		once(&s.upstream, func() prometheus.Observer { return m.upstreamDur.WithLabelValues(host) }).Observe(r.UpstreamDuration.Seconds())
	}
	if r.BytesIn > 0 {
		once(&s.bytesIn, func() prometheus.Counter { return m.bytes.WithLabelValues(wl, host, "http", "in") }).Add(float64(r.BytesIn))
	}
	if r.BytesOut > 0 {
		once(&s.bytesOut, func() prometheus.Counter { return m.bytes.WithLabelValues(wl, host, "http", "out") }).Add(float64(r.BytesOut))
	}
	m.countDenial(r)
	m.countError(r)
	if r.Cache != "" {
		m.cache.WithLabelValues(oneOf(r.Cache, "other", "hit", "miss", "bypass", "expired", "revalidated")).Inc()
	}
	if r.Status == 429 && r.Source == "sluice" {
		m.rateLimited.WithLabelValues(wl, host, m.rule(r.Rule)).Inc()
	}
	if r.MCPMethod != "" {
		name := r.MCPTool
		if name == "" {
			name = r.MCPResource
		}
		if name == "" {
			name = r.MCPPrompt
		}
		tool := m.tool(name)
		m.mcpRequests.WithLabelValues(wl, host, oneOf(r.MCPMethod, Other, mcpMethods...), tool, decision).Inc()
		if r.MCPMethod == "tools/call" {
			m.mcpToolDur.WithLabelValues(host, tool).Observe(r.Duration.Seconds())
		}
	}
}

func (m *Metrics) tool(t string) string {
	if t == "" {
		return "none"
	}
	return m.tools.fold(t)
}

// mcpMethods are the JSON-RPC methods of the MCP specification kept as
// label values; any other a client sends becomes "other".
var mcpMethods = []string{
	"initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
	"resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
	"completion/complete", "logging/setLevel", "sampling/createMessage", "elicitation/create", "roots/list",
	"notifications/initialized", "notifications/cancelled", "notifications/progress", "notifications/message",
	"notifications/roots/list_changed", "notifications/tools/list_changed", "notifications/resources/list_changed",
	"notifications/resources/updated", "notifications/prompts/list_changed",
}

// recordDNS counts a DNS server record; a denied name also counts as a
// denial by its rule, and a query the exfiltration guard flagged as an
// exfiltration flag by its reason.
func (m *Metrics) recordDNS(r *audit.Record, wl string) {
	rcode := oneOf(r.Rcode, Other, "NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR")
	decision := decisionLabel(r.Decision)
	m.dnsQueries.WithLabelValues(wl, rcode, decision).Inc()
	m.dnsDuration.WithLabelValues(rcode).Observe(r.Duration.Seconds())
	m.countDenial(r)
	if reason, ok := exfilReasons[r.Reason]; ok {
		m.exfilFlags.WithLabelValues(wl, reason, decision).Inc()
	}
}

// exfilReasons are the exfiltration guard's reasons (audit.ExfilSuspect)
// as short label values.
var exfilReasons = map[string]string{
	audit.ReasonDNSExfilRate:        "rate",
	audit.ReasonDNSExfilLabelLength: "label_length",
	audit.ReasonDNSExfilEntropy:     "entropy",
	audit.ReasonDNSExfilSubdomains:  "subdomains",
}

func (m *Metrics) recordL4(r *audit.Record, wl string) {
	host := m.host(r.Host)
	tlsMode := oneOf(r.TLS, "none", audit.TLSDecrypted, audit.TLSPassthrough, audit.TLSNone)
	m.l4Flows.WithLabelValues(wl, host, tlsMode, decisionLabel(r.Decision)).Inc()
	m.addBytes(wl, host, "l4", r)
	m.countDenial(r)
	m.countError(r)
	if r.Decision == audit.DecisionClientUntrusted {
		m.untrusted.WithLabelValues(wl, host).Inc()
	}
	switch {
	case r.TLS == audit.TLSPassthrough:
		m.tls.WithLabelValues(audit.TLSPassthrough).Inc()
	case r.TLS == audit.TLSDecrypted && r.Error != "":
		m.tls.WithLabelValues("failed").Inc()
	}
}

func (m *Metrics) addBytes(wl, host, kind string, r *audit.Record) {
	if r.BytesIn > 0 {
		m.bytes.WithLabelValues(wl, host, kind, "in").Add(float64(r.BytesIn))
	}
	if r.BytesOut > 0 {
		m.bytes.WithLabelValues(wl, host, kind, "out").Add(float64(r.BytesOut))
	}
}

func (m *Metrics) countDenial(r *audit.Record) {
	if r.Decision != audit.DecisionDeny && r.Decision != audit.DecisionWouldDeny {
		return
	}
	reason := r.Reason
	if reason == "" {
		reason = "none"
	}
	m.denials.WithLabelValues(m.rule(r.Rule), m.reasons.fold(reason), r.Decision).Inc()
}

func (m *Metrics) countError(r *audit.Record) {
	if r.Decision != audit.DecisionError {
		return
	}
	reason := r.Reason
	if reason == "" {
		reason = "none"
	}
	m.errors.WithLabelValues(r.Kind, m.reasons.fold(reason)).Inc()
}

func (m *Metrics) host(h string) string {
	if h == "" {
		return "unknown"
	}
	return m.hosts.fold(h)
}

func (m *Metrics) rule(r string) string {
	if r == "" {
		return "none"
	}
	return m.rules.fold(r)
}

func decisionLabel(d string) string {
	return oneOf(d, "unknown", audit.DecisionAllow, audit.DecisionDeny, audit.DecisionWouldDeny, audit.DecisionError, audit.DecisionClientUntrusted)
}

func codeLabel(status int) string {
	switch {
	case status == 0:
		return "none"
	case status < 100 || status > 599:
		return Other
	default:
		return strconv.Itoa(status)
	}
}

// TLSConnection counts one client TLS connection in mode "decrypted",
// "passthrough" or "failed". Record already counts passthrough and failed
// from L4 records; the proxy calls this for decrypted connections (once
// per connection, after both handshakes succeed).
func (m *Metrics) TLSConnection(mode string) {
	m.tls.WithLabelValues(oneOf(mode, Other, audit.TLSDecrypted, audit.TLSPassthrough, "failed")).Inc()
}

// ConnOpened and ConnClosed move the open-connections gauge; the proxy
// calls them in pairs around each accepted client connection.
func (m *Metrics) ConnOpened() { m.openConns.Inc() }

// ConnClosed: see ConnOpened.
func (m *Metrics) ConnClosed() { m.openConns.Dec() }

// ConnectEvent counts one kernel connect event with the hook's decision
// (e.g. "redirected", "denied", "direct"); decisions beyond the rule limit
// fold into "other".
func (m *Metrics) ConnectEvent(decision string) {
	if decision == "" {
		decision = "unknown"
	}
	if c, ok := m.connectCounters.Load(decision); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	folded := m.connectDecisions.fold(decision)
	c := m.connects.WithLabelValues(folded)
	if folded == decision {
		m.connectCounters.Store(decision, c)
	}
	c.Inc()
}

// SetRingDrops installs the source of the agent's ring-buffer drop count,
// a monotonic total read at every scrape. f must be safe for concurrent
// use and fast. nil removes it.
func (m *Metrics) SetRingDrops(f func() uint64) {
	setSource(&m.ringDrops, f)
}

// SetEgressDrops installs the source of the count of packets the kernel
// dropped on their way out of selected cgroups because their destination
// is denied (raw sockets, unconnected UDP: agent.Agent.EgressDrops), a
// monotonic total read at every scrape. nil removes it.
func (m *Metrics) SetEgressDrops(f func() uint64) {
	setSource(&m.egress, f)
}

// SetInterceptRestorations installs the source of the count of times the
// agent put back its intercept address or guards after something removed
// them (agent.Agent.Restorations), read at every scrape. nil removes it.
func (m *Metrics) SetInterceptRestorations(f func() uint64) {
	setSource(&m.restores, f)
}

// SetMapErrors installs the source of the kernel programs' failed map
// updates, monotonic totals by map name (agent.Agent.MapErrors), read at
// every scrape. The names are fixed by the agent, so they are not folded.
// f must be safe for concurrent use and fast. nil removes it.
func (m *Metrics) SetMapErrors(f func() map[string]uint64) {
	setSource(&m.mapErrors, f)
}

// SetLeafStats installs the source of the CA leaf-cache statistics, read
// at every scrape. f must be safe for concurrent use and fast. nil removes
// it.
func (m *Metrics) SetLeafStats(f func() LeafStats) {
	setSource(&m.leafStats, f)
}

// UpstreamHealth is one target of an upstream group; the mitm package
// has its own type, and the caller adapts it in a closure.
type UpstreamHealth struct {
	Group, Target string
	Healthy       bool
}

// SetUpstreamHealth installs the source of sluice_upstream_healthy, read
// at every scrape. f must be safe for concurrent use and fast. nil
// removes it.
func (m *Metrics) SetUpstreamHealth(f func() []UpstreamHealth) {
	setSource(&m.upHealth, f)
}

// setSource installs f as a read-at-scrape source in p; nil removes it.
func setSource[T any](p *atomic.Pointer[func() T], f func() T) {
	if f == nil {
		p.Store(nil)
		return
	}
	p.Store(&f)
}

// funcCollector exposes the read-at-scrape sources; a source not yet set
// yields no sample.
type funcCollector struct {
	m *Metrics
}

var (
	descRingDrops = prometheus.NewDesc("sluice_agent_events_dropped_total",
		"Kernel events lost because the ring buffer was full.", nil, nil)
	descEgressDrops = prometheus.NewDesc("sluice_agent_egress_denied_packets_total",
		"Packets from selected cgroups dropped in the kernel because their destination is denied.", nil, nil)
	descRestores = prometheus.NewDesc("sluice_agent_intercept_restorations_total",
		"Times the agent restored its intercept address or its guards after they were removed.", nil, nil)
	descMapErrors = prometheus.NewDesc("sluice_bpf_map_update_errors_total",
		"Map updates that failed in the kernel programs, by map.", []string{"map"}, nil)
	descLeafSize = prometheus.NewDesc("sluice_ca_leaf_cache_size",
		"Leaf certificates held in the CA's cache.", nil, nil)
	descLeafHits = prometheus.NewDesc("sluice_ca_leaf_cache_hits_total",
		"Leaf certificate lookups served from the cache.", nil, nil)
	descLeafMisses = prometheus.NewDesc("sluice_ca_leaf_cache_misses_total",
		"Leaf certificate lookups that missed the cache.", nil, nil)
	descLeafIssued = prometheus.NewDesc("sluice_ca_leaf_issued_total",
		"Leaf certificates minted.", nil, nil)
	descUpstreamHealthy = prometheus.NewDesc("sluice_upstream_healthy",
		"Whether a target of an upstream group takes requests: 1 healthy, 0 unhealthy by its health check or ejected.", []string{"group", "target"}, nil)
)

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRingDrops, descEgressDrops, descRestores, descMapErrors, descLeafSize, descLeafHits, descLeafMisses, descLeafIssued, descUpstreamHealthy} {
		ch <- d
	}
}

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	if f := c.m.ringDrops.Load(); f != nil {
		ch <- prometheus.MustNewConstMetric(descRingDrops, prometheus.CounterValue, float64((*f)()))
	}
	if f := c.m.egress.Load(); f != nil {
		ch <- prometheus.MustNewConstMetric(descEgressDrops, prometheus.CounterValue, float64((*f)()))
	}
	if f := c.m.restores.Load(); f != nil {
		ch <- prometheus.MustNewConstMetric(descRestores, prometheus.CounterValue, float64((*f)()))
	}
	if f := c.m.mapErrors.Load(); f != nil {
		for name, n := range (*f)() {
			ch <- prometheus.MustNewConstMetric(descMapErrors, prometheus.CounterValue, float64(n), name)
		}
	}
	if f := c.m.leafStats.Load(); f != nil {
		s := (*f)()
		ch <- prometheus.MustNewConstMetric(descLeafSize, prometheus.GaugeValue, float64(s.Size))
		ch <- prometheus.MustNewConstMetric(descLeafHits, prometheus.CounterValue, float64(s.Hits))
		ch <- prometheus.MustNewConstMetric(descLeafMisses, prometheus.CounterValue, float64(s.Misses))
		ch <- prometheus.MustNewConstMetric(descLeafIssued, prometheus.CounterValue, float64(s.Issued))
	}
	if f := c.m.upHealth.Load(); f != nil {
		for _, h := range (*f)() {
			v := 0.0
			if h.Healthy {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descUpstreamHealthy, prometheus.GaugeValue, v, h.Group, h.Target)
		}
	}
}
