package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Upstream is a real HTTPS server (HTTP/2 and HTTP/1.1) in a test host's
// namespace, with a certificate from its own test CA.
type Upstream struct {
	Servers []*httptest.Server
	// CAFile is the PEM of the upstream's CA: Sluice trusts it through
	// proxy.upstreamCA; clients never see it (they see Sluice's leaves).
	CAFile string
}

// StartUpstream serves h over TLS on each of addrs inside ns, with one
// certificate for names and for the addresses' IPs.
func StartUpstream(t testing.TB, ns *NS, addrs []netip.AddrPort, h http.Handler, names ...string) *Upstream {
	t.Helper()
	var ips []netip.Addr
	for _, a := range addrs {
		ips = append(ips, a.Addr())
	}
	caPEM, cert := testPKI(t, names, ips)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	u := &Upstream{CAFile: caFile}
	for _, addr := range addrs {
		srv := httptest.NewUnstartedServer(h)
		srv.Listener.Close()
		srv.Listener = ns.Listen(t, addr)
		srv.EnableHTTP2 = true
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		u.Servers = append(u.Servers, srv)
	}
	return u
}

// testPKI makes a throwaway CA and a server certificate signed by it.
func testPKI(t testing.TB, names []string, ips []netip.Addr) (caPEM []byte, leaf tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Sluice e2e upstream CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "e2e upstream"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		DNSNames:     names,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
