// Package ca is Sluice's certificate authority: it creates, loads and
// persists the CA that workloads trust, exports its bundle, and mints and
// caches the leaf certificates the proxy presents to clients.
package ca

import (
	"crypto/tls"
)

// Authority is a loaded CA with its leaf cache. Safe for concurrent use.
type Authority struct{}

// GetCertificate returns a leaf for hello's SNI (or IP); for tls.Config.
func (a *Authority) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, nil
}
