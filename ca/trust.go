package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"software.sslmate.com/src/go-pkcs12"
)

// Trust-store formats of `sluice ca export --format`.
const (
	// FormatPEM is PEM certificates, one after the other: OpenSSL, Go,
	// curl, Python, Node.js, the AWS SDKs.
	FormatPEM = "pem"
	// FormatP12 is a PKCS#12 trust store (Java's trustedCertEntry bags)
	// encrypted with modern algorithms (PBES2, AES-256-CBC,
	// PBKDF2-HMAC-SHA-256, HMAC-SHA-256 MAC): Java 12+, OpenSSL 1.1.1+.
	FormatP12 = "p12"
	// FormatJKS is the same PKCS#12 trust store encoded with the legacy
	// algorithms (3DES, HMAC-SHA-1) every Java 8+ reads, with
	// -storetype PKCS12 or, through the JKS keystore's PKCS#12
	// compatibility mode (keystore.type.compat, on by default since 8u60),
	// as -storetype JKS. It is not the proprietary JKS encoding.
	FormatJKS = "jks"
)

// Formats lists the trust-store formats, for flag help and errors.
var Formats = []string{FormatPEM, FormatP12, FormatJKS}

// TrustStorePassword is the password of the PKCS#12 trust stores Sluice
// writes unless told otherwise: Java's conventional "changeit". A trust
// store holds only public certificates, so the password protects nothing
// secret; it exists because Java insists on checking the store's MAC.
const TrustStorePassword = pkcs12.DefaultPassword

// SystemBundles are where distributions keep the system roots as one PEM
// file: Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine/macOS-like.
var SystemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/ssl/cert.pem",
}

// SystemRootsPEM returns the system roots as PEM and the file they came
// from: the file SSL_CERT_FILE names when it holds certificates, else the
// first of SystemBundles that does. It returns an error naming every
// place it looked when none does.
func SystemRootsPEM() (roots []byte, path string, err error) {
	cands := SystemBundles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		cands = append([]string{f}, cands...)
	}
	for _, f := range cands {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("BEGIN CERTIFICATE")) {
			return b, f, nil
		}
	}
	return nil, "", fmt.Errorf("read system roots: no PEM bundle in %s (install ca-certificates, or set SSL_CERT_FILE)", strings.Join(cands, ", "))
}

// ParsePEMCertificates returns every CERTIFICATE block of b that parses,
// and how many did not (some distributions ship roots Go refuses, such as
// ones with negative serials): a trust store is still useful without them.
func ParsePEMCertificates(b []byte) (certs []*x509.Certificate, skipped int) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return certs, skipped
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			skipped++
			continue
		}
		certs = append(certs, c)
	}
}

// TrustStoreAlias is the alias (friendly name) of the Sluice CA in the
// trust stores EncodeTrustStore writes; system roots are "system-NNN".
const TrustStoreAlias = "sluice-ca"

// EncodeTrustStore encodes caCert, then roots, as a trust store in format
// (FormatPEM, FormatP12 or FormatJKS). password applies to the PKCS#12
// formats only; empty means TrustStorePassword. Roots equal to caCert are
// left out, so the CA appears once.
func EncodeTrustStore(format string, caCert *x509.Certificate, roots []*x509.Certificate, password string) ([]byte, error) {
	if caCert == nil {
		return nil, errors.New("encode trust store: no CA certificate")
	}
	if password == "" {
		password = TrustStorePassword
	}
	entries := []pkcs12.TrustStoreEntry{{Cert: caCert, FriendlyName: TrustStoreAlias}}
	for _, r := range roots {
		if r.Equal(caCert) {
			continue
		}
		entries = append(entries, pkcs12.TrustStoreEntry{Cert: r, FriendlyName: fmt.Sprintf("system-%03d", len(entries))})
	}
	var enc *pkcs12.Encoder
	switch format {
	case FormatPEM:
		var buf bytes.Buffer
		for _, e := range entries {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: e.Cert.Raw})
		}
		return buf.Bytes(), nil
	case FormatP12:
		enc = pkcs12.Modern2023
	case FormatJKS:
		enc = pkcs12.LegacyDES
	default:
		return nil, fmt.Errorf("encode trust store: format %q: use one of %s", format, strings.Join(Formats, ", "))
	}
	b, err := enc.EncodeTrustStoreEntries(entries, password)
	if err != nil {
		return nil, fmt.Errorf("encode %s trust store: %w", format, err)
	}
	return b, nil
}

// TrustEnv are the variables that point TLS clients at a PEM CA bundle:
// Go, OpenSSL and curl, Python requests, Node.js, git, and the AWS CLI
// and SDKs. `sluice run` sets them all for its command and `sluice
// webhook` for every container of a pod, with JAVA_TOOL_OPTIONS for Java
// (JavaToolOptions); neither sets a proxy variable.
var TrustEnv = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE"}

// JavaToolOptionsEnv is the variable every JVM reads its extra options
// from.
const JavaToolOptionsEnv = "JAVA_TOOL_OPTIONS"

// JavaToolOptions returns JAVA_TOOL_OPTIONS pointing the JVM at the
// PKCS#12 trust store at path (password: its password), after the options
// the user had (old): for a -D given twice the JVM keeps the last, so
// ours win and the user's other options stay. path must hold no
// whitespace or quotes (the JVM splits the variable on whitespace).
func JavaToolOptions(old, path, password string) string {
	opts := "-Djavax.net.ssl.trustStore=" + path +
		" -Djavax.net.ssl.trustStoreType=PKCS12" +
		" -Djavax.net.ssl.trustStorePassword=" + password
	if old = strings.TrimSpace(old); old != "" {
		return old + " " + opts
	}
	return opts
}
