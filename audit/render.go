package audit

import (
	"context"
	"log/slog"
	"sort"
)

// This file is the one place a Record becomes key/value pairs: the JSON
// audit log (JSONLog) and the proxy's decision line (LogDecision) are both
// rendered by attr, with the keys of keys.go. They differ only in which
// fields they carry and in what order: the decision line is a summary for
// a person reading the process log, the audit line is the whole record.
// JSONLog writes the bytes of the audit line's attributes itself
// (appendJSON in json.go, field by field in the order of auditFields);
// its tests hold it to slog's rendering of AppendAttrs, every field set.

// field is one key (or group) of a rendered record.
type field uint8

const (
	fKind field = iota
	fClient
	fPID
	fUID
	fComm
	fExe
	fCgroup
	fContainerID
	fPodUID
	fNamespace
	fPod
	fContainer
	fImage
	fLabels
	fWorkload
	fHost
	fIP
	fPort
	fSNI
	fTLS
	fALPN
	fProto
	fMethod
	fPath
	fStatus
	fSource
	fBytesIn
	fBytesOut
	fDurationMS
	fUpstreamMS
	fUpstreamAddr
	fCache
	fDecision
	fRule
	fReason
	fError
	fEnd
	fPolicyDecision
	fPolicyRule
	fPolicyReason
	fGRPCStatus
	fGRPCMessage
	fMCPMethod
	fMCPTool
	fMCPSession
	fMCPResource
	fMCPPrompt
	fMCPID
	fMCPProtocol
	fMCPErrorCode
	fMCPHidden
	fMCPServerMethods
	fMCPToolHash
	fMCPToolPrevHash
	fMCPToolFields
	fTokenAudience
	fDetectors
	fCredentials
	fRequestBody
	fResponseBody
	fHeader
	fDNSName
	fQType
	fRcode
	fAnswers
)

// auditFields are the fields of an audit log line, in order.
var auditFields = [...]field{
	fKind, fClient, fPID, fUID, fComm, fExe, fCgroup, fContainerID, fPodUID,
	fNamespace, fPod, fContainer, fImage, fLabels, fWorkload, fHost, fIP, fPort, fSNI, fTLS, fALPN, fProto,
	fMethod, fPath, fStatus, fSource, fBytesIn, fBytesOut, fDurationMS,
	fUpstreamMS, fUpstreamAddr, fCache, fDecision, fRule, fReason, fError, fEnd,
	fPolicyDecision, fPolicyRule, fPolicyReason, fGRPCStatus, fGRPCMessage,
	fMCPMethod, fMCPTool, fMCPResource, fMCPPrompt, fMCPID, fMCPSession,
	fMCPProtocol, fMCPErrorCode, fMCPHidden, fMCPServerMethods, fMCPToolHash, fMCPToolPrevHash, fMCPToolFields,
	fTokenAudience, fDetectors, fCredentials, fRequestBody, fResponseBody, fHeader,
	fDNSName, fQType, fRcode, fAnswers,
}

// decisionFields are the fields of a decision line, in order: who, the
// verdict, where to, what, why, how much. Kind, workload and decision are
// always present (a line never lacks its verdict); the others only when
// set, as in the audit line.
var decisionFields = [...]field{
	fKind, fWorkload, fDecision, fClient, fHost, fIP, fPort, fSNI, fTLS,
	fMethod, fPath, fStatus, fGRPCStatus, fMCPMethod, fMCPTool, fRule,
	fReason, fError, fEnd, fTokenAudience, fDetectors, fBytesIn, fBytesOut, fDurationMS,
	fDNSName, fQType, fRcode,
}

// MaxDecisionAttrs is the most attributes AppendDecisionAttrs appends: a
// [MaxDecisionAttrs]slog.Attr array on the stack holds a whole line.
const MaxDecisionAttrs = len(decisionFields)

// attr renders one field of r. ok is false when the field is empty and
// left out of an audit line; a is then still the field with its empty
// value (kind and decision are written anyway on a decision line).
func (r *Record) attr(f field) (a slog.Attr, ok bool) {
	if k, v, ok := r.stringField(f); ok {
		return str(k, v)
	}
	if k, v, ok := r.listField(f); ok {
		return strs(k, v)
	}
	w := &r.Workload
	switch f {
	case fClient:
		if !w.Client.IsValid() {
			return slog.Attr{}, false
		}
		return slog.String(KeyClient, w.Client.String()), true
	case fPID:
		return slog.Int(KeyPID, w.PID), w.PID != 0
	case fUID:
		return slog.Uint64(KeyUID, uint64(w.UID)), w.PID != 0 // UID is valid when PID is
	case fLabels:
		return labelsAttr(w.Labels)
	case fWorkload:
		return slog.String(KeyWorkload, w.Name()), true
	case fIP:
		if !r.DstIP.IsValid() {
			return slog.Attr{}, false
		}
		return slog.String(KeyIP, r.DstIP.String()), true
	case fPort:
		return slog.Int(KeyPort, int(r.Port)), r.Port != 0
	case fStatus:
		return slog.Int(KeyStatus, r.Status), r.Status != 0
	case fBytesIn:
		return slog.Int64(KeyBytesIn, r.BytesIn), true
	case fBytesOut:
		return slog.Int64(KeyBytesOut, r.BytesOut), true
	case fDurationMS:
		return slog.Float64(KeyDurationMS, float64(r.Duration.Microseconds())/1000), true
	case fUpstreamMS:
		return slog.Float64(KeyUpstreamMS, float64(r.UpstreamDuration.Microseconds())/1000), r.UpstreamDuration != 0
	case fMCPErrorCode:
		return slog.Int(KeyMCPErrorCode, r.MCPErrorCode), r.MCPErrorCode != 0
	case fHeader:
		if len(r.Header) == 0 {
			return slog.Attr{}, false
		}
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		ha := make([]slog.Attr, len(keys))
		for i, k := range keys {
			ha[i] = slog.String(k, r.Header[k])
		}
		return slog.Attr{Key: KeyHeader, Value: slog.GroupValue(ha...)}, true
	case fAnswers:
		if len(r.Answers) == 0 {
			return slog.Attr{}, false
		}
		as := make([]string, len(r.Answers))
		for i, a := range r.Answers {
			as[i] = a.String()
		}
		return slog.Any(KeyAnswers, as), true
	}
	panic("audit: unknown field")
}

// stringField is f's key and value when f is a string field (left out
// of a line when empty); ok is false for the other fields.
func (r *Record) stringField(f field) (key, value string, ok bool) {
	w := &r.Workload
	switch f {
	case fKind:
		return KeyKind, r.Kind, true
	case fComm:
		return KeyComm, w.Comm, true
	case fExe:
		return KeyExe, w.Exe, true
	case fCgroup:
		return KeyCgroup, w.Cgroup, true
	case fContainerID:
		return KeyContainerID, w.ContainerID, true
	case fPodUID:
		return KeyPodUID, w.PodUID, true
	case fNamespace:
		return KeyNamespace, w.Namespace, true
	case fPod:
		return KeyPod, w.Pod, true
	case fContainer:
		return KeyContainer, w.Container, true
	case fImage:
		return KeyImage, w.Image, true
	case fHost:
		return KeyHost, r.Host, true
	case fSNI:
		return KeySNI, r.SNI, true
	case fTLS:
		return KeyTLS, r.TLS, true
	case fALPN:
		return KeyALPN, r.ALPN, true
	case fProto:
		return KeyProto, r.Proto, true
	case fMethod:
		return KeyMethod, r.Method, true
	case fPath:
		return KeyPath, r.Path, true
	case fSource:
		return KeySource, r.Source, true
	case fUpstreamAddr:
		return KeyUpstreamAddr, r.UpstreamAddr, true
	case fCache:
		return KeyCache, r.Cache, true
	case fDecision:
		return KeyDecision, r.Decision, true
	case fRule:
		return KeyRule, r.Rule, true
	case fReason:
		return KeyReason, r.Reason, true
	case fError:
		return KeyError, r.Error, true
	case fEnd:
		return KeyEnd, r.End, true
	case fPolicyDecision:
		return KeyPolicyDecision, r.PolicyDecision, true
	case fPolicyRule:
		return KeyPolicyRule, r.PolicyRule, true
	case fPolicyReason:
		return KeyPolicyReason, r.PolicyReason, true
	case fGRPCStatus:
		return KeyGRPCStatus, r.GRPCStatus, true
	case fGRPCMessage:
		return KeyGRPCMessage, r.GRPCMessage, true
	case fMCPMethod:
		return KeyMCPMethod, r.MCPMethod, true
	case fMCPTool:
		return KeyMCPTool, r.MCPTool, true
	case fMCPSession:
		return KeyMCPSession, r.MCPSession, true
	case fMCPResource:
		return KeyMCPResource, r.MCPResource, true
	case fMCPPrompt:
		return KeyMCPPrompt, r.MCPPrompt, true
	case fMCPID:
		return KeyMCPID, r.MCPID, true
	case fMCPProtocol:
		return KeyMCPProtocol, r.MCPProtocol, true
	case fMCPToolHash:
		return KeyMCPToolHash, r.MCPToolHash, true
	case fMCPToolPrevHash:
		return KeyMCPToolPrevHash, r.MCPToolPrevHash, true
	case fRequestBody:
		return KeyRequestBody, r.RequestBody, true
	case fResponseBody:
		return KeyResponseBody, r.ResponseBody, true
	case fDNSName:
		return KeyDNSName, r.DNSName, true
	case fQType:
		return KeyQType, r.QType, true
	case fRcode:
		return KeyRcode, r.Rcode, true
	}
	return "", "", false
}

// listField is f's key and value when f is a list of names (left out of
// a line when empty); ok is false for the other fields.
func (r *Record) listField(f field) (key string, value []string, ok bool) {
	switch f {
	case fMCPHidden:
		return KeyMCPHidden, r.MCPHidden, true
	case fMCPServerMethods:
		return KeyMCPServerMethods, r.MCPServerMethods, true
	case fMCPToolFields:
		return KeyMCPToolFields, r.MCPToolFields, true
	case fTokenAudience:
		return KeyTokenAudience, r.TokenAudience, true
	case fDetectors:
		return KeyDetectors, r.Detectors, true
	case fCredentials:
		return KeyCredentials, r.Credentials, true
	}
	return "", nil, false
}

func str(k, v string) (slog.Attr, bool) { return slog.String(k, v), v != "" }

// strs renders a list of names (a JSON array in the audit log).
func strs(k string, v []string) (slog.Attr, bool) {
	if len(v) == 0 {
		return slog.Attr{}, false
	}
	return slog.Any(k, v), true
}

// AppendAttrs appends the attributes of r's audit log line to dst, leaving
// out empty fields (bytes_in, bytes_out, duration_ms and workload are
// always present), and returns the extended slice.
func (r *Record) AppendAttrs(dst []slog.Attr) []slog.Attr {
	for _, f := range auditFields {
		if a, ok := r.attr(f); ok {
			dst = append(dst, a)
		}
	}
	return dst
}

// Attrs renders the record as the attributes of its audit log line.
func (r *Record) Attrs() []slog.Attr { return r.AppendAttrs(make([]slog.Attr, 0, 32)) }

// AppendDecisionAttrs appends the attributes of r's decision line to dst
// and returns the extended slice: kind, workload, decision, then client,
// host, ip, port, sni, tls, method, path, status, rule, reason, error when
// set (and mcp_method, mcp_tool after status), then bytes_in, bytes_out,
// duration_ms. Keys and values are those of
// the audit line. It appends at most MaxDecisionAttrs attributes and
// allocates only the strings of the client, ip and workload values.
func (r *Record) AppendDecisionAttrs(dst []slog.Attr) []slog.Attr {
	for _, f := range decisionFields {
		a, ok := r.attr(f)
		if ok || f == fKind || f == fDecision {
			dst = append(dst, a)
		}
	}
	return dst
}

// DecisionLevel is the level of r's decision line: Info for an allow and
// for a would_deny (audit mode is working as intended, not a warning),
// Warn for a deny, Error for an error unless ClientCaused(r.Reason), then
// Warn (the client's doing, not an internal failure). Other decisions
// (the agent's connect decisions) are Info.
func DecisionLevel(r *Record) slog.Level {
	switch r.Decision {
	case DecisionDeny, DecisionClientUntrusted:
		return slog.LevelWarn
	case DecisionError:
		if ClientCaused(r.Reason) {
			return slog.LevelWarn
		}
		return slog.LevelError
	}
	return slog.LevelInfo
}

// LogDecision writes r's canonical decision line to log: message
// MsgDecision at DecisionLevel(r), with the attributes of
// AppendDecisionAttrs. It does nothing when log does not log that level,
// and builds the attributes on the stack otherwise. It does not modify r
// (callers fill in Duration first) and does not hand it to a Sink.
func LogDecision(ctx context.Context, log *slog.Logger, r *Record) {
	level := DecisionLevel(r)
	if !log.Enabled(ctx, level) {
		return
	}
	var buf [MaxDecisionAttrs]slog.Attr
	log.LogAttrs(ctx, level, MsgDecision, r.AppendDecisionAttrs(buf[:0])...)
}

// maxRecordLabels bounds the labels a record carries (an image's own
// labels end up on its containers, and some images have many).
const maxRecordLabels = 32

// labelsAttr is the labels group of a record, sorted by key, at most
// maxRecordLabels of them.
func labelsAttr(labels map[string]string) (slog.Attr, bool) {
	if len(labels) == 0 {
		return slog.Attr{}, false
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	keys = keys[:min(len(keys), maxRecordLabels)]
	la := make([]slog.Attr, len(keys))
	for i, k := range keys {
		la[i] = slog.String(k, labels[k])
	}
	return slog.Attr{Key: KeyLabels, Value: slog.GroupValue(la...)}, true
}
