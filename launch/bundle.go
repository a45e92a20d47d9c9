package launch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sluicehq/sluice/ca"
)

// Trust is where the command's TLS clients find the roots they trust:
// the system roots plus the Sluice CA, in the forms clients read.
type Trust struct {
	// Bundle is a PEM file; the TrustEnv variables point at it.
	Bundle string
	// JavaTrustStore is a PKCS#12 trust store of the same certificates,
	// protected by JavaTrustStorePassword; JAVA_TOOL_OPTIONS points the
	// JVM at it. Empty: JAVA_TOOL_OPTIONS is left as it is.
	JavaTrustStore         string
	JavaTrustStorePassword string
}

// BundlePEM returns the system roots (ca.SystemRootsPEM: SSL_CERT_FILE,
// else the distribution's bundle; none if there is none) followed by
// caPEM: clients told to trust only this bundle then trust both the real
// CAs (for hosts Sluice passes through) and Sluice's CA.
func BundlePEM(caPEM []byte) []byte {
	roots, _, _ := ca.SystemRootsPEM()
	var buf bytes.Buffer
	buf.Write(roots)
	if len(roots) > 0 && roots[len(roots)-1] != '\n' {
		buf.WriteByte('\n')
	}
	buf.WriteString("# Sluice CA\n")
	buf.Write(caPEM)
	return buf.Bytes()
}

// JavaTrustStore returns the Java trust store of the same certificates:
// the Sluice CA, then the system roots, in the legacy PKCS#12 encoding
// every Java 8+ reads, password ca.TrustStorePassword.
func JavaTrustStore(caPEM []byte) ([]byte, error) {
	cas, _ := ca.ParsePEMCertificates(caPEM)
	if len(cas) == 0 {
		return nil, fmt.Errorf("write Java trust store: the Sluice CA PEM holds no certificate")
	}
	rootsPEM, _, _ := ca.SystemRootsPEM()
	roots, _ := ca.ParsePEMCertificates(rootsPEM)
	store, err := ca.EncodeTrustStore(ca.FormatJKS, cas[0], roots, ca.TrustStorePassword)
	if err != nil {
		return nil, fmt.Errorf("write Java trust store: %w", err)
	}
	return store, nil
}

// WriteBundle writes BundlePEM(caPEM) into dir/ca-bundle.pem and returns
// its path.
func WriteBundle(dir string, caPEM []byte) (string, error) {
	p := filepath.Join(dir, "ca-bundle.pem")
	if err := os.WriteFile(p, BundlePEM(caPEM), 0o644); err != nil {
		return "", fmt.Errorf("write CA bundle %s: %w", p, err)
	}
	return p, nil
}

// WriteTrust writes the PEM bundle (WriteBundle) and the Java trust store
// (JavaTrustStore, as dir/java-truststore.p12) and returns where they
// are. The trust store is left out, with JavaTrustStore empty, when dir's
// path holds whitespace or quotes: JAVA_TOOL_OPTIONS is split on
// whitespace, and Java 8 knows no quoting.
func WriteTrust(dir string, caPEM []byte) (Trust, error) {
	bundle, err := WriteBundle(dir, caPEM)
	if err != nil {
		return Trust{}, err
	}
	tr := Trust{Bundle: bundle}
	if strings.ContainsAny(dir, " \t\n\r\"'") {
		return tr, nil
	}
	store, err := JavaTrustStore(caPEM)
	if err != nil {
		return Trust{}, err
	}
	p := filepath.Join(dir, "java-truststore.p12")
	if err := os.WriteFile(p, store, 0o644); err != nil {
		return Trust{}, fmt.Errorf("write Java trust store %s: %w", p, err)
	}
	tr.JavaTrustStore, tr.JavaTrustStorePassword = p, ca.TrustStorePassword
	return tr, nil
}

// javaToolOptions returns JAVA_TOOL_OPTIONS pointing the JVM at the trust
// store, after the options the user had (old): ca.JavaToolOptions.
func javaToolOptions(old string, tr Trust) string {
	return ca.JavaToolOptions(old, tr.JavaTrustStore, tr.JavaTrustStorePassword)
}
