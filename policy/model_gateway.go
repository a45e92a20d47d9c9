package policy

// This file is the API gateway's part of the policy model: the response
// cache of a rule. Validation is in validate_gateway.go.

// Cache configures a rule's response cache. What may be stored and for
// how long follows RFC 9111 (see the cache package); these keys narrow it.
type Cache struct {
	TTL           string   `yaml:"ttl" desc:"Freshness of a response that states none (no max-age, s-maxage or Expires), e.g. 5m; default: 10% of its Last-Modified age, else it is not stored."`
	Statuses      []int    `yaml:"statuses" desc:"Statuses that may be stored; default 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501."`
	ContentTypes  []string `yaml:"contentTypes" desc:"Media types that may be stored, e.g. application/json, or ranges like text/*; default: any."`
	MaxObjectSize string   `yaml:"maxObjectSize" desc:"Largest body stored, e.g. 1MB (default); a larger response is streamed through and not stored."`
	Shared        bool     `yaml:"shared" desc:"One cache for every workload instead of one per workload. A shared cache never stores a private response, one with Set-Cookie, or one to a request with Authorization or Cookie unless the response says public."`
}

// Upstream is a group of targets serving one or more destinations: a
// request to one of Hosts is sent to a healthy target instead of the
// address it was bound for.
type Upstream struct {
	Name        string           `yaml:"name" desc:"Unique group name; it appears in records and the sluice_upstream_healthy metric." required:"true"`
	Hosts       []string         `yaml:"hosts" desc:"Destinations the group serves: host (any port) or host:port, e.g. api.internal or api.internal:8080." required:"true"`
	Targets     []UpstreamTarget `yaml:"targets" desc:"Where requests go instead; each target's address still passes the SSRF guard." required:"true"`
	Balance     string           `yaml:"balance" enum:"round-robin|least-requests" desc:"How a target is chosen: round-robin by weight (default), or the fewest requests in flight per weight."`
	HealthCheck *HealthCheck     `yaml:"healthCheck" desc:"Active health check of every target; without it targets count as healthy unless passive ejection takes them out."`
	Passive     *PassiveCheck    `yaml:"passive" desc:"Ejection after failed requests (connect failures and 5xx answers)."`
	Retries     *UpstreamRetries `yaml:"retries" desc:"Retries of idempotent requests (GET, HEAD, OPTIONS without a body) on another target after a connect failure or a 5xx."`
}

// UpstreamTarget is one target of a group.
type UpstreamTarget struct {
	Address string `yaml:"address" desc:"ip:port or host:port of the target." required:"true"`
	Weight  int    `yaml:"weight" desc:"Share of requests relative to the other targets; default 1."`
}

// HealthCheck is a group's active health check.
type HealthCheck struct {
	HTTP      string `yaml:"http" desc:"Path to GET over plain HTTP (the group's first host as Host); a status under 400 passes. Give http or tcp."`
	TCP       bool   `yaml:"tcp" desc:"Only connect over TCP."`
	Interval  string `yaml:"interval" desc:"Time between probes of a target, e.g. 5s (default 10s)."`
	Timeout   string `yaml:"timeout" desc:"Time a probe may take, e.g. 2s (default: the interval, at most 5s)."`
	Healthy   int    `yaml:"healthy" desc:"Passed probes in a row that make an unhealthy target healthy; default 2."`
	Unhealthy int    `yaml:"unhealthy" desc:"Failed probes in a row that make a target unhealthy; default 2."`
}

// PassiveCheck ejects a target after failed requests.
type PassiveCheck struct {
	ConsecutiveFailures int    `yaml:"consecutiveFailures" desc:"Failed requests in a row (connect failure or 5xx) that eject a target; default 5."`
	EjectFor            string `yaml:"ejectFor" desc:"How long the first ejection lasts, e.g. 30s (default); each ejection after another without a success between doubles it, up to 16 times."`
}

// UpstreamRetries bounds retries.
type UpstreamRetries struct {
	Attempts int `yaml:"attempts" desc:"Retries of one request, each on a target it has not tried; default 1."`
	Budget   int `yaml:"budget" desc:"Retries as a percentage of the group's requests over 10s (at least 3 are always allowed); default 20."`
}
