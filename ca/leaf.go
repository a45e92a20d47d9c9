package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// idnaProfile maps a name the way a browser looks it up (UTS #46 non-
// transitional), but tolerates the underscores and "--" runs seen in real
// hostnames (e.g. "r3---sn-x.googlevideo.com"); normalizeName then
// checks the ASCII result itself.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
	idna.VerifyDNSLength(true),
)

// NormalizeName returns the cache key and certificate subject for name:
// an IP literal in its canonical form (zone and IPv4-in-IPv6 mapping
// removed), or a DNS name in lower-case ASCII (IDNA), without a trailing
// dot. It fails for an empty or malformed name, and for wildcards.
func NormalizeName(name string) (string, error) {
	n, _, err := normalizeName(name)
	return n, err
}

// normalizeName is NormalizeName that also returns the address of an IP
// literal.
func normalizeName(name string) (string, netip.Addr, error) {
	s := strings.TrimSpace(name)
	if s == "" {
		return "", netip.Addr{}, errors.New("empty name: need a DNS name (SNI) or an IP address")
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		ip = ip.WithZone("").Unmap()
		return ip.String(), ip, nil
	}
	if !utf8.ValidString(s) {
		return "", netip.Addr{}, fmt.Errorf("name %q: not valid UTF-8", name)
	}
	s = strings.TrimSuffix(s, ".")
	ascii := s
	if !plainHostname(s) { // the common case skips the IDNA mapping
		a, err := idnaProfile.ToASCII(s)
		if err != nil {
			return "", netip.Addr{}, fmt.Errorf("name %q: %w", name, err)
		}
		ascii = strings.ToLower(a)
	}
	if len(ascii) > 253 {
		return "", netip.Addr{}, fmt.Errorf("name %q: longer than 253 bytes", name)
	}
	for _, label := range strings.Split(ascii, ".") {
		if label == "" || len(label) > 63 {
			return "", netip.Addr{}, fmt.Errorf("name %q: empty label or label longer than 63 bytes", name)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", netip.Addr{}, fmt.Errorf("name %q: character %q not allowed in a hostname", name, c)
			}
		}
	}
	return ascii, netip.Addr{}, nil
}

// plainHostname reports whether s is already lower-case ASCII made of
// letters, digits, '-', '_' and '.' with no label starting "xn--" (which
// IDNA must validate).
func plainHostname(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return !strings.HasPrefix(s, "xn--") && !strings.Contains(s, ".xn--")
}

// Leaf returns a leaf certificate for name: a DNS name (SAN DNS, IDNA) or
// an IP address literal (SAN IP). Cached; one issuance per name in flight.
// The returned certificate's chain is [leaf, CA] and its Leaf field is
// set; it is shared, so the caller must not modify it. A cached leaf with
// less than a third of its lifetime left is replaced. If ctx ends while
// waiting for an issuance, Leaf returns ctx.Err() (the issuance goes on
// and is cached).
func (a *Authority) Leaf(ctx context.Context, name string) (*tls.Certificate, error) {
	key, ip, err := normalizeName(name)
	if err != nil {
		return nil, fmt.Errorf("mint leaf: %w", err)
	}
	now := a.opts.Now()
	if c, ok := a.cache.Get(key); ok && fresh(c.Leaf, now) {
		a.hits.Add(1)
		return c, nil
	}
	a.misses.Add(1)
	ch := a.flight.DoChan(key, func() (any, error) {
		// A flight that ended just before this one started may have
		// cached a fresh leaf already.
		now := a.opts.Now()
		if c, ok := a.cache.Peek(key); ok && fresh(c.Leaf, now) {
			return c, nil
		}
		c, err := a.issue(key, ip, now)
		if err != nil {
			return nil, err
		}
		a.issued.Add(1)
		a.cache.Add(key, c)
		return c, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, fmt.Errorf("mint leaf for %s: %w", key, r.Err)
		}
		return r.Val.(*tls.Certificate), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// GetCertificate serves tls.Config.GetCertificate: the leaf for the SNI,
// or, for a client that sent none, for the local IP address the client
// connected to (in transparent mode, the original destination).
func (a *Authority) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := hello.ServerName
	if name == "" && hello.Conn != nil {
		if ta, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
			name = ta.AddrPort().Addr().String()
		}
	}
	ctx := hello.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return a.Leaf(ctx, name)
}

// fresh reports whether leaf has more than a third of its lifetime left.
func fresh(leaf *x509.Certificate, now time.Time) bool {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Sub(now) > life/3
}

// issue mints a leaf for a normalized name. ip is valid for IP literals.
func (a *Authority) issue(name string, ip netip.Addr, now time.Time) (*tls.Certificate, error) {
	if !now.Before(a.cert.NotAfter) {
		return nil, fmt.Errorf("ca expired at %s: create a new one (sluice ca init) and redistribute its bundle", a.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-Backdate)
	if notBefore.Before(a.cert.NotBefore) {
		notBefore = a.cert.NotBefore
	}
	notAfter := now.Add(a.opts.LeafLifetime)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		AuthorityKeyId:        a.cert.SubjectKeyId,
	}
	if ski, err := subjectKeyID(key.Public()); err == nil {
		tmpl.SubjectKeyId = ski
	}
	if ip.IsValid() {
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, fmt.Errorf("sign leaf: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse leaf: %w", err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, a.der},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}
