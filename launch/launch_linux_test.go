package launch

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
			got := childEnv([]string{"PATH=/bin", k + "=socks5://127.0.0.1:1080"}, "")
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
	got := childEnv(base, "/tmp/b.pem")
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
	got := childEnv([]string{"SSL_CERT_FILE=/mine", "ALL_PROXY=x"}, "")
	if !slices.Equal(got, []string{"SSL_CERT_FILE=/mine"}) {
		t.Errorf("--no-ca-env must keep the user's trust variables and still drop proxies: %v", got)
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
