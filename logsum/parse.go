// Package logsum summarizes Sluice audit logs for `sluice logs summarize`:
// it reads the JSON lines written by audit.JSONLog (plain, gzip or stdin),
// and counts what an operator looks for after the fact: rate-limit
// violations, denials and would-denials by rule, authentication failures
// and server errors from upstreams, and the top talkers by workload and by
// destination host. It is pure: no flags, no files it did not get, so
// every count is table-testable.
package logsum

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrNotAudit is returned by ParseLine for a valid JSON object that is not
// an audit record (another log line interleaved in the same stream).
var ErrNotAudit = errors.New("not an audit record")

// Entry is the part of an audit record the summary uses. The JSON keys are
// those of audit/json.go.
type Entry struct {
	Time       time.Time `json:"time,omitzero"`
	Kind       string    `json:"kind,omitempty"`
	PID        int       `json:"pid,omitempty"`
	Comm       string    `json:"comm,omitempty"`
	Workload   string    `json:"workload,omitempty"`
	Host       string    `json:"host,omitempty"`
	IP         string    `json:"ip,omitempty"`
	Method     string    `json:"method,omitempty"`
	Path       string    `json:"path,omitempty"`
	Status     int       `json:"status,omitempty"`
	Source     string    `json:"source,omitempty"`
	Decision   string    `json:"decision,omitempty"`
	Rule       string    `json:"rule,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	BytesIn    int64     `json:"bytes_in,omitempty"`
	BytesOut   int64     `json:"bytes_out,omitempty"`
	DurationMS float64   `json:"duration_ms,omitempty"`
}

// wire is one log line: the slog message plus the record's keys.
type wire struct {
	Msg *string `json:"msg"`
	Entry
}

// auditMsg is the message audit.JSONLog writes on every record.
const auditMsg = "audit"

// ParseLine decodes one audit log line (without its newline). It returns
// ErrNotAudit for a JSON object whose "msg" is not "audit" (or that has
// neither "msg" nor "kind"), and another error for anything that is not a
// JSON object with the expected value types.
func ParseLine(line []byte) (Entry, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Entry{}, errors.New("not a JSON object")
	}
	var w wire
	if err := json.Unmarshal(line, &w); err != nil {
		return Entry{}, fmt.Errorf("decode JSON: %w", err)
	}
	switch {
	case w.Msg != nil && *w.Msg != auditMsg:
		return Entry{}, ErrNotAudit
	case w.Msg == nil && w.Kind == "":
		return Entry{}, ErrNotAudit
	}
	return w.Entry, nil
}

// MarshalLine encodes e as an audit log line (without a newline) that
// ParseLine reads back as e. Tests and tools use it; the agent writes its
// log with audit.JSONLog.
func MarshalLine(e Entry) ([]byte, error) {
	msg := auditMsg
	return json.Marshal(wire{Msg: &msg, Entry: e})
}
