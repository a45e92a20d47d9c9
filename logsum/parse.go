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
	"reflect"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// ErrNotAudit is returned by ParseLine for a valid JSON object that is not
// an audit record (another log line interleaved in the same stream).
var ErrNotAudit = errors.New("not an audit record")

// Entry is the part of an audit record the summary uses. Each field is
// decoded from the audit key of the same name (audit/keys.go), by fields.
type Entry struct {
	Time       time.Time
	Kind       string
	PID        int
	Comm       string
	Workload   string
	Namespace  string
	Pod        string
	Container  string
	Image      string
	Host       string
	IP         string
	Method     string
	Path       string
	Status     int
	Source     string
	Decision   string
	Rule       string
	Reason     string
	BytesIn    int64
	BytesOut   int64
	DurationMS float64
	DNSName    string
	// MCPMethod, MCPTool and MCPErrorCode are an MCP request's JSON-RPC
	// method, tool and error code.
	MCPMethod    string
	MCPTool      string
	MCPErrorCode int
}

// fields maps audit's keys to Entry's fields, in the order MarshalLine
// writes them. It is the only place logsum names a key.
var fields = [...]struct {
	key string
	ptr func(*Entry) any // *string, *int, *int64, *float64 or *time.Time
}{
	{audit.KeyTime, func(e *Entry) any { return &e.Time }},
	{audit.KeyKind, func(e *Entry) any { return &e.Kind }},
	{audit.KeyPID, func(e *Entry) any { return &e.PID }},
	{audit.KeyComm, func(e *Entry) any { return &e.Comm }},
	{audit.KeyNamespace, func(e *Entry) any { return &e.Namespace }},
	{audit.KeyPod, func(e *Entry) any { return &e.Pod }},
	{audit.KeyContainer, func(e *Entry) any { return &e.Container }},
	{audit.KeyImage, func(e *Entry) any { return &e.Image }},
	{audit.KeyWorkload, func(e *Entry) any { return &e.Workload }},
	{audit.KeyHost, func(e *Entry) any { return &e.Host }},
	{audit.KeyIP, func(e *Entry) any { return &e.IP }},
	{audit.KeyMethod, func(e *Entry) any { return &e.Method }},
	{audit.KeyPath, func(e *Entry) any { return &e.Path }},
	{audit.KeyStatus, func(e *Entry) any { return &e.Status }},
	{audit.KeySource, func(e *Entry) any { return &e.Source }},
	{audit.KeyDecision, func(e *Entry) any { return &e.Decision }},
	{audit.KeyRule, func(e *Entry) any { return &e.Rule }},
	{audit.KeyReason, func(e *Entry) any { return &e.Reason }},
	{audit.KeyBytesIn, func(e *Entry) any { return &e.BytesIn }},
	{audit.KeyBytesOut, func(e *Entry) any { return &e.BytesOut }},
	{audit.KeyDurationMS, func(e *Entry) any { return &e.DurationMS }},
	{audit.KeyDNSName, func(e *Entry) any { return &e.DNSName }},
	{audit.KeyMCPMethod, func(e *Entry) any { return &e.MCPMethod }},
	{audit.KeyMCPTool, func(e *Entry) any { return &e.MCPTool }},
	{audit.KeyMCPErrorCode, func(e *Entry) any { return &e.MCPErrorCode }},
}

// wireType is a struct with a field *string "msg" and then one field per
// entry of fields, tagged with its key, so that encoding/json decodes a
// line in one pass (as fast as a hand-written struct, and with the keys of
// audit rather than logsum's own copies).
var wireType = func() reflect.Type {
	sf := []reflect.StructField{{Name: "Msg", Type: reflect.TypeFor[*string](), Tag: reflect.StructTag(`json:"` + audit.KeyMsg + `"`)}}
	for i, f := range fields {
		t := reflect.TypeOf(f.ptr(&Entry{})).Elem()
		omit := "omitempty"
		if t == reflect.TypeFor[time.Time]() {
			omit = "omitzero"
		}
		sf = append(sf, reflect.StructField{
			Name: "F" + strconv.Itoa(i),
			Type: t,
			Tag:  reflect.StructTag(`json:"` + f.key + `,` + omit + `"`),
		})
	}
	return reflect.StructOf(sf)
}()

// ParseLine decodes one audit log line (without its newline). It returns
// ErrNotAudit for a JSON object whose "msg" is not "audit" (or that has
// neither "msg" nor "kind"), and another error for anything that is not a
// JSON object with the expected value types.
func ParseLine(line []byte) (Entry, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Entry{}, errors.New("not a JSON object")
	}
	w := reflect.New(wireType)
	if err := json.Unmarshal(line, w.Interface()); err != nil {
		return Entry{}, fmt.Errorf("decode JSON: %w", err)
	}
	v := w.Elem()
	var e Entry
	for i, f := range fields {
		reflect.ValueOf(f.ptr(&e)).Elem().Set(v.Field(i + 1))
	}
	msg, _ := v.Field(0).Interface().(*string)
	switch {
	case msg != nil && *msg != audit.MsgAudit:
		return Entry{}, ErrNotAudit
	case msg == nil && e.Kind == "":
		return Entry{}, ErrNotAudit
	}
	return e, nil
}

// MarshalLine encodes e as an audit log line (without a newline) that
// ParseLine reads back as e, leaving out zero fields. Tests and tools use
// it; the agent writes its log with audit.JSONLog.
func MarshalLine(e Entry) ([]byte, error) {
	w := reflect.New(wireType).Elem()
	msg := audit.MsgAudit
	w.Field(0).Set(reflect.ValueOf(&msg))
	for i, f := range fields {
		w.Field(i + 1).Set(reflect.ValueOf(f.ptr(&e)).Elem())
	}
	return json.Marshal(w.Interface())
}
