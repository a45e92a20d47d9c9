// Package ca is Sluice's certificate authority: it creates, loads and
// persists the CA that workloads trust, exports its bundle, and mints and
// caches the leaf certificates the proxy presents to clients.
package ca

import (
	"context"
	"crypto/tls"
	"errors"
)

// Authority is a loaded CA with its leaf cache. Safe for concurrent use.
type Authority struct{}

// Leaf returns a leaf certificate for name: a DNS name (SAN DNS, IDNA) or
// an IP address literal (SAN IP). Cached; one issuance per name in flight.
func (a *Authority) Leaf(ctx context.Context, name string) (*tls.Certificate, error) {
	return nil, errors.New("mint leaf: not implemented yet")
}
