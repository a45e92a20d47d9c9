package launch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// systemBundles are where distributions keep the system roots as one PEM
// file: Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine/macOS-like.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/ssl/cert.pem",
}

// WriteBundle writes the system roots (the first bundle found, or the
// file SSL_CERT_FILE names) followed by caPEM into dir/ca-bundle.pem and
// returns its path. Clients told to trust only this file then trust both
// the real CAs (for hosts Sluice passes through) and Sluice's CA.
func WriteBundle(dir string, caPEM []byte) (string, error) {
	var roots []byte
	cands := systemBundles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		cands = append([]string{f}, cands...)
	}
	for _, f := range cands {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("BEGIN CERTIFICATE")) {
			roots = b
			break
		}
	}
	var buf bytes.Buffer
	buf.Write(roots)
	if len(roots) > 0 && roots[len(roots)-1] != '\n' {
		buf.WriteByte('\n')
	}
	buf.WriteString("# Sluice CA\n")
	buf.Write(caPEM)
	p := filepath.Join(dir, "ca-bundle.pem")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("write CA bundle %s: %w", p, err)
	}
	return p, nil
}
