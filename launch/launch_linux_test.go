package launch

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/sluicehq/sluice/ca"
)

// The proxy variables clients honour, each of which would send traffic
// around the interception; kept in sync with proxyEnv.
var wantDropped = []string{
	"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY",
	"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
	"npm_config_proxy", "npm_config_https_proxy", "PIP_PROXY",
	"GRPC_PROXY", "grpc_proxy", "SOCKS_PROXY", "socks_proxy", "SOCKS5_PROXY",
}

func TestChildEnvDropsEveryProxyVariable(t *testing.T) {
	for _, k := range wantDropped {
		t.Run(k, func(t *testing.T) {
			got := childEnv([]string{"PATH=/bin", k + "=socks5://127.0.0.1:1080"}, Trust{})
			if !slices.Equal(got, []string{"PATH=/bin"}) {
				t.Errorf("%s reached the child: %v", k, got)
			}
		})
	}
	if len(proxyEnv) != len(wantDropped) {
		t.Errorf("proxyEnv has %d names, the test table %d: keep them in sync", len(proxyEnv), len(wantDropped))
	}
}

func TestChildEnvSetsTrustAndDropsProxies(t *testing.T) {
	base := []string{"PATH=/bin", "HTTPS_PROXY=http://evil:1", "http_proxy=x", "SSL_CERT_FILE=/old", "HOME=/root"}
	got := childEnv(base, Trust{Bundle: "/tmp/b.pem"})
	for _, k := range TrustEnv {
		if !slices.Contains(got, k+"=/tmp/b.pem") {
			t.Errorf("%s not set to the bundle: %v", k, got)
		}
	}
	for _, kv := range got {
		k, _, _ := strings.Cut(kv, "=")
		if slices.Contains(proxyEnv, k) {
			t.Errorf("proxy variable %s reached the child", k)
		}
		if kv == "SSL_CERT_FILE=/old" {
			t.Errorf("old SSL_CERT_FILE kept")
		}
	}
	if !slices.Contains(got, "PATH=/bin") || !slices.Contains(got, "HOME=/root") {
		t.Errorf("ordinary variables lost: %v", got)
	}
}

func TestChildEnvWithoutBundleKeepsTrust(t *testing.T) {
	got := childEnv([]string{"SSL_CERT_FILE=/mine", "ALL_PROXY=x", "JAVA_TOOL_OPTIONS=-Xmx1g", "AWS_CA_BUNDLE=/aws"}, Trust{})
	if !slices.Equal(got, []string{"SSL_CERT_FILE=/mine", "JAVA_TOOL_OPTIONS=-Xmx1g", "AWS_CA_BUNDLE=/aws"}) {
		t.Errorf("--no-ca-env must keep the user's trust variables and still drop proxies: %v", got)
	}
}

// The variables `sluice run` sets for one command, by client: AWS_CA_BUNDLE
// replaces the AWS SDKs' roots with the bundle, and JAVA_TOOL_OPTIONS gets
// the trust-store properties after the user's own options (the JVM keeps
// the last value of a -D, so ours win and -Xmx stays).
func TestChildEnvJavaAndAWS(t *testing.T) {
	tr := Trust{Bundle: "/t/ca-bundle.pem", JavaTrustStore: "/t/java-truststore.p12", JavaTrustStorePassword: "changeit"}
	const javaOpts = "-Djavax.net.ssl.trustStore=/t/java-truststore.p12 -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit"
	for _, tc := range []struct {
		name string
		base []string
		tr   Trust
		want []string // in the child's environment
		not  []string // not there
	}{
		{"no JAVA_TOOL_OPTIONS before", []string{"PATH=/bin"}, tr,
			[]string{"AWS_CA_BUNDLE=/t/ca-bundle.pem", "JAVA_TOOL_OPTIONS=" + javaOpts}, nil},
		{"the user's options kept, ours last", []string{"JAVA_TOOL_OPTIONS=-Xmx1g -Djavax.net.ssl.trustStore=/mine", "AWS_CA_BUNDLE=/old"}, tr,
			[]string{"JAVA_TOOL_OPTIONS=-Xmx1g -Djavax.net.ssl.trustStore=/mine " + javaOpts, "AWS_CA_BUNDLE=/t/ca-bundle.pem"},
			[]string{"JAVA_TOOL_OPTIONS=-Xmx1g -Djavax.net.ssl.trustStore=/mine", "AWS_CA_BUNDLE=/old"}},
		{"no Java trust store: JAVA_TOOL_OPTIONS untouched", []string{"JAVA_TOOL_OPTIONS=-Xmx1g"}, Trust{Bundle: "/t/ca-bundle.pem"},
			[]string{"JAVA_TOOL_OPTIONS=-Xmx1g", "AWS_CA_BUNDLE=/t/ca-bundle.pem"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := childEnv(tc.base, tc.tr)
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("no %s in %q", w, got)
				}
			}
			for _, n := range tc.not {
				if slices.Contains(got, n) {
					t.Errorf("%s kept in %q", n, got)
				}
			}
			count := 0
			for _, kv := range got {
				if strings.HasPrefix(kv, "JAVA_TOOL_OPTIONS=") {
					count++
				}
			}
			if count > 1 {
				t.Errorf("JAVA_TOOL_OPTIONS set %d times: %q", count, got)
			}
		})
	}
}

// WriteTrust writes the bundle and a Java trust store that parses back to
// the Sluice CA first, then the system roots.
func TestWriteTrust(t *testing.T) {
	sluice, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.New(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(roots, root.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", roots)

	dir := t.TempDir()
	tr, err := WriteTrust(dir, sluice.BundlePEM())
	if err != nil {
		t.Fatal(err)
	}
	if tr.Bundle != filepath.Join(dir, "ca-bundle.pem") || tr.JavaTrustStore != filepath.Join(dir, "java-truststore.p12") || tr.JavaTrustStorePassword != "changeit" {
		t.Fatalf("WriteTrust = %+v", tr)
	}
	b, err := os.ReadFile(tr.JavaTrustStore)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pkcs12.DecodeTrustStore(b, tr.JavaTrustStorePassword)
	if err != nil {
		t.Fatalf("the Java trust store does not parse: %v", err)
	}
	if len(certs) != 2 || !certs[0].Equal(sluice.Certificate()) || !certs[1].Equal(root.Certificate()) {
		t.Errorf("the Java trust store holds %d certificates; want the Sluice CA, then the system root", len(certs))
	}

	// A path JAVA_TOOL_OPTIONS cannot carry: the bundle only.
	spaced := filepath.Join(t.TempDir(), "with space")
	if err := os.Mkdir(spaced, 0o700); err != nil {
		t.Fatal(err)
	}
	tr, err = WriteTrust(spaced, sluice.BundlePEM())
	if err != nil || tr.Bundle == "" || tr.JavaTrustStore != "" {
		t.Errorf("WriteTrust in %q = %+v, %v; want the bundle and no Java trust store", spaced, tr, err)
	}
}

func TestWriteBundleEndsWithSluiceCA(t *testing.T) {
	dir := t.TempDir()
	ca := []byte("-----BEGIN CERTIFICATE-----\nTUlJ\n-----END CERTIFICATE-----\n")
	p, err := WriteBundle(dir, ca)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if !strings.HasSuffix(string(b), string(ca)) {
		t.Fatalf("bundle does not end with the Sluice CA")
	}
	if filepath.Dir(p) != dir {
		t.Fatalf("bundle written outside %s: %s", dir, p)
	}
}
