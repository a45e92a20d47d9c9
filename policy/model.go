package policy

// This file is the policy file's model: the Go types the YAML decodes into.
// Field tags drive three things at once: the YAML key (yaml), the strict
// key check and the JSON Schema (schema.json is generated from these types
// by reflection, see schema.go; `desc` is the key's description and `enum`
// its allowed values).
//
// Durations and sizes are strings in YAML ("30s", "10MB") and are parsed by
// validation, so a bad value is reported with its path and line like any
// other mistake.

// Policy is the whole policy file.
type Policy struct {
	Version  int      `yaml:"version" desc:"Policy file format version; must be 1." required:"true"`
	Mode     string   `yaml:"mode" enum:"enforce|audit" desc:"Global mode: enforce applies denies, audit lets everything through and records would_deny. Rules and the ssrf section may override it. Default enforce."`
	TLS      TLS      `yaml:"tls" desc:"TLS handling."`
	SSRF     SSRF     `yaml:"ssrf" desc:"The address guard applied to every address the proxy dials."`
	Defaults Defaults `yaml:"defaults" desc:"The default rule: applies to requests no rule matched, and fills in what a matching rule leaves unset (mode, limits, rateLimit)."`
	Rules    []Rule   `yaml:"rules" desc:"Rules in order; the first rule that selects the workload and matches the destination decides."`
	// MCP: see the MCP block at the foot of this file.
	MCP MCPSettings `yaml:"mcp" desc:"How MCP (JSON-RPC over Streamable HTTP) is handled."`
	DNS []DNSRule   `yaml:"dns" desc:"Rules for the names workloads look up through the agent's DNS server, in order; the first rule that selects the workload and matches the name decides; a name no rule matches is allowed."`

	// What a request carries (model_content.go).
	Credentials []Credential `yaml:"credentials" desc:"Secrets Sluice injects or substitutes for masked placeholders (sluice:cred:NAME), each bound to the hosts it may go to. Values come from files or the agent's environment, never from this file."`
	// Upstreams: see model_gateway.go.
	Upstreams []Upstream `yaml:"upstreams" desc:"Upstream groups: several targets for a destination, balanced, health checked, with retries."`
	// Resolution: resolution.go.
	Resolution Resolution `yaml:"resolution" desc:"How connections relate to DNS: encrypted DNS to public resolvers, and addresses the workload did not obtain from DNS."`
}

// Resolution configures the checks of resolution.go, applied to every
// connection before the rules.
type Resolution struct {
	Mode            string   `yaml:"mode" enum:"enforce|audit" desc:"Mode of these checks; default: the global mode."`
	AllowDoH        bool     `yaml:"allowDoH" desc:"Allow DNS over HTTPS and over TLS to well-known public resolvers (by name or address, and any port 853), and DoH requests (application/dns-message) to any server; denied by default, since they take names past the agent's DNS server."`
	RequireResolved bool     `yaml:"requireResolved" desc:"Deny a connection to an address the workload did not obtain from the agent's DNS server (transparent interception with agent.dnsPort only)."`
	UnresolvedCIDRs []string `yaml:"unresolvedCIDRs" desc:"Ranges requireResolved lets through without a DNS answer, e.g. the cluster's service range 10.96.0.0/12."`
}

// DNSRule allows or denies the names a workload may resolve.
type DNSRule struct {
	Name      string    `yaml:"name" desc:"Unique name among the dns rules; it appears in audit records." required:"true"`
	Workloads Workloads `yaml:"workloads" desc:"Which workloads the rule applies to; empty: all."`
	Names     []string  `yaml:"names" desc:"Names looked up: exact (api.example.com), *.example.com for any name below example.com, or * for any." required:"true"`
	Action    string    `yaml:"action" enum:"allow|deny" desc:"allow or deny; a denied name is answered NXDOMAIN (or REFUSED, agent.dns.denyRcode) and never forwarded." required:"true"`
	Mode      string    `yaml:"mode" enum:"enforce|audit" desc:"Mode of this rule; default: the global mode."`
}

// TLS configures what is decrypted.
type TLS struct {
	Passthrough []string `yaml:"passthrough" desc:"Hosts (exact or *.wildcard) whose TLS is relayed without decryption; only host, port and cidr criteria apply to them."`
	// OnUntrustedClient: see policy.Conn.ClientUntrusted.
	OnUntrustedClient string `yaml:"onUntrustedClient" enum:"intercept|passthrough" desc:"What happens after a client rejected Sluice's certificate (record client_untrusted: a TLS alert unknown_ca, bad_certificate or certificate_unknown, or a close right after the handshake): intercept (default) keeps decrypting, so a client that pins its certificates keeps failing; passthrough relays that workload's later connections to that host undecrypted for an hour (only host, port and cidr criteria apply to them, as for tls.passthrough). A workload can then choose not to be decrypted for a host by rejecting the certificate: set passthrough only where that is acceptable."`
}

// Values of tls.onUntrustedClient.
const (
	OnUntrustedIntercept   = "intercept"
	OnUntrustedPassthrough = "passthrough"
)

// SSRF configures the address guard.
type SSRF struct {
	Mode       string   `yaml:"mode" enum:"enforce|audit" desc:"Mode of the guard for private, loopback, link-local and similar ranges; default: the global mode. Cloud metadata addresses are always enforced."`
	AllowCIDRs []string `yaml:"allowCIDRs" desc:"Ranges the guard lets through for every workload, e.g. 10.0.0.0/8."`
}

// Defaults is the default rule.
type Defaults struct {
	Action    string     `yaml:"action" enum:"allow|deny" desc:"Action for requests no rule matched. Default allow."`
	Mode      string     `yaml:"mode" enum:"enforce|audit" desc:"Mode of the default rule; default: the global mode."`
	RateLimit *RateLimit `yaml:"rateLimit" desc:"Rate limit for requests no rule matched and for rules without their own."`
	Limits    Limits     `yaml:"limits" desc:"Body size limits for requests no rule matched and for rules that leave them unset."`
	Capture   bool       `yaml:"capture" desc:"Write the decrypted requests and responses no rule matched to the pcapng capture (audit.capture in the agent config)."`
}

// Rule is one policy rule.
type Rule struct {
	Name         string       `yaml:"name" desc:"Unique rule name; it appears in deny answers, audit records and rate-limit headers." required:"true"`
	Workloads    Workloads    `yaml:"workloads" desc:"Which workloads the rule applies to; empty: all. Lists are ORed within, fields ANDed."`
	Destinations Destinations `yaml:"destinations" desc:"Which destinations the rule matches; empty: all. Lists are ORed within, fields ANDed."`
	Action       string       `yaml:"action" enum:"allow|deny" desc:"allow or deny." required:"true"`
	Mode         string       `yaml:"mode" enum:"enforce|audit" desc:"Mode of this rule; default: defaults.mode, else the global mode."`
	RateLimit    *RateLimit   `yaml:"rateLimit" desc:"Rate limit applied to requests this allow rule matches."`
	Limits       Limits       `yaml:"limits" desc:"Body size limits for requests this allow rule matches."`
	Capture      bool         `yaml:"capture" desc:"Write the decrypted requests and responses this rule matches to the pcapng capture (audit.capture in the agent config); default: defaults.capture."`
	// MCP: see the MCP block at the foot of this file.
	MCP *MCPMatch `yaml:"mcp" desc:"Match MCP requests (JSON-RPC over Streamable HTTP) by method, tool, resource or prompt; a rule with mcp matches MCP requests only, and its rateLimit counts per tool."`

	// The API gateway's fields (model_gateway.go).
	Cache *Cache `yaml:"cache" desc:"Cache the responses to GET and HEAD requests this allow rule matches, honouring Cache-Control (RFC 9111)."`

	// What a request carries (model_content.go): content inspection,
	// header changes (credential injection), body logging.
	Content   *Content   `yaml:"content" desc:"Inspect request headers, URL and body for secrets (built-in detectors) and patterns; block, redact or audit what matches. Allow rules only."`
	Headers   *Headers   `yaml:"headers" desc:"Request and response header changes; request values may name a credential as ${cred:NAME}. Allow rules only."`
	LogBodies *LogBodies `yaml:"logBodies" desc:"Put the first bytes of request and response bodies in the audit record, secrets redacted by the built-in detectors. Allow rules only."`
	// CaptureSecrets keeps secrets in this rule's pcapng capture.
	CaptureSecrets bool `yaml:"captureSecrets" desc:"With capture: write credential headers (Authorization, Cookie, API keys) and detected secrets to the pcapng capture as they are; default false: they are redacted."`
}

// Workloads selects workloads. Empty lists select everything.
type Workloads struct {
	Cgroups      []string          `yaml:"cgroups" desc:"cgroup v2 path globs: * within one path segment, ** across segments, e.g. /kubepods/**."`
	Comm         []string          `yaml:"comm" desc:"Process names (the kernel's comm, at most 15 bytes); globs allowed."`
	Exe          []string          `yaml:"exe" desc:"Executable path globs, e.g. /usr/bin/python3*."`
	ContainerIDs []string          `yaml:"containerIDs" desc:"Container id prefixes (at least 12 hex digits)."`
	Namespaces   []string          `yaml:"namespaces" desc:"Kubernetes namespaces (globs: * any run of characters, ? one), from the container runtime or the Kubernetes API."`
	Labels       map[string]string `yaml:"labels" desc:"Labels that must all be present with values matching these globs: the pod's labels over the container's own (Docker or CRI labels)."`
	Containers   []string          `yaml:"containers" desc:"Container names (globs): the Kubernetes container name in a pod, else the runtime's (Docker's) name."`
	Images       []string          `yaml:"images" desc:"Container images as the runtime names them (globs, * also across / and :), e.g. docker.io/library/python:* or registry.example.com/team/*."`
}

// Destinations selects destinations. Empty lists match everything.
type Destinations struct {
	Hosts   []string `yaml:"hosts" desc:"Host names: exact (api.example.com), *.example.com for any name below example.com, or * for any."`
	Ports   []int    `yaml:"ports" desc:"Destination ports."`
	Methods []string `yaml:"methods" desc:"HTTP methods (upper case)."`
	Paths   []string `yaml:"paths" desc:"URL paths: a prefix matched on whole segments (/v1 matches /v1 and /v1/x, not /v1x), or a glob with * (one segment) and ** (any)."`
	CIDRs   []string `yaml:"cidrs" desc:"Ranges of the dialed address. On an allow rule they also exempt the range from the address guard."`
}

// RateLimit configures a rate limit. Each of second, minute, hour and day
// that is not zero is a token bucket of that many requests refilled evenly
// over its window; a request needs a token from every bucket.
type RateLimit struct {
	Second            int64  `yaml:"second" desc:"Requests per second."`
	Minute            int64  `yaml:"minute" desc:"Requests per minute."`
	Hour              int64  `yaml:"hour" desc:"Requests per hour."`
	Day               int64  `yaml:"day" desc:"Requests per day."`
	Burst             int64  `yaml:"burst" desc:"Capacity of the shortest window's bucket (requests that may arrive at once); default: that window's limit."`
	By                string `yaml:"by" enum:"workload|destination|both" desc:"What a bucket counts: per workload (default), per destination host, or per workload and host."`
	Policy            string `yaml:"policy" enum:"local|redis" desc:"local: counters in this process (default); redis: counters shared through Redis by every proxy using the same server."`
	Redis             Redis  `yaml:"redis" desc:"The Redis server for policy: redis."`
	FaultTolerant     *bool  `yaml:"faultTolerant" desc:"When Redis cannot be reached: true (default) allows the request and counts the fault, false denies with 503."`
	HideClientHeaders bool   `yaml:"hideClientHeaders" desc:"Do not send RateLimit, RateLimit-Policy and X-RateLimit-* headers to the client."`
	KongHeaders       bool   `yaml:"kongHeaders" desc:"Also send Kong-style X-RateLimit-Limit-<Window> and X-RateLimit-Remaining-<Window> headers."`
}

// Redis says where shared counters live.
type Redis struct {
	Addr     string `yaml:"addr" desc:"host:port of the Redis server."`
	Username string `yaml:"username" desc:"ACL user name, if any."`
	Password string `yaml:"password" desc:"Password, if any."`
	DB       int    `yaml:"db" desc:"Database number."`
	Timeout  string `yaml:"timeout" desc:"Dial, read and write timeout, e.g. 200ms (default)."`
	Prefix   string `yaml:"prefix" desc:"Key prefix; default sluice:rl:."`
}

// Limits are body size limits. Sizes are strings: "512", "64KB", "10MB",
// "1GiB" (KB, MB, GB are powers of 1000; KiB, MiB, GiB powers of 1024).
type Limits struct {
	RequestBody  string `yaml:"requestBody" desc:"Largest request body, e.g. 10MB; beyond it 413 (417 with Expect: 100-continue)."`
	ResponseBody string `yaml:"responseBody" desc:"Largest response body, e.g. 50MB; beyond it the response is cut."`
}

// The MCP block: what rules match in MCP requests, and how MCP is handled.
// Globs here are '*' for any run of characters ('/' included) and '?' for
// one character.

// MCPSettings configures MCP handling for the whole policy.
type MCPSettings struct {
	HideDenied    *bool  `yaml:"hideDenied" desc:"Remove from tools/list responses the tools a tools/call of which would be denied (enforce mode only; audit mode never hides). Default true."`
	TokenAudience string `yaml:"tokenAudience" enum:"off|audit|enforce" desc:"Token passthrough: a request carrying a bearer JWT whose aud claim names neither the destination host nor a URL on it is recorded (token_audience), and with enforce denied (403, a JSON-RPC error for MCP requests). The signature is not checked. Default audit."`
	OnToolChange  string `yaml:"onToolChange" enum:"off|audit|enforce" desc:"Rug pulls: a tools/call of a tool whose description or input schema changed since the workload first saw it (or since the last sluice mcp ack) is, with enforce, denied (JSON-RPC error -32031) until acknowledged, and left out of tools/list answers unless hideDenied is false; with audit allowed as would_deny; with off only the change is recorded (kind mcp_tool_changed). Default off."`
}

// MCPMatch selects MCP requests. Lists are ORed within; methods and the
// names (tools, resources, prompts) are ANDed: when any of tools,
// resources and prompts is set, the request must name a tool
// (tools/call), resource (resources/read, subscribe, unsubscribe) or
// prompt (prompts/get) that its list matches.
type MCPMatch struct {
	Methods   []string      `yaml:"methods" desc:"JSON-RPC methods, globs allowed, e.g. tools/call, resources/*."`
	Tools     []string      `yaml:"tools" desc:"Tool names of tools/call, globs allowed, e.g. github_*."`
	Resources []string      `yaml:"resources" desc:"Resource URIs of resources/read, subscribe and unsubscribe, globs allowed, e.g. file:///srv/*."`
	Prompts   []string      `yaml:"prompts" desc:"Prompt names of prompts/get, globs allowed."`
	Arguments []MCPArgMatch `yaml:"arguments" desc:"tools/call arguments (params.arguments): the rule matches a tools/call when any entry matches; requests other than tools/call never match."`
}

// MCPArgMatch matches one value of a tools/call's arguments.
type MCPArgMatch struct {
	Path  string `yaml:"path" desc:"The value: $ then .key, ['key'] or [N] steps, e.g. $.bcc or $.to[0].address (no wildcards or filters)."`
	Regex string `yaml:"regex" desc:"RE2 regular expression the value must match, unanchored (a string as its text, other values as JSON); without it the value need only be present and not null."`
}
