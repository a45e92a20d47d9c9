package advise

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// Groupings of workloads (SuggestOptions.By).
const (
	ByWorkload  = "workload"  // cgroup path, else container id, exe, comm
	ByContainer = "container" // container id, else as ByWorkload
	ByNamespace = "namespace" // Kubernetes namespace, else as ByWorkload
	// ByExe groups by executable path, else as ByWorkload: for `sluice
	// run`, whose transient cgroup is new at every run.
	ByExe = "exe"
)

// SuggestOptions tune Suggest.
type SuggestOptions struct {
	// By groups records into workloads: ByWorkload (default), ByContainer,
	// ByNamespace or ByExe.
	By string
	// Paths adds path templates (destinations.paths) to each rule.
	Paths bool
	// Sources names the inputs in the header comment.
	Sources []string
	// MinSubdomains is how many subdomains of one parent must be seen
	// before they are written as "*.parent"; 0: 3.
	MinSubdomains int
}

// headroom is the factor between the observed peak per minute and the
// suggested rate limit; minLimit the smallest limit suggested.
const (
	headroom = 2
	minLimit = 10
)

var (
	hostLabel = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)
	methodRe  = regexp.MustCompile(`^[A-Z][A-Z0-9_-]{0,31}$`)
	hexIDRe   = regexp.MustCompile(`^[0-9a-f]{12,64}$`)
	k8sNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	nameChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)
)

// selector is how a group of workloads is selected: one field of
// policy.Workloads with one value ("" kind: every workload).
type selector struct {
	kind, value string
}

func (s selector) String() string {
	if s.kind == "" {
		return "any workload"
	}
	return s.kind + " " + s.value
}

// yaml renders the workloads block (indented for a rule), "" for any.
func (s selector) yaml(indent string) string {
	key := map[string]string{"cgroup": "cgroups", "container": "containerIDs", "namespace": "namespaces", "exe": "exe", "comm": "comm"}[s.kind]
	if key == "" {
		return ""
	}
	v := s.value
	if s.kind == "cgroup" || s.kind == "exe" || s.kind == "comm" {
		v = globEscape(v)
	}
	return fmt.Sprintf("%sworkloads:\n%s  %s: [%s]\n", indent, indent, key, q(v))
}

// globEscape escapes path.Match's special characters.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func selectorOf(o *Obs, by string) selector {
	w := &o.Workload
	switch {
	case by == ByContainer && hexIDRe.MatchString(w.ContainerID):
		return selector{"container", w.ContainerID}
	case by == ByNamespace && k8sNameRe.MatchString(w.Namespace):
		return selector{"namespace", w.Namespace}
	case by == ByExe && strings.HasPrefix(w.Exe, "/"):
		return selector{"exe", w.Exe}
	case strings.HasPrefix(w.Cgroup, "/"):
		return selector{"cgroup", w.Cgroup}
	case hexIDRe.MatchString(w.ContainerID):
		return selector{"container", w.ContainerID}
	case strings.HasPrefix(w.Exe, "/"):
		return selector{"exe", w.Exe}
	case w.Comm != "" && len(w.Comm) <= 15:
		return selector{"comm", w.Comm}
	}
	return selector{}
}

// dest is what one workload did with one host (or address).
type dest struct {
	host     string // "" for an address without a name
	ips      map[netip.Addr]bool
	ports    map[uint16]bool
	methods  map[string]bool
	paths    []string
	tools    map[string]bool
	opaque   bool // seen as an L4 flow or passed through: no HTTP criteria
	times    []time.Time
	wouldDen int
	guarded  bool // an address the SSRF guard blocks was dialed
}

func newDest(host string) *dest {
	return &dest{host: host, ips: map[netip.Addr]bool{}, ports: map[uint16]bool{}, methods: map[string]bool{}, tools: map[string]bool{}}
}

func (d *dest) merge(o *dest) {
	for k := range o.ips {
		d.ips[k] = true
	}
	for k := range o.ports {
		d.ports[k] = true
	}
	for k := range o.methods {
		d.methods[k] = true
	}
	for k := range o.tools {
		d.tools[k] = true
	}
	d.paths = append(d.paths, o.paths...)
	d.opaque = d.opaque || o.opaque
	d.times = append(d.times, o.times...)
	d.wouldDen += o.wouldDen
	d.guarded = d.guarded || o.guarded
}

// group is what one workload selector did.
type group struct {
	sel   selector
	names map[string]bool // workload labels seen
	dests map[string]*dest
	dns   map[string]bool
	n     int
}

// Suggest returns a commented policy (YAML) in enforce mode that allows
// what the records show and denies the rest: per workload, one allow rule
// per host (several subdomains of one parent become "*.parent"), with the
// ports and methods seen, path templates when o.Paths, the MCP tools
// called, and a rate limit of twice the busiest minute; dns rules for the
// names looked up. Records that did not pass (deny) are left out. The
// output is deterministic.
func Suggest(recs []Obs, o SuggestOptions) []byte {
	if o.MinSubdomains <= 0 {
		o.MinSubdomains = 3
	}
	groups := map[selector]*group{}
	var used, metadata int
	var first, last time.Time
	passthrough := map[string]bool{}
	decrypted := map[string]bool{}
	for i := range recs {
		r := &recs[i]
		if !r.replayable() || !r.passed() {
			continue
		}
		sel := selectorOf(r, o.By)
		g := groups[sel]
		if g == nil {
			g = &group{sel: sel, names: map[string]bool{}, dests: map[string]*dest{}, dns: map[string]bool{}}
			groups[sel] = g
		}
		if first.IsZero() || r.Time.Before(first) {
			first = r.Time
		}
		if r.Time.After(last) {
			last = r.Time
		}
		if r.Kind == audit.KindDNS {
			if validHost(r.DNSName) {
				g.dns[r.DNSName] = true
				used++
			}
			continue
		}
		if r.IP.IsValid() && policy.Classify(r.IP) == audit.ReasonMetadata {
			metadata++
			continue
		}
		host := r.Host
		if !validHost(host) {
			host = ""
		}
		key := host
		if key == "" {
			if !r.IP.IsValid() {
				continue
			}
			key = r.IP.String()
		}
		used++
		g.n++
		g.names[r.Name] = true
		d := g.dests[key]
		if d == nil {
			d = newDest(host)
			g.dests[key] = d
		}
		d.times = append(d.times, r.Time)
		if r.IP.IsValid() {
			d.ips[r.IP.Unmap()] = true
			if c := policy.Classify(r.IP); c != "" {
				d.guarded = true
			}
		}
		if r.Port != 0 {
			d.ports[r.Port] = true
		}
		if r.Decision == audit.DecisionWouldDeny {
			d.wouldDen++
		}
		if host != "" {
			switch r.TLS {
			case audit.TLSPassthrough:
				passthrough[host] = true
			case audit.TLSDecrypted:
				decrypted[host] = true
			}
		}
		if r.Kind == audit.KindL4 || r.TLS == audit.TLSPassthrough {
			d.opaque = true
			continue
		}
		if r.Method != "" {
			d.methods[strings.ToUpper(r.Method)] = true
		}
		if r.Path != "" {
			d.paths = append(d.paths, r.Path)
		}
		if r.MCP.Tool != "" {
			d.tools[r.MCP.Tool] = true
		}
	}

	var b strings.Builder
	b.WriteString("# Suggested by `sluice policy suggest`")
	if len(o.Sources) > 0 {
		b.WriteString(" from " + strings.Join(o.Sources, ", "))
	}
	b.WriteString(".\n")
	if !first.IsZero() {
		fmt.Fprintf(&b, "# %d records, %s to %s.\n", used, first.UTC().Format(time.RFC3339), last.UTC().Format(time.RFC3339))
	}
	b.WriteString(`# It allows what the log shows and denies everything else. Review it:
# a log only shows what happened while it was written. Replay it with
# "sluice policy test" before you enforce it.
`)
	if metadata > 0 {
		fmt.Fprintf(&b, "# %d records to cloud metadata addresses are left out: they are always denied.\n", metadata)
	}
	b.WriteString("version: 1\nmode: enforce\n")
	b.WriteString("# No ssrf section: the default address guard applies (private, loopback,\n# link-local and metadata addresses are denied unless a rule below names them).\n")
	b.WriteString("defaults:\n  action: deny\n")
	var pass []string
	for h := range passthrough {
		if !decrypted[h] {
			pass = append(pass, h)
		}
	}
	sort.Strings(pass)
	if len(pass) > 0 {
		b.WriteString("tls:\n  # Seen only without decryption (pass-through).\n  passthrough: " + list(pass) + "\n")
	}

	sels := make([]selector, 0, len(groups))
	for s := range groups {
		sels = append(sels, s)
	}
	sort.Slice(sels, func(i, j int) bool { return lessSel(sels[i], sels[j]) })
	names := map[string]bool{}
	var dnsOut strings.Builder
	b.WriteString("rules:\n")
	nrules := 0
	for wi, s := range sels {
		g := groups[s]
		w := fmt.Sprintf("w%d", wi+1)
		if len(g.dests) > 0 {
			fmt.Fprintf(&b, "\n  # %s: %s (%d records)\n", w, s, g.n)
			if wl := sortedKeys(g.names); len(wl) > 0 {
				fmt.Fprintf(&b, "  # seen as %s\n", strings.Join(wl, ", "))
			}
		}
		for _, d := range wildcard(g.dests, o.MinSubdomains) {
			nrules += writeRules(&b, names, w, s, d, o.Paths)
		}
		if len(g.dns) > 0 {
			dn := map[string]bool{}
			for n := range g.dns {
				dn[n] = true
			}
			for _, d := range g.dests {
				if validName(d.host) {
					dn[d.host] = true
				}
			}
			ds := map[string]*dest{}
			for n := range dn {
				ds[n] = newDest(n)
			}
			var ns []string
			for _, d := range wildcard(ds, o.MinSubdomains) {
				ns = append(ns, d.host)
			}
			fmt.Fprintf(&dnsOut, "\n  # %s: %s looked up these names (and reached the hosts above)\n", w, s)
			fmt.Fprintf(&dnsOut, "  - name: %s\n%s    names: %s\n    action: allow\n", unique(names, w+".dns"), s.yaml("    "), list(ns))
			fmt.Fprintf(&dnsOut, "  - name: %s\n%s    names: [\"*\"]\n    action: deny\n", unique(names, w+".dns-other"), s.yaml("    "))
		}
	}
	if nrules == 0 {
		b.WriteString("  []\n")
	}
	if dnsOut.Len() > 0 {
		b.WriteString("dns:")
		b.WriteString(dnsOut.String())
	}
	return []byte(b.String())
}

// writeRules writes the rules of one destination and returns how many.
func writeRules(b *strings.Builder, names map[string]bool, w string, s selector, d *dest, paths bool) int {
	label := d.host
	if label == "" {
		label = strings.Join(sortedAddrs(d.ips), ",")
	}
	peak := peakPerMinute(d.times)
	limit := max(minLimit, headroom*peak)
	fmt.Fprintf(b, "  # %s: %d requests, at most %d in a minute; the limit is %dx that (at least %d).\n", label, len(d.times), peak, headroom, minLimit)
	if d.wouldDen > 0 {
		fmt.Fprintf(b, "  # %d of them were would_deny under the policy in force: review.\n", d.wouldDen)
	}
	var crit strings.Builder
	if d.host != "" {
		fmt.Fprintf(&crit, "      hosts: [%s]\n", q(d.host))
	}
	if ps := sortedPorts(d.ports); len(ps) > 0 {
		fmt.Fprintf(&crit, "      ports: [%s]\n", strings.Join(ps, ", "))
	}
	if d.guarded || d.host == "" {
		// An allow rule's cidrs exempt the addresses from the guard and
		// bind the rule to them.
		fmt.Fprintf(&crit, "      cidrs: %s\n", list(sortedAddrs(d.ips)))
	}
	ms := sortedKeys(d.methods)
	http := !d.opaque && len(ms) > 0 && !slices.ContainsFunc(ms, func(m string) bool { return !methodRe.MatchString(m) })
	n := 0
	if http && len(d.tools) > 0 {
		fmt.Fprintf(b, "  # MCP: only the tools called; other tools/call requests are denied.\n")
		fmt.Fprintf(b, "  - name: %s\n%s    destinations:\n%s    mcp:\n      methods: [\"tools/call\"]\n      tools: %s\n    action: allow\n    rateLimit: {minute: %d}\n",
			unique(names, ruleName(w, label, "tools")), s.yaml("    "), crit.String(), list(sortedKeys(d.tools)), limit)
		fmt.Fprintf(b, "  - name: %s\n%s    destinations:\n%s    mcp:\n      methods: [\"tools/call\"]\n    action: deny\n",
			unique(names, ruleName(w, label, "other-tools")), s.yaml("    "), crit.String())
		n += 2
	}
	if http {
		fmt.Fprintf(&crit, "      methods: %s\n", list(ms))
		if paths && len(d.paths) > 0 {
			fmt.Fprintf(&crit, "      paths: %s\n", list(Templates(d.paths)))
		}
	} else if d.opaque {
		b.WriteString("  # Seen as a flow without HTTP (l4 or pass-through): no methods or paths apply.\n")
	}
	if d.guarded && d.host != "" {
		b.WriteString("  # Reached at addresses the SSRF guard blocks: the rule names them (cidrs).\n")
	}
	fmt.Fprintf(b, "  - name: %s\n%s    destinations:\n%s    action: allow\n    rateLimit: {minute: %d}\n", unique(names, ruleName(w, label, "")), s.yaml("    "), crit.String(), limit)
	return n + 1
}

// wildcard merges, per parent domain, o.MinSubdomains or more hosts into
// one "*.parent" destination, and returns the destinations sorted.
func wildcard(ds map[string]*dest, min int) []*dest {
	byParent := map[string][]string{}
	for k, d := range ds {
		if d.host == "" || !validName(d.host) {
			continue
		}
		_, parent, ok := strings.Cut(d.host, ".")
		if ok && strings.Contains(parent, ".") {
			byParent[parent] = append(byParent[parent], k)
		}
	}
	out := map[string]*dest{}
	for k, d := range ds {
		out[k] = d
	}
	for parent, ks := range byParent {
		if len(ks) < min {
			continue
		}
		sort.Strings(ks)
		w := newDest("*." + parent)
		for _, k := range ks {
			w.merge(out[k])
			delete(out, k)
		}
		if prev, ok := out[w.host]; ok {
			w.merge(prev)
		}
		out[w.host] = w
	}
	keys := sortedKeys(out)
	res := make([]*dest, len(keys))
	for i, k := range keys {
		res[i] = out[k]
	}
	return res
}

// peakPerMinute is the most records within any 60 seconds.
func peakPerMinute(ts []time.Time) int {
	s := slices.Clone(ts)
	slices.SortFunc(s, func(a, b time.Time) int { return a.Compare(b) })
	peak, j := 0, 0
	for i := range s {
		for s[i].Sub(s[j]) >= time.Minute {
			j++
		}
		peak = max(peak, i-j+1)
	}
	return peak
}

// ruleName builds a rule name from the workload tag, the host and a
// suffix, within the policy's 64 characters.
func ruleName(w, host, suffix string) string {
	h := nameChars.ReplaceAllString(strings.ReplaceAll(host, "*", "any"), "-")
	n := w + "." + h
	if suffix != "" {
		n += "." + suffix
	}
	if len(n) > 60 {
		n = n[:60]
	}
	return strings.TrimRight(n, ".-_")
}

// unique returns n, or n with a number added, unused in names.
func unique(names map[string]bool, n string) string {
	c := n
	for i := 2; names[c]; i++ {
		c = n + "-" + strconv.Itoa(i)
	}
	names[c] = true
	return c
}

func lessSel(a, b selector) bool {
	if (a.kind == "") != (b.kind == "") {
		return b.kind == "" // any workload last: it selects every workload
	}
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	return a.value < b.value
}

// validHost reports whether h can be written as a host in a policy.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return validName(h)
}

func validName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return false
	}
	for _, l := range strings.Split(strings.TrimPrefix(h, "*."), ".") {
		if !hostLabel.MatchString(l) {
			return false
		}
	}
	return true
}

// q quotes s as a YAML double-quoted scalar (JSON's form is valid YAML).
func q(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func list(xs []string) string {
	qs := make([]string, len(xs))
	for i, x := range xs {
		qs[i] = q(x)
	}
	return "[" + strings.Join(qs, ", ") + "]"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedPorts(m map[uint16]bool) []string {
	ps := make([]int, 0, len(m))
	for p := range m {
		ps = append(ps, int(p))
	}
	sort.Ints(ps)
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = strconv.Itoa(p)
	}
	return out
}

func sortedAddrs(m map[netip.Addr]bool) []string {
	as := make([]netip.Addr, 0, len(m))
	for a := range m {
		as = append(as, a)
	}
	slices.SortFunc(as, func(a, b netip.Addr) int { return a.Compare(b) })
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}
