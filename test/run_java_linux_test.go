package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// javaClient is a single-file Java program (java Client.java URL, JDK 11+):
// one GET with the JDK's own HTTP client and default SSLContext, which
// trusts what javax.net.ssl.trustStore names. It prints the status code
// and the body.
const javaClient = `import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Client {
    public static void main(String[] args) throws Exception {
        HttpResponse<String> r = HttpClient.newHttpClient().send(
            HttpRequest.newBuilder(URI.create(args[0])).build(),
            HttpResponse.BodyHandlers.ofString());
        System.out.println(r.statusCode());
        System.out.print(r.body());
    }
}
`

// `sluice run -- java Client.java URL`: the JVM trusts Sluice's CA only
// through the trust store JAVA_TOOL_OPTIONS names (the JDK reads neither
// SSL_CERT_FILE nor the system bundle), and gets 200 from the API through
// the proxy; with --no-ca-env the same client fails certificate
// verification, which proves the trust store did the work.
func TestRunJavaTrustStore(t *testing.T) {
	java := RequireTool(t, "java")
	e := newRunEnv(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "Client.java")
	if err := os.WriteFile(src, []byte(javaClient), 0o644); err != nil {
		t.Fatal(err)
	}
	// The JVM resolves api.test from this file (JDK 9+), not from DNS.
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte(e.api.IP4.String()+" api.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := []string{java, "-Djdk.net.hosts.file=" + hosts, src, "https://api.test/v1/java"}

	code, out, errOut := e.run(t, argv...)
	if code != 0 || out != "200\nhello GET /v1/java from the API\n" {
		t.Fatalf("java under sluice run: exit %d, stdout %q, want 200 and the API's body\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "Picked up JAVA_TOOL_OPTIONS: ") || !strings.Contains(errOut, "-Djavax.net.ssl.trustStoreType=PKCS12") {
		t.Errorf("the JVM did not report the trust-store options from JAVA_TOOL_OPTIONS:\n%s", errOut)
	}
	if r := httpRecord(e.records(t), "/v1/java"); r == nil || r["status"] != float64(200) {
		t.Errorf("audit record for /v1/java = %v, want status 200", r)
	}

	code, out, errOut = e.runFlags(t, []string{"--no-ca-env"}, argv...)
	if code == 0 || !strings.Contains(errOut, "PKIX path building failed") {
		t.Errorf("java with --no-ca-env: exit %d, stdout %q; want a PKIX failure\nstderr:\n%s", code, out, errOut)
	}
	// JSSE's refusal (its alert, not OpenSSL's) is a client_untrusted
	// record naming the JVM.
	var untrusted map[string]any
	for _, r := range e.records(t) {
		if r["decision"] == "client_untrusted" {
			untrusted = r
		}
	}
	if untrusted == nil || untrusted["host"] != "api.test" || untrusted["comm"] != "java" || untrusted["reason"] != "client rejected the Sluice certificate" {
		t.Errorf("client_untrusted record of the JVM: %v\nall: %v", untrusted, e.records(t))
	}
}
