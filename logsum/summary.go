package logsum

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/sluicehq/sluice/audit"
)

// unknown is the label of a workload or host a record does not name
// (workload.Identity's name for an unknown workload).
const unknown = "unknown"

// MaxLine is the longest line read; a longer one is counted as
// unparseable and skipped.
const MaxLine = 1 << 20

// maxSamples bounds the unparseable lines quoted in a Summary.
const maxSamples = 5

// Summarizer counts audit records. Feed it with Read or Add, then call
// Summary. Not safe for concurrent use.
type Summarizer struct {
	inputs      []string
	lines       int64
	records     int64
	skipped     int64
	unparseable int64
	samples     []LineError
	readErrors  []string
	first, last time.Time

	kinds     map[string]int64
	decisions map[string]int64
	requests  int64
	bytesIn   int64
	bytesOut  int64

	rateLimited  counter
	denials      counter
	wouldDeny    counter
	authFailures counter
	serverErrors counter
	deniedNames  counter
	exfil        counter
	untrusted    counter
	workloads    map[string]*Talker
	hosts        map[string]*Talker
	mcpTools     map[MCPTool]*MCPTool // by workload, host and tool (counts zero)
}

// New returns an empty Summarizer.
func New() *Summarizer {
	return &Summarizer{
		kinds:        map[string]int64{},
		decisions:    map[string]int64{},
		rateLimited:  counter{},
		denials:      counter{},
		wouldDeny:    counter{},
		authFailures: counter{},
		serverErrors: counter{},
		deniedNames:  counter{},
		exfil:        counter{},
		untrusted:    counter{},
		workloads:    map[string]*Talker{},
		hosts:        map[string]*Talker{},
		mcpTools:     map[MCPTool]*MCPTool{},
	}
}

// counter counts rows by their key fields (Count is zero in the key).
type counter map[Row]int64

func (c counter) add(r Row) { c[r]++ }

// Read counts every line of r, named name in reports ("-" for stdin).
// A gzip stream is detected by its magic bytes and decompressed.
// Unparseable lines are counted, not returned; the error is for reading
// only (it is also recorded in the Summary), and what was read before it
// is counted.
func (s *Summarizer) Read(name string, r io.Reader) error {
	s.inputs = append(s.inputs, name)
	err := s.read(name, r)
	if err != nil {
		s.readErrors = append(s.readErrors, err.Error())
	}
	return err
}

func (s *Summarizer) read(name string, r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("read %s: gzip: %w", name, err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	var (
		lineNo int
		buf    []byte
		tooBig bool
	)
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > MaxLine {
			tooBig = true
			buf = buf[:0]
		} else if !tooBig {
			buf = append(buf, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue // the rest of a long line follows
		}
		if len(chunk) > 0 || len(buf) > 0 || tooBig {
			lineNo++
			if tooBig {
				s.lines++
				s.badLine(name, lineNo, fmt.Errorf("line longer than %d bytes", MaxLine))
			} else {
				s.addLine(name, lineNo, buf)
			}
		}
		buf, tooBig = buf[:0], false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
	}
}

// AddLine counts one line, named name:lineNo in reports.
func (s *Summarizer) AddLine(name string, lineNo int, line []byte) {
	s.addLine(name, lineNo, line)
}

func (s *Summarizer) addLine(name string, lineNo int, line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	s.lines++
	e, err := ParseLine(line)
	switch {
	case errors.Is(err, ErrNotAudit):
		s.skipped++
	case err != nil:
		s.badLine(name, lineNo, err)
	default:
		s.Add(e)
	}
}

func (s *Summarizer) badLine(name string, lineNo int, err error) {
	s.unparseable++
	if len(s.samples) < maxSamples {
		s.samples = append(s.samples, LineError{File: name, Line: lineNo, Error: err.Error()})
	}
}

// Add counts one record.
func (s *Summarizer) Add(e Entry) {
	s.records++
	if !e.Time.IsZero() {
		if s.first.IsZero() || e.Time.Before(s.first) {
			s.first = e.Time
		}
		if e.Time.After(s.last) {
			s.last = e.Time
		}
	}
	kind := e.Kind
	if kind == "" {
		kind = audit.KindHTTP
	}
	s.kinds[kind]++
	if e.Decision != "" {
		s.decisions[e.Decision]++
	}
	wl, host := WorkloadOf(e), HostOf(e)

	switch e.Decision {
	case audit.DecisionDeny:
		s.denials.add(Row{Rule: e.Rule, Reason: e.Reason})
	case audit.DecisionWouldDeny:
		s.wouldDeny.add(Row{Rule: e.Rule, Reason: e.Reason})
	case audit.DecisionClientUntrusted:
		s.untrusted.add(Row{Workload: wl, Host: host})
	}
	if kind == audit.KindDNS && e.DNSName != "" {
		name := strings.ToLower(e.DNSName)
		switch {
		case audit.ExfilSuspect(e.Reason):
			// Tunnelled names are each new: count their domain.
			s.exfil.add(Row{Workload: wl, Host: parentDomain(name), Reason: e.Reason})
		case e.Decision == audit.DecisionDeny:
			s.deniedNames.add(Row{Workload: wl, Host: name, Rule: e.Rule})
		}
	}
	switch {
	case e.Status == 429 && e.Source == audit.SourceSluice:
		s.rateLimited.add(Row{Workload: wl, Host: host})
	case (e.Status == 401 || e.Status == 403) && e.Source == audit.SourceUpstream:
		s.authFailures.add(Row{Workload: wl, Host: host, Status: e.Status})
	case e.Status >= 500 && e.Status <= 599 && e.Source == audit.SourceUpstream:
		s.serverErrors.add(Row{Workload: wl, Host: host, Status: e.Status})
	}

	if e.MCPTool != "" && (e.MCPMethod == "tools/call" || kind == audit.KindMCPToolChanged) {
		s.mcpTool(wl, host, kind, e)
	}

	// A kernel connect event precedes the http or l4 records of the same
	// traffic: counting it as a request would count that traffic twice.
	if kind == audit.KindConnect {
		return
	}
	s.requests++
	s.bytesIn += e.BytesIn
	s.bytesOut += e.BytesOut
	w := talk(s.workloads, wl, e)
	fill(&w.Namespace, e.Namespace)
	fill(&w.Pod, e.Pod)
	fill(&w.Container, e.Container)
	fill(&w.Image, e.Image)
	talk(s.hosts, host, e)
}

// mcpTool counts a tools/call record, or a record of the tool's change.
func (s *Summarizer) mcpTool(wl, host, kind string, e Entry) {
	k := MCPTool{Workload: wl, Host: host, Tool: e.MCPTool}
	t := s.mcpTools[k]
	if t == nil {
		t = &k
		s.mcpTools[k] = t
	}
	if kind == audit.KindMCPToolChanged {
		t.Changes++
		return
	}
	t.Calls++
	switch e.Decision {
	case audit.DecisionDeny:
		t.Denied++
	case audit.DecisionWouldDeny:
		t.WouldDeny++
	}
	if e.MCPErrorCode != 0 {
		t.Errors++
	}
}

func fill(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

func talk(m map[string]*Talker, name string, e Entry) *Talker {
	t := m[name]
	if t == nil {
		t = &Talker{Name: name}
		m[name] = t
	}
	t.Requests++
	t.BytesIn += e.BytesIn
	t.BytesOut += e.BytesOut
	return t
}

// WorkloadOf is the workload label of a record: its "workload" key, or,
// when that says "unknown" (explicit-proxy mode, no cgroup), "comm:" and
// the process name, else "unknown".
func WorkloadOf(e Entry) string {
	if e.Workload != "" && e.Workload != unknown {
		return e.Workload
	}
	if e.Comm != "" {
		return "comm:" + e.Comm
	}
	return unknown
}

// HostOf is the destination label of a record: the host the client asked
// for, else the name the workload resolved to the address (dns_name),
// else the IP that was dialed, else "unknown".
func HostOf(e Entry) string {
	switch {
	case e.Host != "":
		return strings.ToLower(e.Host)
	case e.DNSName != "":
		return strings.ToLower(e.DNSName)
	case e.IP != "":
		return e.IP
	default:
		return unknown
	}
}

// Summary is the result, as `sluice logs summarize --json` prints it.
type Summary struct {
	Inputs []string `json:"inputs"`
	// Lines is the number of non-empty lines read; each is a record, a
	// skipped line or an unparseable one.
	Lines       int64 `json:"lines"`
	Records     int64 `json:"records"`
	Skipped     int64 `json:"skipped"` // JSON lines that are not audit records
	Unparseable int64 `json:"unparseable"`
	// UnparseableSamples quotes the first few unparseable lines' errors.
	UnparseableSamples []LineError `json:"unparseable_samples,omitempty"`
	ReadErrors         []string    `json:"read_errors,omitempty"`
	First              time.Time   `json:"first,omitzero"`
	Last               time.Time   `json:"last,omitzero"`
	Totals             Totals      `json:"totals"`

	RateLimited  Section `json:"rate_limited"`  // status 429 from sluice, by workload and host
	Denials      Section `json:"denials"`       // decision deny, by rule and reason
	WouldDeny    Section `json:"would_deny"`    // decision would_deny (audit mode), by rule and reason
	AuthFailures Section `json:"auth_failures"` // 401/403 from upstream, by workload, host, status
	ServerErrors Section `json:"server_errors"` // 5xx from upstream, by workload, host, status
	// DeniedNames are the names the DNS server denied, by workload, name
	// and rule; ExfilSuspects the queries its exfiltration guard flagged
	// (denied or would_deny), by workload, domain and reason.
	DeniedNames   Section `json:"denied_names"`
	ExfilSuspects Section `json:"exfil_suspects"`
	// UntrustedClients are the clients that rejected Sluice's
	// certificate (client_untrusted), by workload and host: the ones to
	// give the CA, or to pass through (tls.onUntrustedClient).
	UntrustedClients Section `json:"untrusted_clients"`

	TopWorkloads Talkers `json:"top_workloads"`
	TopHosts     Talkers `json:"top_hosts"`

	// MCPTools are the MCP tools called (tools/call) per workload and
	// server host, most called first, with the changes of their
	// descriptions recorded (mcp_tool_changed).
	MCPTools MCPTools `json:"mcp_tools"`
}

// MCPTools are the top MCP tools by calls.
type MCPTools struct {
	Distinct int       `json:"distinct"`
	Rows     []MCPTool `json:"rows"`
}

// MCPTool counts one tool of one server for one workload: tools/call
// records, those denied, would-denied (audit mode) and answered with a
// JSON-RPC error, and the changes of its description or schema.
type MCPTool struct {
	Workload  string `json:"workload"`
	Host      string `json:"host"`
	Tool      string `json:"tool"`
	Calls     int64  `json:"calls"`
	Denied    int64  `json:"denied"`
	WouldDeny int64  `json:"would_deny"`
	Errors    int64  `json:"errors"`
	Changes   int64  `json:"changes"`
}

// LineError is an unparseable line.
type LineError struct {
	File  string `json:"file"`
	Line  int    `json:"line"`
	Error string `json:"error"`
}

// Totals count every record.
type Totals struct {
	// Requests counts http and l4 records (exchanges and flows), not
	// kernel connect events.
	Requests  int64            `json:"requests"`
	BytesIn   int64            `json:"bytes_in"`
	BytesOut  int64            `json:"bytes_out"`
	Kinds     map[string]int64 `json:"kinds"`
	Decisions map[string]int64 `json:"decisions"`
}

// Section is one kind of event, by key.
type Section struct {
	Total    int64 `json:"total"`    // events of this kind
	Distinct int   `json:"distinct"` // distinct keys, before the top-N cut
	Rows     []Row `json:"rows"`     // the top keys by count
}

// Row is a key and its count; only the fields of the section's key are set.
type Row struct {
	Workload string `json:"workload,omitempty"`
	Host     string `json:"host,omitempty"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Status   int    `json:"status,omitempty"`
	Count    int64  `json:"count"`
}

// Talkers are the top workloads or hosts by requests.
type Talkers struct {
	Distinct int      `json:"distinct"`
	Rows     []Talker `json:"rows"`
}

// Talker is the traffic of one workload or host. BytesIn is what clients
// sent, BytesOut what they received.
type Talker struct {
	Name string `json:"name"`
	// Namespace, Pod, Container and Image are what the records of a
	// workload said about it (the first record that named each); empty
	// for hosts.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	Image     string `json:"image,omitempty"`

	Requests int64 `json:"requests"`
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// Summary returns the counts, each list cut to the top n (n < 1: all).
// Ties are broken by name so the output is stable.
func (s *Summarizer) Summary(n int) Summary {
	inputs := s.inputs
	if inputs == nil {
		inputs = []string{}
	}
	return Summary{
		Inputs:             inputs,
		Lines:              s.lines,
		Records:            s.records,
		Skipped:            s.skipped,
		Unparseable:        s.unparseable,
		UnparseableSamples: s.samples,
		ReadErrors:         s.readErrors,
		First:              s.first,
		Last:               s.last,
		Totals: Totals{
			Requests:  s.requests,
			BytesIn:   s.bytesIn,
			BytesOut:  s.bytesOut,
			Kinds:     copyMap(s.kinds),
			Decisions: copyMap(s.decisions),
		},
		RateLimited:      s.rateLimited.section(n),
		Denials:          s.denials.section(n),
		WouldDeny:        s.wouldDeny.section(n),
		AuthFailures:     s.authFailures.section(n),
		ServerErrors:     s.serverErrors.section(n),
		DeniedNames:      s.deniedNames.section(n),
		ExfilSuspects:    s.exfil.section(n),
		UntrustedClients: s.untrusted.section(n),
		TopWorkloads:     topTalkers(s.workloads, n),
		TopHosts:         topTalkers(s.hosts, n),
		MCPTools:         topTools(s.mcpTools, n),
	}
}

func topTools(m map[MCPTool]*MCPTool, n int) MCPTools {
	t := MCPTools{Distinct: len(m), Rows: make([]MCPTool, 0, len(m))}
	for _, v := range m {
		t.Rows = append(t.Rows, *v)
	}
	sort.Slice(t.Rows, func(i, j int) bool {
		a, b := t.Rows[i], t.Rows[j]
		if a.Calls != b.Calls {
			return a.Calls > b.Calls
		}
		if a.Workload != b.Workload {
			return a.Workload < b.Workload
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.Tool < b.Tool
	})
	if n > 0 && len(t.Rows) > n {
		t.Rows = t.Rows[:n]
	}
	return t
}

func copyMap(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (c counter) section(n int) Section {
	sec := Section{Distinct: len(c), Rows: make([]Row, 0, len(c))}
	for r, cnt := range c {
		r.Count = cnt
		sec.Total += cnt
		sec.Rows = append(sec.Rows, r)
	}
	sort.Slice(sec.Rows, func(i, j int) bool {
		a, b := sec.Rows[i], sec.Rows[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.key() < b.key()
	})
	if n > 0 && len(sec.Rows) > n {
		sec.Rows = sec.Rows[:n]
	}
	return sec
}

func (r Row) key() string {
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%03d", r.Workload, r.Host, r.Rule, r.Reason, r.Status)
}

func topTalkers(m map[string]*Talker, n int) Talkers {
	t := Talkers{Distinct: len(m), Rows: make([]Talker, 0, len(m))}
	for _, v := range m {
		t.Rows = append(t.Rows, *v)
	}
	sort.Slice(t.Rows, func(i, j int) bool {
		a, b := t.Rows[i], t.Rows[j]
		if a.Requests != b.Requests {
			return a.Requests > b.Requests
		}
		if ab, bb := a.BytesIn+a.BytesOut, b.BytesIn+b.BytesOut; ab != bb {
			return ab > bb
		}
		return a.Name < b.Name
	})
	if n > 0 && len(t.Rows) > n {
		t.Rows = t.Rows[:n]
	}
	return t
}

// parentDomain is the registrable domain of name (public suffix list),
// name itself when there is none.
func parentDomain(name string) string {
	if p, err := publicsuffix.EffectiveTLDPlusOne(strings.TrimSuffix(name, ".")); err == nil {
		return p
	}
	return name
}
