// Package advise turns observed traffic into policy: it reads the JSON
// audit log (audit.JSONLog) and suggests a policy that allows what the log
// shows (Suggest), replays the recorded requests against a policy without
// sending anything (Replay), and explains what a policy change allows or
// denies that the old policy did not (Diff). It backs `sluice policy
// suggest`, `test` and `diff`; it is pure (no network, no files it was
// not handed), so every result is table-testable.
package advise

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// maxLine is the longest audit line read; longer lines are skipped.
const maxLine = 1 << 20

// Obs is one observed record: the part of an audit record that policy
// decisions depend on, decoded from the keys of audit/keys.go.
type Obs struct {
	Time     time.Time
	Kind     string
	Workload workload.Identity
	// Name is the record's workload label (audit.KeyWorkload), or
	// Workload.Name() when the record has none.
	Name   string
	Host   string
	IP     netip.Addr
	Port   uint16
	TLS    string
	Method string
	Path   string
	// Decision, Rule and Reason are the recorded decision; for a record
	// with decision "error" they are the policy's (policy_decision, …).
	Decision string
	Rule     string
	Reason   string
	MCP      MCP
	DNSName  string
}

// MCP is what a record says of an MCP request.
type MCP struct {
	Method, Tool, Resource, Prompt string
}

// Log is what Read decoded.
type Log struct {
	Records []Obs
	// Lines is every line read; Skipped the lines that were not audit
	// records (other log lines, JSON that does not decode, too long).
	Lines, Skipped int
}

// Read decodes every audit record of r into l (plain or gzip). Lines that
// are not audit records are counted in l.Skipped; the error is for
// reading only.
func (l *Log) Read(name string, r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("read %s: gzip: %w", name, err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		l.Lines++
		o, err := ParseLine(line)
		if err != nil {
			l.Skipped++
			continue
		}
		l.Records = append(l.Records, o)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("read %s: a line longer than %d bytes", name, maxLine)
		}
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

// Sort orders the records by time, stably, so that records of several
// files replay in the order they happened.
func (l *Log) Sort() {
	sort.SliceStable(l.Records, func(i, j int) bool { return l.Records[i].Time.Before(l.Records[j].Time) })
}

// errNotAudit: a JSON object that is not an audit record.
var errNotAudit = errors.New("not an audit record")

// ParseLine decodes one audit log line.
func ParseLine(line []byte) (Obs, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return Obs{}, fmt.Errorf("decode JSON: %w", err)
	}
	var o Obs
	var msg string
	get := func(k string, v any) {
		if raw, ok := m[k]; ok {
			_ = json.Unmarshal(raw, v)
		}
	}
	get(audit.KeyMsg, &msg)
	get(audit.KeyKind, &o.Kind)
	if (msg != "" && msg != audit.MsgAudit) || o.Kind == "" {
		return Obs{}, errNotAudit
	}
	get(audit.KeyTime, &o.Time)
	w := &o.Workload
	get(audit.KeyPID, &w.PID)
	get(audit.KeyUID, &w.UID)
	get(audit.KeyComm, &w.Comm)
	get(audit.KeyExe, &w.Exe)
	get(audit.KeyCgroup, &w.Cgroup)
	get(audit.KeyContainerID, &w.ContainerID)
	get(audit.KeyPodUID, &w.PodUID)
	get(audit.KeyNamespace, &w.Namespace)
	get(audit.KeyPod, &w.Pod)
	get(audit.KeyContainer, &w.Container)
	get(audit.KeyImage, &w.Image)
	get(audit.KeyLabels, &w.Labels)
	get(audit.KeyWorkload, &o.Name)
	if o.Name == "" {
		o.Name = w.Name()
	}
	var ip string
	get(audit.KeyHost, &o.Host)
	get(audit.KeyIP, &ip)
	o.IP, _ = netip.ParseAddr(ip)
	get(audit.KeyPort, &o.Port)
	get(audit.KeyTLS, &o.TLS)
	get(audit.KeyMethod, &o.Method)
	get(audit.KeyPath, &o.Path)
	get(audit.KeyDecision, &o.Decision)
	get(audit.KeyRule, &o.Rule)
	get(audit.KeyReason, &o.Reason)
	if o.Decision == audit.DecisionError {
		var pd, pr, pn string
		get(audit.KeyPolicyDecision, &pd)
		get(audit.KeyPolicyRule, &pr)
		get(audit.KeyPolicyReason, &pn)
		if pd != "" {
			o.Decision, o.Rule, o.Reason = pd, pr, pn
		}
	}
	get(audit.KeyMCPMethod, &o.MCP.Method)
	get(audit.KeyMCPTool, &o.MCP.Tool)
	get(audit.KeyMCPResource, &o.MCP.Resource)
	get(audit.KeyMCPPrompt, &o.MCP.Prompt)
	get(audit.KeyDNSName, &o.DNSName)
	o.Host = strings.TrimSuffix(strings.ToLower(o.Host), ".")
	o.DNSName = strings.TrimSuffix(strings.ToLower(o.DNSName), ".")
	return o, nil
}

// passed reports whether the recorded decision let the traffic through:
// allow, would_deny, or an error after the policy allowed.
func (o *Obs) passed() bool {
	switch o.Decision {
	case audit.DecisionAllow, audit.DecisionWouldDeny, audit.DecisionError:
		return true
	}
	return false
}

// replayable reports whether a record is a decision the policy makes:
// HTTP requests, L4 flows and DNS queries. Kernel connect events, tool
// changes and connections closed before a decision are not.
func (o *Obs) replayable() bool {
	switch o.Kind {
	case audit.KindHTTP, audit.KindL4:
		return o.Decision != audit.DecisionClosed && o.Decision != ""
	case audit.KindDNS:
		return o.DNSName != "" && o.Decision != ""
	}
	return false
}
