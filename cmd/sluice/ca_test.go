package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/sluicehq/sluice/ca"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCACommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	code, out, errs := runCmd(t, "ca", "init", "--dir", dir, "--key-type", "rsa")
	if code != 0 {
		t.Fatalf("ca init: exit %d, stderr %s", code, errs)
	}
	a, err := ca.Load(dir, ca.Options{})
	if err != nil {
		t.Fatalf("load what ca init wrote: %v", err)
	}
	fp := a.Fingerprint()
	if !strings.Contains(out, fp) || !strings.Contains(out, "RSA 2048") {
		t.Errorf("ca init output lacks fingerprint %s or key type:\n%s", fp, out)
	}

	code, out, errs = runCmd(t, "ca", "show", "--dir", dir)
	if code != 0 {
		t.Fatalf("ca show: exit %d, stderr %s", code, errs)
	}
	for _, want := range []string{
		"SHA-256 Fingerprint:  " + fp,
		"Subject:", "CN=Sluice CA ",
		"Not Before:", "Not After:",
		"Key Type:             RSA 2048",
		"Status:               valid",
		"Key File:             " + filepath.Join(dir, ca.KeyFile) + " mode 0600",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ca show output lacks %q:\n%s", want, out)
		}
	}

	// A readable key is flagged by show (which does not need the key).
	if err := os.Chmod(filepath.Join(dir, ca.KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := runCmd(t, "ca", "show", "--dir", dir); code != 0 || !strings.Contains(out, "run chmod 600 "+filepath.Join(dir, ca.KeyFile)) {
		t.Errorf("ca show with a 0644 key: exit %d\n%s", code, out)
	}
	if err := os.Chmod(filepath.Join(dir, ca.KeyFile), 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errs = runCmd(t, "ca", "export", "--dir", dir)
	if code != 0 {
		t.Fatalf("ca export: exit %d, stderr %s", code, errs)
	}
	checkBundle(t, []byte(out), fp)

	file := filepath.Join(t.TempDir(), "bundle.pem")
	code, out, errs = runCmd(t, "ca", "export", "--dir", dir, "--out", file)
	if code != 0 || out != "" {
		t.Fatalf("ca export --out: exit %d, stdout %q, stderr %s", code, out, errs)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	checkBundle(t, b, fp)

	// A second init refuses and keeps the CA.
	code, _, errs = runCmd(t, "ca", "init", "--dir", dir)
	if code != 1 || !strings.Contains(errs, "already exists") {
		t.Errorf("second ca init: exit %d, stderr %s", code, errs)
	}
	if b, _ := ca.Load(dir, ca.Options{}); b == nil || b.Fingerprint() != fp {
		t.Error("second ca init changed the CA")
	}
}

func checkBundle(t *testing.T, b []byte, fp string) {
	t.Helper()
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("bundle is not exactly one PEM certificate:\n%s", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got := ca.Fingerprint(c.Raw); got != fp {
		t.Errorf("bundle fingerprint %s, want %s", got, fp)
	}
	if !c.IsCA {
		t.Error("bundle certificate is not a CA")
	}
}

func TestCADirFromEnv(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "envca")
	t.Setenv("SLUICE_CA_DIR", dir)
	if code, _, errs := runCmd(t, "ca", "init"); code != 0 {
		t.Fatalf("ca init with %s: exit %d, stderr %s", "SLUICE_CA_DIR", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, ca.KeyFile)); err != nil {
		t.Fatalf("SLUICE_CA_DIR ignored: %v", err)
	}
	// --dir wins over the environment.
	other := filepath.Join(t.TempDir(), "flagca")
	if code, _, errs := runCmd(t, "ca", "init", "--dir", other); code != 0 {
		t.Fatalf("ca init --dir: exit %d, stderr %s", code, errs)
	}
	a, _ := ca.Load(dir, ca.Options{})
	b, _ := ca.Load(other, ca.Options{})
	if a == nil || b == nil || a.Fingerprint() == b.Fingerprint() {
		t.Error("--dir did not create a separate CA")
	}
	code, out, _ := runCmd(t, "ca", "show")
	if code != 0 || !strings.Contains(out, a.Fingerprint()) {
		t.Errorf("ca show with env: exit %d\n%s", code, out)
	}
}

func TestCAUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"ca"}, 2, "usage:"},
		{[]string{"ca", "frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"ca", "init", "--dir", filepath.Join(dir, "x"), "--key-type", "dsa"}, 2, `--key-type "dsa"`},
		{[]string{"ca", "show", "--dir", dir, "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"ca", "show", "--dir", filepath.Join(dir, "missing")}, 1, "ca.crt"},
		{[]string{"ca", "export", "--dir", filepath.Join(dir, "missing")}, 1, "ca.crt"},
		{[]string{"ca", "init", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"ca", "export", "--dir", dir, "--format", "der"}, 2, `--format "der": use one of pem, p12, jks`},
		{[]string{"ca", "export", "--dir", dir, "--password", "x"}, 2, "--password applies to --format p12 or jks only"},
	} {
		code, _, errs := runCmd(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
}

// ca export in each format: the p12 and jks stores parse back to the CA
// (then the system roots with --with-system-roots) under the password
// given, else "changeit"; pem with the roots is the CA then the roots.
func TestCAExportFormats(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if code, _, errs := runCmd(t, "ca", "init", "--dir", dir); code != 0 {
		t.Fatalf("ca init: exit %d, stderr %s", code, errs)
	}
	sluice, err := ca.ReadCertificate(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Fake system roots, so that the test does not depend on the host's.
	other, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(roots, other.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", roots)

	for _, tc := range []struct {
		name  string
		flags []string
		want  []*x509.Certificate
		parse func([]byte) ([]*x509.Certificate, error)
	}{
		{"pem with roots", []string{"--with-system-roots"}, []*x509.Certificate{sluice, other.Certificate()}, func(b []byte) ([]*x509.Certificate, error) {
			c, _ := ca.ParsePEMCertificates(b)
			return c, nil
		}},
		{"p12", []string{"--format", "p12"}, []*x509.Certificate{sluice}, func(b []byte) ([]*x509.Certificate, error) {
			return pkcs12.DecodeTrustStore(b, "changeit")
		}},
		{"p12 with roots and a password", []string{"--format", "p12", "--with-system-roots", "--password", "pw"}, []*x509.Certificate{sluice, other.Certificate()}, func(b []byte) ([]*x509.Certificate, error) {
			return pkcs12.DecodeTrustStore(b, "pw")
		}},
		{"jks", []string{"--format", "jks", "--with-system-roots"}, []*x509.Certificate{sluice, other.Certificate()}, func(b []byte) ([]*x509.Certificate, error) {
			return pkcs12.DecodeTrustStore(b, "changeit")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "store")
			code, _, errs := runCmd(t, append([]string{"ca", "export", "--dir", dir, "--out", file}, tc.flags...)...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %s", code, errs)
			}
			if !strings.Contains(errs, fmt.Sprintf("certificates: %d,", len(tc.want))) {
				t.Errorf("stderr does not count %d certificates: %s", len(tc.want), errs)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tc.parse(b)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d certificates, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !got[i].Equal(tc.want[i]) {
					t.Errorf("certificate %d: %s, want %s", i, got[i].Subject, tc.want[i].Subject)
				}
			}
		})
	}
}

// --ca-dir wins over a config file's ca.secret: a host without the
// Kubernetes API can run with the same config and a CA of its own.
func TestCADirFlagWinsOverCASecret(t *testing.T) {
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("ca:\n  secret: sluice-system/sluice-ca\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(cfgPath, "", "/tmp/flagca")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CA.Secret != "" || cfg.CA.Dir != "/tmp/flagca" {
		t.Errorf("ca %+v, want dir /tmp/flagca and no secret", cfg.CA)
	}
	if cfg, _ := loadConfig(cfgPath, "", ""); cfg.CA.Secret != "sluice-system/sluice-ca" {
		t.Errorf("without the flag: ca.secret %q", cfg.CA.Secret)
	}
}
