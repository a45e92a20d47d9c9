package audit

import "log/slog"

// Keys of a record: the JSON keys of the audit log and the keys of the
// proxy's decision line, in one style (snake_case). People grep for them
// and tools decode them (logsum): keep them stable.
const (
	KeyTime  = slog.TimeKey    // "time", written by the slog handler
	KeyLevel = slog.LevelKey   // "level", written by the slog handler
	KeyMsg   = slog.MessageKey // "msg": MsgAudit or MsgDecision

	KeyKind         = "kind"
	KeyClient       = "client" // the workload's ip:port
	KeyPID          = "pid"
	KeyUID          = "uid"
	KeyComm         = "comm"
	KeyExe          = "exe"
	KeyCgroup       = "cgroup"
	KeyContainerID  = "container_id"
	KeyPodUID       = "pod_uid"
	KeyNamespace    = "namespace"
	KeyPod          = "pod"
	KeyContainer    = "container" // the container's name (runtime metadata)
	KeyImage        = "image"     // the container's image (runtime metadata)
	KeyLabels       = "labels"    // a group: the pod's labels over the container's
	KeyWorkload     = "workload"  // workload.Identity.Name()
	KeyHost         = "host"
	KeyIP           = "ip"
	KeyPort         = "port"
	KeySNI          = "sni"
	KeyTLS          = "tls"
	KeyALPN         = "alpn"
	KeyProto        = "proto"
	KeyMethod       = "method"
	KeyPath         = "path"
	KeyStatus       = "status"
	KeySource       = "source"
	KeyBytesIn      = "bytes_in"
	KeyBytesOut     = "bytes_out"
	KeyDurationMS   = "duration_ms"
	KeyUpstreamMS   = "upstream_ms"
	KeyUpstreamAddr = "upstream_addr"
	KeyCache        = "cache"
	KeyDecision     = "decision"
	KeyRule         = "rule"
	KeyReason       = "reason"
	KeyError        = "error"
	KeyEnd          = "end"
	// The policy's decision beside decision "error" (see Record).
	KeyPolicyDecision   = "policy_decision"
	KeyPolicyRule       = "policy_rule"
	KeyPolicyReason     = "policy_reason"
	KeyGRPCStatus       = "grpc_status"
	KeyGRPCMessage      = "grpc_message"
	KeyMCPMethod        = "mcp_method"
	KeyMCPTool          = "mcp_tool"
	KeyMCPSession       = "mcp_session"
	KeyMCPResource      = "mcp_resource"
	KeyMCPPrompt        = "mcp_prompt"
	KeyMCPID            = "mcp_id"
	KeyMCPProtocol      = "mcp_protocol"
	KeyMCPErrorCode     = "mcp_error_code"
	KeyMCPHidden        = "mcp_hidden"         // tools removed from a tools/list answer, a list of names
	KeyTokenAudience    = "token_audience"     // a bearer JWT's aud claim that does not name the host (never the token)
	KeyMCPServerMethods = "mcp_server_methods" // methods the server sent on a stream, each once
	KeyMCPToolHash      = "mcp_tool_hash"      // a tool's hash now (hex)
	KeyMCPToolPrevHash  = "mcp_tool_prev_hash" // the tool's hash as acknowledged before (hex)
	KeyMCPToolFields    = "mcp_tool_fields"    // the tool's fields that changed
	KeyHeader           = "header"             // a group: one key per header name

	// DNS: the agent's DNS server's records (kind "dns"), and the name a
	// proxy record's address was resolved from (dns_name).
	KeyDNSName      = "dns_name"      // the name looked up
	KeyQType        = "qtype"         // A, AAAA, …
	KeyRcode        = "rcode"         // NOERROR, NXDOMAIN, …
	KeyAnswers      = "answers"       // the addresses answered
	KeyDetectors    = "detectors"     // content detectors and patterns that matched, a list of names
	KeyCredentials  = "credentials"   // credentials Sluice put in, a list of names
	KeyRequestBody  = "request_body"  // the first bytes of the request body, redacted (logBodies)
	KeyResponseBody = "response_body" // the first bytes of the response body, redacted (logBodies)
)

// Messages of the lines that carry a record.
const (
	MsgAudit    = "audit"    // every line of the JSON audit log (JSONLog)
	MsgDecision = "decision" // the proxy's canonical line per decision (LogDecision)
)

// Keys of Sluice's operational logs (everything that is not a record), in
// the same style. A concept a record also has uses the record's key above,
// so that one name means one thing across every log: KeyError for an
// error, KeyHost, KeyWorkload, KeyClient, KeyPath, KeyMethod, KeyPID,
// KeyUID, KeyComm, KeyCgroup, KeyRule, KeyReason, KeySNI, KeySource.
//
// Every package logs with these constants, never with a literal key.
const (
	KeyComponent     = "component" // every component's logger: log.With(KeyComponent, Component…)
	KeyAddr          = "addr"
	KeyPeer          = "peer"
	KeySuppressed    = "suppressed" // warnings of the same kind held back since the last one logged
	KeyDst           = "dst"
	KeyCgroupID      = "cgroup_id"
	KeyAgentCgroup   = "agent_cgroup"
	KeyVerdict       = "verdict"
	KeyPin           = "pin"
	KeyDir           = "dir"
	KeyFile          = "file"
	KeyLink          = "link"
	KeyMount         = "mount"
	KeyAttach        = "attach"
	KeyIntercept4    = "intercept4"
	KeyIntercept6    = "intercept6"
	KeyProxyPort     = "proxy_port"
	KeyFailMode      = "fail_mode"
	KeyFaultTolerant = "fault_tolerant"
	KeyFaultsTotal   = "faults_total"
	KeyTrigger       = "trigger"
	KeyProblems      = "problems"
	KeyPanic         = "panic"
	KeyStack         = "stack"
	KeyFrom          = "from"
	KeyTo            = "to"
	KeyRlimitHard    = "rlimit_nofile_hard"
	KeyRestored      = "restored"
	KeyRestorations  = "restorations"
	KeyPatchOps      = "patch_ops"   // the webhook: JSON Patch operations applied to a pod
	KeyRuntime       = "runtime"     // a container metadata source: docker, cri, kubernetes
	KeyRetryIn       = "retry_in"    // how long until a failed source is tried again
	KeyAge           = "age"         // how long something existed before it was acted on
	KeyGCHeadroom    = "gc_headroom" // process.gcHeadroom, bytes
	KeyGOGC          = "gogc"        // the GOGC the process started with
	KeySecret        = "secret"      // a Kubernetes Secret, NAMESPACE/NAME (ca.secret)
	KeyFingerprint   = "fingerprint" // a certificate's SHA-256, as sluice ca show prints it
)

// Values of KeyComponent.
const (
	ComponentAdmin = "admin"
	ComponentAgent = "agent"
	// ComponentContainers: the container metadata cache (containers/).
	ComponentContainers = "containers"
	ComponentMITM       = "mitm"
	ComponentPolicy     = "policy"
	ComponentRedis      = "redis"
	ComponentWebhook    = "webhook"
)
