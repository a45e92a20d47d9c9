package ca

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"software.sslmate.com/src/go-pkcs12"
)

// Every format round-trips: what EncodeTrustStore writes parses back to
// the Sluice CA first, then the roots, each once.
func TestEncodeTrustStoreRoundTrip(t *testing.T) {
	sluice, _ := newCA(t, Options{})
	root1, _ := newCA(t, Options{})
	root2, _ := newCA(t, Options{KeyType: KeyRSA})
	roots := []*x509.Certificate{root1.Certificate(), sluice.Certificate(), root2.Certificate()}
	want := []*x509.Certificate{sluice.Certificate(), root1.Certificate(), root2.Certificate()}

	for _, tc := range []struct {
		format, password string
		decode           func(b []byte, password string) ([]*x509.Certificate, error)
	}{
		{FormatPEM, "", func(b []byte, _ string) ([]*x509.Certificate, error) {
			certs, skipped := ParsePEMCertificates(b)
			if skipped != 0 {
				t.Errorf("pem: %d blocks do not parse", skipped)
			}
			return certs, nil
		}},
		{FormatP12, "", pkcs12.DecodeTrustStore},
		{FormatJKS, "", pkcs12.DecodeTrustStore},
		{FormatP12, "s3cret", pkcs12.DecodeTrustStore},
	} {
		t.Run(tc.format+"/"+tc.password, func(t *testing.T) {
			b, err := EncodeTrustStore(tc.format, sluice.Certificate(), roots, tc.password)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			password := tc.password
			if password == "" {
				password = TrustStorePassword
			}
			got, err := tc.decode(b, password)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(got) != len(want) {
				t.Fatalf("decoded %d certificates, want %d (the CA once, then the other roots)", len(got), len(want))
			}
			for i := range want {
				if !got[i].Equal(want[i]) {
					t.Errorf("certificate %d is %s, want %s", i, got[i].Subject, want[i].Subject)
				}
			}
			if tc.format != FormatPEM {
				if _, err := pkcs12.DecodeTrustStore(b, "wrong"); err == nil {
					t.Errorf("decoding with a wrong password succeeded: the MAC is not checked")
				}
			}
		})
	}
}

// The CA alone: the PEM form is exactly the CA certificate, as `sluice ca
// export` always wrote it.
func TestEncodeTrustStoreCAOnly(t *testing.T) {
	a, _ := newCA(t, Options{})
	b, err := EncodeTrustStore(FormatPEM, a.Certificate(), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, a.BundlePEM()) {
		t.Errorf("pem of the CA alone:\n%s\nwant:\n%s", b, a.BundlePEM())
	}
}

func TestEncodeTrustStoreErrors(t *testing.T) {
	a, _ := newCA(t, Options{})
	if _, err := EncodeTrustStore("der", a.Certificate(), nil, ""); err == nil || !strings.Contains(err.Error(), `format "der": use one of pem, p12, jks`) {
		t.Errorf("unknown format: %v", err)
	}
	if _, err := EncodeTrustStore(FormatP12, nil, nil, ""); err == nil {
		t.Errorf("no CA certificate: no error")
	}
}

func TestParsePEMCertificatesSkipsWhatDoesNotParse(t *testing.T) {
	a, _ := newCA(t, Options{})
	in := append([]byte("# comment\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), a.BundlePEM()...)
	certs, skipped := ParsePEMCertificates(in)
	if len(certs) != 1 || !certs[0].Equal(a.Certificate()) || skipped != 1 {
		t.Errorf("got %d certificates, %d skipped; want the CA and 1 skipped", len(certs), skipped)
	}
}

func TestSystemRootsPEMFollowsSSLCertFile(t *testing.T) {
	a, _ := newCA(t, Options{})
	f := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(f, a.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", f)
	b, path, err := SystemRootsPEM()
	if err != nil || path != f || !bytes.Equal(b, a.BundlePEM()) {
		t.Errorf("SystemRootsPEM() = %d bytes from %q, %v; want %s", len(b), path, err, f)
	}
}
