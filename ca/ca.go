// Package ca is Sluice's certificate authority: it creates, loads and
// persists the CA that workloads trust, exports its bundle, and mints and
// caches the leaf certificates the proxy presents to clients.
//
// The CA lives in a directory holding ca.crt (PEM certificate) and ca.key
// (PEM, PKCS#8, mode 0600). Leaf certificates are never written to disk:
// each has its own ECDSA P-256 key (never the CA's), a random 128-bit
// serial, is backdated an hour for clock skew, lives a few days, and is
// kept in a bounded LRU keyed by the normalized name, with one issuance
// per name in flight.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// Key types of a CA.
const (
	KeyECDSA = "ecdsa" // ECDSA P-256 (default)
	KeyRSA   = "rsa"   // RSA 2048
)

// Defaults used when an Options field is zero.
const (
	DefaultLeafCacheSize = 10000
	DefaultLeafLifetime  = 7 * 24 * time.Hour
	// CALifetime is the validity of a new CA, counted from its creation.
	CALifetime = 10 * 365 * 24 * time.Hour
	// Backdate is how far NotBefore is set in the past, for clock skew.
	Backdate = time.Hour
)

// File names inside the CA directory.
const (
	CertFile = "ca.crt"
	KeyFile  = "ca.key"
)

// Options tune a CA. The zero value is valid: ECDSA, 10,000 cached leaves,
// 7-day leaves, the wall clock.
type Options struct {
	// KeyType of a newly created CA: KeyECDSA ("" means this) or KeyRSA.
	// Ignored by Load, which uses whatever key the directory holds.
	KeyType string
	// LeafCacheSize bounds the number of cached leaf certificates.
	LeafCacheSize int
	// LeafLifetime is how long a leaf is valid after issuance (plus the
	// one-hour backdating); it never extends beyond the CA's NotAfter.
	LeafLifetime time.Duration
	// Now is the clock; nil means time.Now. Tests inject their own.
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	var errs []error
	switch o.KeyType {
	case "":
		o.KeyType = KeyECDSA
	case KeyECDSA, KeyRSA:
	default:
		errs = append(errs, fmt.Errorf("key type %q: must be %q or %q", o.KeyType, KeyECDSA, KeyRSA))
	}
	switch {
	case o.LeafCacheSize == 0:
		o.LeafCacheSize = DefaultLeafCacheSize
	case o.LeafCacheSize < 0:
		errs = append(errs, fmt.Errorf("leaf cache size %d: must be at least 1, e.g. %d", o.LeafCacheSize, DefaultLeafCacheSize))
	}
	switch {
	case o.LeafLifetime == 0:
		o.LeafLifetime = DefaultLeafLifetime
	case o.LeafLifetime < 0:
		errs = append(errs, fmt.Errorf("leaf lifetime %s: must be positive, e.g. 168h", o.LeafLifetime))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, errors.Join(errs...)
}

// LeafStats describes the leaf cache, for metrics.
type LeafStats struct {
	Size   int    // leaves currently cached
	Hits   uint64 // Leaf calls served from the cache
	Misses uint64 // Leaf calls that found no fresh leaf (and issued or waited for one)
	Issued uint64 // leaves minted
}

// Authority is a loaded CA with its leaf cache. Safe for concurrent use.
type Authority struct {
	cert   *x509.Certificate
	der    []byte
	key    crypto.Signer
	bundle []byte
	opts   Options

	cache  *lru.Cache[string, *tls.Certificate]
	flight singleflight.Group

	hits, misses, issued atomic.Uint64
}

// New creates a CA in memory only, never written anywhere. It is meant
// for tests and throw-away proxies; use Init or LoadOrInit to persist one.
func New(o Options) (*Authority, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	certDER, key, err := create(o)
	if err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	return newAuthority(certDER, key, o)
}

func newAuthority(certDER []byte, key crypto.Signer, o Options) (*Authority, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("ca certificate: basic constraints do not say CA")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("ca certificate: key usage lacks certSign")
	}
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("ca key: does not match the certificate's public key")
	}
	cache, err := lru.New[string, *tls.Certificate](o.LeafCacheSize)
	if err != nil {
		return nil, fmt.Errorf("create leaf cache: %w", err)
	}
	return &Authority{
		cert:   cert,
		der:    certDER,
		key:    key,
		bundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}),
		opts:   o,
		cache:  cache,
	}, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// Certificate returns the CA certificate. The caller must not modify it.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// BundlePEM returns the PEM-encoded CA certificate: what workloads trust.
// The caller may keep it but must not modify it.
func (a *Authority) BundlePEM() []byte { return a.bundle }

// Fingerprint is the SHA-256 of the CA certificate's DER, as colon-separated
// upper-case hex pairs (the form openssl x509 -fingerprint prints).
func (a *Authority) Fingerprint() string { return Fingerprint(a.der) }

// Fingerprint formats the SHA-256 of der as colon-separated hex pairs.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// KeyType describes the CA key: "ECDSA P-256", "RSA 2048", ….
func (a *Authority) KeyType() string { return DescribeKey(a.cert.PublicKey) }

// DescribeKey names a public key's algorithm and size.
func DescribeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	default:
		return fmt.Sprintf("%T", pub)
	}
}

// Stats reports the leaf cache counters.
func (a *Authority) Stats() LeafStats {
	return LeafStats{
		Size:   a.cache.Len(),
		Hits:   a.hits.Load(),
		Misses: a.misses.Load(),
		Issued: a.issued.Load(),
	}
}

// create makes a self-signed CA certificate and its key.
func create(o Options) ([]byte, crypto.Signer, error) {
	var key crypto.Signer
	var err error
	switch o.KeyType {
	case KeyRSA:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("generate %s key: %w", o.KeyType, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, nil, fmt.Errorf("read random: %w", err)
	}
	cn := "Sluice CA " + hex.EncodeToString(suffix)
	if h, err := os.Hostname(); err == nil && h != "" {
		cn = "Sluice CA " + h + " " + hex.EncodeToString(suffix)
	}
	if len(cn) > 64 { // the X.520 upper bound for a common name
		cn = cn[:64]
	}
	now := o.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Sluice"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(CALifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // signs leaves only
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign ca certificate: %w", err)
	}
	return der, key, nil
}

// randomSerial returns a random positive serial of up to 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for range 8 {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial: %w", err)
		}
		if n.BitLen() >= 64 { // never a suspiciously short serial
			return n, nil
		}
	}
	return nil, errors.New("generate serial: random source keeps returning small numbers")
}

// subjectKeyID is RFC 7093 method 1: the leftmost 160 bits of the SHA-256
// of the subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	sum := sha256.Sum256(info.PublicKey.Bytes)
	return sum[:20], nil
}
