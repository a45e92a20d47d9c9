package webhook_test

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/kubeapi/kubeapitest"
	"github.com/sluicehq/sluice/webhook"
)

// Against a real API server (kubeapitest): with the
// MutatingWebhookConfiguration that deploy/kubernetes/webhook/webhook.yaml
// ships, pointed at a running webhook, a pod created in a labelled
// namespace is stored with the bundle's volume, its mount and the
// variables; a pod that opts out, and a pod of a namespace without the
// label, are stored as they were sent.
func TestRealAPIInjectsTheBundle(t *testing.T) {
	k := kubeapitest.Real(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePair(t, certFile, keyFile, "sluice-webhook", time.Now())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- webhook.Serve(ctx, ln, certFile, keyFile, webhook.Options{}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	// The shipped configuration, under a name of this test, calling the
	// webhook above, for namespaces that also carry this test's label
	// (an API server may be shared), and failing closed so that a
	// webhook that was not called shows.
	name := kubeapitest.Name()
	cfg := kubeapitest.Manifest(t, "../deploy/kubernetes/webhook/webhook.yaml", "MutatingWebhookConfiguration", "sluice-ca-injector")
	cfg["metadata"].(map[string]any)["name"] = name
	hook := cfg["webhooks"].([]any)[0].(map[string]any)
	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	hook["clientConfig"] = map[string]any{"url": "https://" + ln.Addr().String() + webhook.Path, "caBundle": base64.StdEncoding.EncodeToString(pem)}
	hook["namespaceSelector"].(map[string]any)["matchLabels"].(map[string]any)[name] = "yes"
	hook["failurePolicy"] = "Fail"
	k.Create(t, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", cfg)

	labelled := k.Namespace(t, map[string]string{webhook.NamespaceLabel: "enabled", name: "yes"})
	plain := k.Namespace(t, map[string]string{name: "yes"})
	for _, ns := range []string{labelled, plain} {
		k.Create(t, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}})
	}
	pod := func(name string, annotations map[string]any) map[string]any {
		return map[string]any{
			"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": name, "annotations": annotations},
			"spec": map[string]any{"automountServiceAccountToken": false, "containers": []any{
				map[string]any{"name": "app", "image": "python:3.12", "env": []any{map[string]any{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g"}}},
			}},
		}
	}
	patched := func(p map[string]any) bool {
		vols, _ := p["spec"].(map[string]any)["volumes"].([]any)
		for _, v := range vols {
			if v.(map[string]any)["name"] == webhook.VolumeName {
				return true
			}
		}
		return false
	}
	// The API server learns of the configuration through its own watch:
	// a dry run shows when it calls the webhook.
	for i := 0; ; i++ {
		out := k.Do(t, http.MethodPost, "/api/v1/namespaces/"+labelled+"/pods?dryRun=All", pod("probe", nil))
		if patched(out) {
			break
		}
		if i == 100 {
			t.Fatalf("the API server never called the webhook: %v", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	got := k.Create(t, "/api/v1/namespaces/"+labelled+"/pods", pod("app", nil))
	if !patched(got) {
		t.Fatalf("stored without the bundle volume: %v", got["spec"])
	}
	c := got["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	mounted := false
	for _, m := range c["volumeMounts"].([]any) {
		m := m.(map[string]any)
		mounted = mounted || m["name"] == webhook.VolumeName && m["mountPath"] == webhook.DefaultMountPath && m["readOnly"] == true
	}
	if !mounted {
		t.Errorf("no read-only mount of the bundle at %s: %v", webhook.DefaultMountPath, c["volumeMounts"])
	}
	env := map[string]string{}
	for _, e := range c["env"].([]any) {
		e := e.(map[string]any)
		env[e["name"].(string)], _ = e["value"].(string)
	}
	if env["SSL_CERT_FILE"] != webhook.DefaultMountPath+"/"+webhook.BundleKey {
		t.Errorf("SSL_CERT_FILE %q", env["SSL_CERT_FILE"])
	}
	if j := env["JAVA_TOOL_OPTIONS"]; !strings.HasPrefix(j, "-Xmx1g ") || !strings.Contains(j, webhook.TrustStoreKey) {
		t.Errorf("JAVA_TOOL_OPTIONS %q: want the container's own options, then the trust store", j)
	}

	for _, tc := range []struct {
		what, ns string
		pod      map[string]any
	}{
		{"a pod that opts out", labelled, pod("optout", map[string]any{webhook.AnnotationInject: "false"})},
		{"a pod of a namespace without the label", plain, pod("app", nil)},
	} {
		if got := k.Create(t, "/api/v1/namespaces/"+tc.ns+"/pods", tc.pod); patched(got) {
			t.Errorf("%s was given the bundle", tc.what)
		}
	}
}
