package policy

// This file is the model of what a request carries: content rules,
// header changes, credentials and body logging. Like model.go, the tags
// drive the YAML keys, the strict key check and schema.json.

// Content inspects what a request carries. Each entry of match is checked
// on the parts it names; the strongest action found wins (block, then
// redact, then audit).
type Content struct {
	Match []ContentMatch `yaml:"match" desc:"What to look for and what to do when it is found; every entry applies." required:"true"`
	// MaxDecompressed bounds how much of a gzip, deflate, br or zstd body is
	// inspected once decompressed.
	MaxDecompressed string `yaml:"maxDecompressed" desc:"Largest decompressed size of a gzip, deflate, br or zstd body that is inspected, e.g. 10MB (default); past it onUninspectable applies."`
	OnUninspectable string `yaml:"onUninspectable" enum:"block|allow" desc:"What happens to a body that cannot be inspected (another encoding, e.g. compress, or past maxDecompressed): block (default, 400) or allow it uninspected."`
}

// ContentMatch is one content rule: detectors and patterns, where to look,
// and the action.
type ContentMatch struct {
	Detectors []string  `yaml:"detectors" desc:"Built-in detectors by name (see policy/README.md), or all."`
	Patterns  []Pattern `yaml:"patterns" desc:"Regular expressions (RE2 syntax) with a name for records and answers."`
	In        []string  `yaml:"in" desc:"Where to look: headers, url (path and query), body; default all three."`
	Action    string    `yaml:"action" enum:"block|redact|audit" desc:"block: 400 naming the rule and detector; redact: replace the match with a marker of the same length and forward; audit: forward and record the detector." required:"true"`
}

// Pattern is a named regular expression.
type Pattern struct {
	Name  string `yaml:"name" desc:"Name of the pattern in records and answers, e.g. internal-id." required:"true"`
	Regex string `yaml:"regex" desc:"RE2 regular expression; a match is at most 8KiB long in a body." required:"true"`
}

// Headers are header changes for the requests a rule matches and for
// their responses.
type Headers struct {
	Request  HeaderOps `yaml:"request" desc:"Changes to the request before it is forwarded; set and add values may hold ${cred:NAME}."`
	Response HeaderOps `yaml:"response" desc:"Changes to the response before the client sees it."`
}

// HeaderOps are the changes to one header block, applied in the order
// remove, set, add.
type HeaderOps struct {
	Remove []string          `yaml:"remove" desc:"Header names to remove."`
	Set    map[string]string `yaml:"set" desc:"Headers to set, replacing any value the client sent."`
	Add    map[string]string `yaml:"add" desc:"Headers to add beside any value already there."`
}

// Credential is a secret Sluice holds for the workload. The workload
// either never sees it (a rule injects it with ${cred:NAME} in
// headers.request) or holds the placeholder sluice:cred:NAME, which Sluice
// replaces with the secret on the way to the credential's hosts only.
type Credential struct {
	Name  string   `yaml:"name" desc:"Credential name: the NAME of ${cred:NAME} and of the placeholder sluice:cred:NAME." required:"true"`
	File  string   `yaml:"file" desc:"File holding the secret (e.g. a mounted Kubernetes Secret); read at each use, a trailing newline removed."`
	Env   string   `yaml:"env" desc:"Environment variable of the agent holding the secret (sluice run removes it from the command's environment)."`
	Hosts []string `yaml:"hosts" desc:"Hosts the secret may be sent to (exact or *.wildcard); a placeholder going anywhere else is denied (403) and recorded." required:"true"`
	Body  bool     `yaml:"body" desc:"Also replace the placeholder in request bodies to these hosts; such bodies are forwarded without Content-Length."`
}

// LogBodies says how much of each body goes into the audit record.
type LogBodies struct {
	Request  string `yaml:"request" desc:"Bytes of the request body to record, e.g. 4KB."`
	Response string `yaml:"response" desc:"Bytes of the response body to record, e.g. 4KB."`
}
