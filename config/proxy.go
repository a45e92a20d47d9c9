package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Proxy configures the intercepting proxy (mitm/).
type Proxy struct {
	// Listen is the explicit HTTP proxy listener (CONNECT and absolute-form),
	// e.g. "127.0.0.1:3128". Empty disables it in the agent.
	Listen string `yaml:"listen"`
	// UpstreamCA is an extra PEM bundle trusted for upstream TLS, on top of
	// the system roots.
	UpstreamCA string `yaml:"upstreamCA"`
	// MaxHeaderBytes bounds a request's header block (431 beyond it).
	MaxHeaderBytes int `yaml:"maxHeaderBytes"`
	// DialTimeout bounds connecting to an upstream (502 beyond it).
	DialTimeout Duration `yaml:"dialTimeout"`
	// ResponseHeaderTimeout bounds waiting for an upstream's response
	// headers (504 beyond it).
	ResponseHeaderTimeout Duration `yaml:"responseHeaderTimeout"`
	// IdleTimeout closes idle client and upstream connections, and
	// relayed (L4) flows with no traffic either way for this long.
	IdleTimeout Duration `yaml:"idleTimeout"`
	// HandshakeTimeout bounds reading a ClientHello once its first byte has
	// arrived, each TLS handshake (client side and upstream side), and
	// reading a request's header block.
	HandshakeTimeout Duration `yaml:"handshakeTimeout"`
	// PeekTimeout is how long the proxy waits for a client's first byte
	// before it treats the flow as a server-speaks-first protocol and
	// relays it as TCP (inside decrypted TLS without an HTTP ALPN: before
	// it lets whichever side speaks first decide).
	PeekTimeout Duration `yaml:"peekTimeout"`
	// MaxUpstreamPools bounds the upstream connection pools, one per
	// (host, dialed address, ALPN); the least recently used is closed
	// beyond it.
	MaxUpstreamPools int `yaml:"maxUpstreamPools"`
	// MaxIdleConnsPerUpstream bounds idle HTTP/1.1 connections kept per
	// pool. 0 (the default): as many as the requests in flight to it
	// needed, up to MaxConnections (the pool grows with demand, bounded
	// like the client connections by the open-file limit; idle ones close
	// after IdleTimeout). A fixed cap below the client concurrency makes
	// every request beyond it pay a new upstream handshake.
	MaxIdleConnsPerUpstream int `yaml:"maxIdleConnsPerUpstream"`
	// MaxConnections bounds client connections served at once (explicit
	// and transparent together, a CONNECT tunnel counting as its
	// connection); beyond it new ones are refused with an audit record.
	MaxConnections int `yaml:"maxConnections"`
	// MaxConnectionsPerWorkload bounds the client connections of one
	// workload (its cgroup, container or pod; the client address in
	// explicit mode) at once, so one can't starve the others.
	MaxConnectionsPerWorkload int `yaml:"maxConnectionsPerWorkload"`
	// MCPMaxMessageBytes bounds the prefix of a JSON POST body the MCP
	// stage reads (and replays) to judge a JSON-RPC message before it is
	// forwarded; a longer MCP body is unparsed (audit.ReasonMCPUnparsed).
	MCPMaxMessageBytes int64 `yaml:"mcpMaxMessageBytes"`
	// MCPStateFile keeps the MCP tools seen per server and workload
	// (their hashes at first sight, changes, acknowledgements by sluice
	// mcp ack) across restarts, e.g. /var/lib/sluice/mcp-state.json.
	// Empty: kept in memory, every tool first seen again after a restart.
	MCPStateFile string `yaml:"mcpStateFile"`
	// CacheMaxBytes bounds the memory of the response cache (policy
	// rules' cache blocks), every rule and workload together; the least
	// recently used responses go first, e.g. "64MB".
	CacheMaxBytes Size `yaml:"cacheMaxBytes"`
	// Clients says who may use the explicit proxy (Listen, sluice proxy).
	Clients Clients `yaml:"clients"`
}

// Clients restricts the explicit proxy's clients. The zero value lets
// everyone who reaches the listener in, each named by its address.
type Clients struct {
	// AllowCIDRs are the client source ranges allowed, e.g. "10.0.0.0/8";
	// empty: every address. Others get 403.
	AllowCIDRs []string `yaml:"allowCIDRs"`
	// UsersFile holds "name:secret" lines (see mitm's clients.go: the
	// secret is a password, "sha256:" and its hex digest, or a bcrypt
	// hash); when set, every request and CONNECT needs Proxy-Authorization
	// Basic credentials of one of them (407 without) and the connection's
	// workload is that user. Read at start.
	UsersFile string `yaml:"usersFile"`
}

// DefaultProxy returns the proxy defaults.
func DefaultProxy() Proxy {
	return Proxy{
		MaxHeaderBytes:          64 << 10,
		DialTimeout:             Duration(10 * time.Second),
		ResponseHeaderTimeout:   Duration(60 * time.Second),
		IdleTimeout:             Duration(90 * time.Second),
		HandshakeTimeout:        Duration(10 * time.Second),
		PeekTimeout:             Duration(2 * time.Second),
		MaxUpstreamPools:        1024,
		MaxIdleConnsPerUpstream: 0,
		MaxConnections:          8192, // 17,408 open files with the reserve: within a 20,000 limit
		// A fifth of the node's connections for any one workload.
		MaxConnectionsPerWorkload: 2000,
		MCPMaxMessageBytes:        1 << 20,
		CacheMaxBytes:             64 << 20,
	}
}

func (p Proxy) validate() []error {
	var errs []error
	if p.MaxHeaderBytes < 1024 {
		errs = append(errs, fmt.Errorf("proxy.maxHeaderBytes %d: must be at least 1024, e.g. 65536", p.MaxHeaderBytes))
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"dialTimeout", p.DialTimeout},
		{"responseHeaderTimeout", p.ResponseHeaderTimeout},
		{"idleTimeout", p.IdleTimeout},
		{"handshakeTimeout", p.HandshakeTimeout},
		{"peekTimeout", p.PeekTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("proxy.%s %q: must be positive, e.g. \"10s\"", d.key, d.v.D()))
		}
	}
	if p.MaxUpstreamPools < 1 {
		errs = append(errs, fmt.Errorf("proxy.maxUpstreamPools %d: must be at least 1, e.g. 1024", p.MaxUpstreamPools))
	}
	if p.MaxIdleConnsPerUpstream < 0 {
		errs = append(errs, fmt.Errorf("proxy.maxIdleConnsPerUpstream %d: must be 0 (grow with demand) or more, e.g. 0", p.MaxIdleConnsPerUpstream))
	}
	if p.MaxConnections < 1 {
		errs = append(errs, fmt.Errorf("proxy.maxConnections %d: must be at least 1, e.g. 8192", p.MaxConnections))
	}
	if p.MaxConnectionsPerWorkload < 1 || p.MaxConnectionsPerWorkload > p.MaxConnections {
		errs = append(errs, fmt.Errorf("proxy.maxConnectionsPerWorkload %d: must be between 1 and proxy.maxConnections (%d), e.g. 2000", p.MaxConnectionsPerWorkload, p.MaxConnections))
	}
	if p.MCPMaxMessageBytes < 1024 {
		errs = append(errs, fmt.Errorf("proxy.mcpMaxMessageBytes %d: must be at least 1024, e.g. 1048576", p.MCPMaxMessageBytes))
	}
	if p.CacheMaxBytes < 1<<10 {
		errs = append(errs, fmt.Errorf("proxy.cacheMaxBytes %d: must be at least 1KiB, e.g. \"64MB\"", p.CacheMaxBytes))
	}
	for i, c := range p.Clients.AllowCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			errs = append(errs, fmt.Errorf("proxy.clients.allowCIDRs[%d] %q: not a CIDR range, write it as e.g. \"10.0.0.0/8\" or \"127.0.0.1/32\"", i, c))
		}
	}
	return errs
}
