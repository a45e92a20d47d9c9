// Package flows keeps a bounded, in-memory table of recent egress per
// process and container, so `sluice flows` can show a live picture of who
// talks to whom without reading the audit log. It is fed by audit records
// (Table is an audit.Sink) and by the kernel's connect events (Connect),
// and serves a JSON snapshot to the admin API.
//
// The table is bounded twice: at most MaxRows processes (the least
// recently seen is evicted) and at most MaxDests destinations per process
// (later ones fold into the destination "other"); rows not seen for MaxAge
// age out.
package flows

import (
	"container/list"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// Options bound the table. Zero values take the defaults.
type Options struct {
	// MaxRows is the number of processes kept (default 1024).
	MaxRows int
	// MaxDests is the number of destinations kept per process (default
	// 32); later destinations are counted under one more, "other".
	MaxDests int
	// MaxAge drops rows not seen for this long (default 1h; negative
	// keeps rows until evicted by MaxRows).
	MaxAge time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// OtherDest is the destination that destinations past MaxDests fold into.
const OtherDest = "other"

// Snapshot is the JSON document of /api/flows.
type Snapshot struct {
	Time time.Time `json:"time"`
	// Rows are ordered by LastSeen, most recent first.
	Rows []Row `json:"rows"`
	// Evicted counts rows dropped to keep the table within MaxRows.
	Evicted uint64 `json:"evicted"`
}

// Row is the egress of one process (or, in explicit-proxy mode where the
// pid is unknown, of one client address).
type Row struct {
	PID         int    `json:"pid,omitempty"`
	Comm        string `json:"comm,omitempty"`
	Exe         string `json:"exe,omitempty"`
	Workload    string `json:"workload"`
	Cgroup      string `json:"cgroup,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	Container   string `json:"container,omitempty"`
	Image       string `json:"image,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	Pod         string `json:"pod,omitempty"`
	Client      string `json:"client,omitempty"`
	Counts
	FirstSeen    time.Time `json:"first_seen"`
	LastSeen     time.Time `json:"last_seen"`
	Destinations []Dest    `json:"destinations"`
}

// Dest is one destination of a process.
type Dest struct {
	// Host is the name the workload asked for, when known.
	Host string `json:"host,omitempty"`
	// Addr is ip:port of the destination, when known.
	Addr string `json:"addr,omitempty"`
	Counts
	LastSeen time.Time `json:"last_seen"`
	// MCPTools are the MCP tools called at this destination (tools/call
	// records), in order of first call; past MaxTools, under OtherTool.
	MCPTools []MCPTool `json:"mcp_tools,omitempty"`
}

// MCPTool counts the calls of one MCP tool.
type MCPTool struct {
	Name string `json:"name"`
	// Calls are tools/call requests; Denied those Sluice denied,
	// WouldDeny those an audit-mode rule would have denied, Errors those
	// answered with a JSON-RPC error (by the server or Sluice).
	Calls     int64 `json:"calls"`
	Denied    int64 `json:"denied,omitempty"`
	WouldDeny int64 `json:"would_deny,omitempty"`
	Errors    int64 `json:"errors,omitempty"`
}

// MaxTools is the number of MCP tools kept per destination; later ones
// are counted under OtherTool.
const MaxTools = 32

// OtherTool is the tool that tools past MaxTools fold into.
const OtherTool = "(other)"

func (d *Dest) addTool(c obs) {
	name := c.tool
	if len(d.MCPTools) >= MaxTools && !slices.ContainsFunc(d.MCPTools, func(t MCPTool) bool { return t.Name == name }) {
		name = OtherTool // past MaxTools, a new tool counts as (other)
	}
	i := slices.IndexFunc(d.MCPTools, func(t MCPTool) bool { return t.Name == name })
	if i < 0 {
		i = len(d.MCPTools)
		d.MCPTools = append(d.MCPTools, MCPTool{Name: name})
	}
	t := &d.MCPTools[i]
	t.Calls++
	switch c.decision {
	case audit.DecisionDeny:
		t.Denied++
	case audit.DecisionWouldDeny:
		t.WouldDeny++
	}
	if c.toolErr {
		t.Errors++
	}
}

// Name is Host, else Addr.
func (d Dest) Name() string {
	if d.Host != "" {
		return d.Host
	}
	return d.Addr
}

// Counts are what happened, summed.
type Counts struct {
	// Requests are HTTP exchanges.
	Requests int64 `json:"requests"`
	// Flows are L4 flows (TLS passthrough, other TCP).
	Flows int64 `json:"flows"`
	// Connects are kernel connect events.
	Connects int64 `json:"connects"`
	// BytesIn were sent by the workload; BytesOut received by it.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// Decisions counts records and events by decision ("allow", "deny",
	// "would_deny", "error", and the agent's connect decisions).
	Decisions map[string]int64 `json:"decisions,omitempty"`
	// tally is the table's own count of decisions, made Decisions by a
	// Snapshot (clone): a run of one decision costs a look along a few
	// entries, not two map updates an event.
	tally []decisionCount
}

// decisionCount is one decision's count in a table's Counts.
type decisionCount struct {
	decision string
	n        int64
}

const maxDecisionKeys = 16

func (c *Counts) add(d obs) {
	c.Requests += d.requests
	c.Flows += d.flows
	c.Connects += d.connects
	c.BytesIn += d.bytesIn
	c.BytesOut += d.bytesOut
	if d.decision != "" {
		c.count(d.decision)
	}
}

// count adds one to decision's tally; past maxDecisionKeys decisions, a
// new one counts as "other".
func (c *Counts) count(decision string) {
	if i := c.find(decision); i >= 0 {
		c.tally[i].n++
		return
	}
	if len(c.tally) >= maxDecisionKeys {
		decision = "other"
		if i := c.find(decision); i >= 0 {
			c.tally[i].n++
			return
		}
	}
	c.tally = append(c.tally, decisionCount{decision: decision, n: 1})
}

// find is the index of decision in the tally, or -1.
func (c *Counts) find(decision string) int {
	for i := range c.tally {
		if c.tally[i].decision == decision {
			return i
		}
	}
	return -1
}

// clone is c as a Snapshot shows it: Decisions made from the tally,
// sharing nothing with the table.
func (c Counts) clone() Counts {
	if len(c.tally) != 0 {
		c.Decisions = make(map[string]int64, len(c.tally))
		for _, d := range c.tally {
			c.Decisions[d.decision] = d.n
		}
	}
	c.tally = nil
	return c
}

// obs is one observation.
type obs struct {
	requests, flows, connects int64
	bytesIn, bytesOut         int64
	decision                  string
	tool                      string // an MCP tools/call's tool
	toolErr                   bool   // answered with a JSON-RPC error
}

// Table is safe for concurrent use.
type Table struct {
	o Options

	mu      sync.Mutex
	rows    map[key]*list.Element // of *row
	lru     *list.List            // front is most recent
	evicted uint64
}

type key struct {
	pid    int
	cgroup string
	// who names the client when the pid is unknown.
	who string
}

type row struct {
	k     key
	r     Row // Destinations unused here
	dests map[string]*Dest
	order []string // insertion order of dests, for "other" folding
	// byAddr finds the destination a connect event (an address, no
	// host) counts under: for each Addr of dests, the first destination
	// that took it (a port alone is the AddrPort with no address). At
	// most one entry per destination.
	byAddr map[netip.AddrPort]*Dest
	// last is the destination of byAddr found last, for lastAddr: a run
	// of connect events to one address looks it up once. byAddr never
	// changes an entry, so it never goes stale.
	last     *Dest
	lastAddr destAddr
	// client is the address r.Client is the text of.
	client netip.Addr
}

// destAddr is a destination's address as the table is told it: ip:port,
// or a port alone (no valid address), or nothing (the zero value). Its
// text, Dest.Addr, is made only when a destination takes it.
type destAddr netip.AddrPort

// String is Dest.Addr of a: "ip:port", ":port", or "".
func (a destAddr) String() string {
	ap := netip.AddrPort(a)
	switch {
	case ap.Addr().IsValid():
		return ap.String()
	case ap.Port() != 0:
		return ":" + strconv.Itoa(int(ap.Port()))
	}
	return ""
}

var _ audit.Sink = (*Table)(nil)

// New returns an empty table.
func New(o Options) *Table {
	if o.MaxRows <= 0 {
		o.MaxRows = 1024
	}
	if o.MaxDests <= 0 {
		o.MaxDests = 32
	}
	if o.MaxAge == 0 {
		o.MaxAge = time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Table{o: o, rows: make(map[key]*list.Element), lru: list.New()}
}

// Record implements audit.Sink: HTTP records count requests, L4 records
// flows, connect records (KindConnect) connects. Feed kernel connect events
// either as records or through Connect, not both.
func (t *Table) Record(r *audit.Record) {
	var c obs
	switch r.Kind {
	case audit.KindHTTP:
		c.requests = 1
	case audit.KindL4:
		c.flows = 1
	case audit.KindConnect:
		c.connects = 1
	default:
		return
	}
	c.bytesIn, c.bytesOut, c.decision = r.BytesIn, r.BytesOut, r.Decision
	if r.MCPMethod == "tools/call" && r.MCPTool != "" {
		c.tool, c.toolErr = r.MCPTool, r.MCPErrorCode != 0
	}
	var addr destAddr
	if r.DstIP.IsValid() || (r.Port != 0 && r.Host == "") {
		addr = destAddr(netip.AddrPortFrom(r.DstIP, r.Port))
	}
	host := r.Host
	if host == "" {
		host = r.DNSName // the name the workload resolved to the address
	}
	t.observe(t.o.Now(), &r.Workload, host, addr, c)
}

// Connect records one kernel connect event of process pid (comm, cgroup
// path relative to the cgroup2 mount) to dst with the hook's decision.
func (t *Table) Connect(pid int, comm, cgroup string, dst netip.AddrPort, decision string) {
	t.ConnectAt(t.o.Now(), pid, comm, cgroup, dst, decision)
}

// ConnectAt is Connect for an event the caller has timed: seen at at
// (the agent reads the clock once per batch of events, and a clock read
// per event costs as much as the rest of Connect). A time older than
// what the process's row or the destination last saw leaves theirs.
func (t *Table) ConnectAt(at time.Time, pid int, comm, cgroup string, dst netip.AddrPort, decision string) {
	t.connect(at, &workload.Identity{PID: pid, Comm: comm, Cgroup: cgroup}, dst, decision)
}

// ConnectIdentity is Connect for a caller that has already resolved the
// workload (container id, pod).
func (t *Table) ConnectIdentity(id workload.Identity, dst netip.AddrPort, decision string) {
	t.connect(t.o.Now(), &id, dst, decision)
}

func (t *Table) connect(at time.Time, id *workload.Identity, dst netip.AddrPort, decision string) {
	var addr destAddr
	if dst.IsValid() {
		addr = destAddr(dst)
	}
	t.observe(at, id, "", addr, obs{connects: 1, decision: decision})
}

func keyOf(id *workload.Identity) key {
	if id.PID != 0 {
		return key{pid: id.PID, cgroup: id.Cgroup}
	}
	who := id.Name()
	if id.Client.IsValid() {
		who += "@" + id.Client.Addr().String()
	}
	return key{cgroup: id.Cgroup, who: who}
}

func (t *Table) observe(now time.Time, id *workload.Identity, host string, addr destAddr, c obs) {
	k := keyOf(id)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	var rw *row
	if front := t.lru.Front(); front != nil && front.Value.(*row).k == k {
		rw = front.Value.(*row) // the row seen last, as in a run of events
	} else if el, ok := t.rows[k]; ok {
		t.lru.MoveToFront(el)
		rw = el.Value.(*row)
	} else {
		for len(t.rows) >= t.o.MaxRows {
			back := t.lru.Back()
			t.lru.Remove(back)
			delete(t.rows, back.Value.(*row).k)
			t.evicted++
		}
		rw = &row{k: k, dests: make(map[string]*Dest), byAddr: make(map[netip.AddrPort]*Dest), r: Row{FirstSeen: now}}
		t.rows[k] = t.lru.PushFront(rw)
	}
	rw.merge(id)
	if now.After(rw.r.LastSeen) {
		rw.r.LastSeen = now
	}
	rw.r.Counts.add(c)
	d := rw.dest(host, addr, t.o.MaxDests)
	d.Counts.add(c)
	if now.After(d.LastSeen) {
		d.LastSeen = now
	}
	if c.tool != "" {
		d.addTool(c)
	}
}

// merge keeps the richest identity seen for the row. The row's
// Workload is named again only when what names it changed (a process
// that connects again and again costs no cgroup path parse).
func (rw *row) merge(id *workload.Identity) {
	r := &rw.r
	if id.PID != 0 {
		r.PID = id.PID
	}
	set(&r.Comm, id.Comm)
	set(&r.Exe, id.Exe)
	set(&r.Image, id.Image)
	named := set(&r.Cgroup, id.Cgroup)
	named = set(&r.ContainerID, id.ContainerID) || named
	named = set(&r.Container, id.Container) || named
	named = set(&r.Namespace, id.Namespace) || named
	named = set(&r.Pod, id.Pod) || named
	if id.Client.IsValid() && id.Client.Addr() != rw.client {
		rw.client = id.Client.Addr() // its text only when it changes
		r.Client = rw.client.String()
	}
	if named || r.Workload == "" {
		r.Workload = workload.Identity{Cgroup: r.Cgroup, ContainerID: r.ContainerID, Container: r.Container, Namespace: r.Namespace, Pod: r.Pod}.Name()
	}
}

// set stores v, when not empty, in *dst, and reports whether *dst changed.
func set(dst *string, v string) bool {
	if v == "" || *dst == v {
		return false
	}
	*dst = v
	return true
}

// dest finds or creates the destination for host/addr. A destination first
// seen only by address (a connect event) takes the host name of the first
// record that names it.
func (rw *row) dest(host string, a destAddr, max int) *Dest {
	if host == "" && a != (destAddr{}) {
		// A connect event for an address a destination already has
		// (named by a record, or by an earlier event).
		if rw.last != nil && rw.lastAddr == a {
			return rw.last
		}
		if d, ok := rw.byAddr[netip.AddrPort(a)]; ok {
			rw.last, rw.lastAddr = d, a
			return d
		}
	}
	if host != "" {
		// The destination a record names, as in a run of requests: no
		// text of the address made unless the destination takes it.
		if d, ok := rw.dests[host]; ok {
			if d.Addr == "" && a != (destAddr{}) {
				d.Addr = a.String()
				rw.index(a, d)
			}
			return d
		}
	}
	addr := a.String()
	if host != "" {
		if d, ok := rw.dests[addr]; ok && addr != "" && d.Host == "" {
			delete(rw.dests, addr)
			d.Host = host
			rw.dests[host] = d
			for i, k := range rw.order {
				if k == addr {
					rw.order[i] = host
				}
			}
			return d
		}
	}
	k := host
	if k == "" {
		k = addr
	}
	if k == "" {
		k = "unknown"
	}
	if d, ok := rw.dests[k]; ok {
		return d
	}
	if len(rw.dests) >= max {
		k, host, addr = OtherDest, OtherDest, ""
		if d, ok := rw.dests[k]; ok {
			return d
		}
	}
	d := &Dest{Host: host, Addr: addr}
	rw.dests[k] = d
	rw.order = append(rw.order, k)
	if addr != "" {
		rw.index(a, d)
	}
	return d
}

// index records that d has address a, unless a destination took it
// before.
func (rw *row) index(a destAddr, d *Dest) {
	if _, ok := rw.byAddr[netip.AddrPort(a)]; !ok {
		rw.byAddr[netip.AddrPort(a)] = d
	}
}

func (t *Table) expireLocked(now time.Time) {
	if t.o.MaxAge < 0 {
		return
	}
	for {
		back := t.lru.Back()
		if back == nil || now.Sub(back.Value.(*row).r.LastSeen) <= t.o.MaxAge {
			return
		}
		t.lru.Remove(back)
		delete(t.rows, back.Value.(*row).k)
	}
}

// Len is the number of rows.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.rows)
}

// Snapshot copies the table: rows most recent first, each row's
// destinations most recent first. The result shares nothing with the
// table.
func (t *Table) Snapshot() Snapshot {
	now := t.o.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(now)
	s := Snapshot{Time: now, Rows: make([]Row, 0, len(t.rows)), Evicted: t.evicted}
	for el := t.lru.Front(); el != nil; el = el.Next() {
		rw := el.Value.(*row)
		r := rw.r
		r.Counts = r.Counts.clone()
		r.Destinations = make([]Dest, 0, len(rw.dests))
		for _, k := range rw.order {
			d := *rw.dests[k]
			d.Counts = d.Counts.clone()
			d.MCPTools = slices.Clone(d.MCPTools)
			r.Destinations = append(r.Destinations, d)
		}
		sort.SliceStable(r.Destinations, func(i, j int) bool {
			return r.Destinations[i].LastSeen.After(r.Destinations[j].LastSeen)
		})
		s.Rows = append(s.Rows, r)
	}
	return s
}
