package config

import (
	"fmt"
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
	// IdleTimeout closes idle client and upstream connections.
	IdleTimeout Duration `yaml:"idleTimeout"`
}

// DefaultProxy returns the proxy defaults.
func DefaultProxy() Proxy {
	return Proxy{
		MaxHeaderBytes:        64 << 10,
		DialTimeout:           Duration(10 * time.Second),
		ResponseHeaderTimeout: Duration(60 * time.Second),
		IdleTimeout:           Duration(90 * time.Second),
	}
}

func (p Proxy) validate() []error {
	var errs []error
	if p.MaxHeaderBytes < 1024 {
		errs = append(errs, fmt.Errorf("proxy.maxHeaderBytes %d: must be at least 1024, e.g. 65536", p.MaxHeaderBytes))
	}
	return errs
}
