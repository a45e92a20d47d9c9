// Package mitm is the intercepting proxy: it takes an accepted client
// connection whose original destination and workload are known, peeks at the
// first bytes (TLS ClientHello, plain HTTP, or other TCP), asks the policy
// what to do, and decrypts, passes through, relays or rejects. Decrypted and
// plain HTTP runs through the request pipeline and is forwarded, streaming,
// over HTTP/1.1 or HTTP/2 to the real destination. It also serves the
// explicit proxy listener (CONNECT and absolute-form requests), which feeds
// the same path.
package mitm

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// Destination is where the client meant to go.
type Destination struct {
	// Host is the name the client asked for when known (CONNECT target,
	// absolute-form URL); empty in transparent mode, where the SNI or the
	// Host header names it.
	Host string
	// Addr is the original destination address in transparent mode; in
	// explicit mode it is unset until the proxy resolves Host.
	Addr netip.AddrPort
	// Port is the destination port (Addr.Port() when Addr is set).
	Port uint16
}

// Deps are the collaborators of a Proxy; all are required but Log.
type Deps struct {
	CA     *ca.Authority
	Policy *policy.Current
	Audit  audit.Sink
	Log    *slog.Logger
	// Dialer dials upstreams; its Control sets the agent's SO_MARK so the
	// hooks never redirect the proxy's own connections. Nil: net.Dialer{}.
	Dialer *net.Dialer
}

// Proxy is safe for concurrent use.
type Proxy struct {
	cfg  config.Proxy
	deps Deps
}

// Handle serves one client connection until it is done and closes it.
// Handle owns conn. It returns when ctx is cancelled or the exchange ends.
func (p *Proxy) Handle(ctx context.Context, conn net.Conn, dst Destination, id workload.Identity) {
	_ = ctx
	_ = dst
	_ = id
	conn.Close()
}
