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
