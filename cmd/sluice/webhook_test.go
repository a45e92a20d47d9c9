package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/sluicehq/sluice/ca"
)

// sluice webhook bundle prints the namespace's ConfigMap: the system
// roots and the CA as PEM, and the Java trust store with the CA first.
func TestWebhookBundle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"ca", "init", "--dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("ca init: %d %s", code, errb.String())
	}
	out.Reset()
	if code := dispatch(context.Background(), []string{"webhook", "bundle", "--namespace", "agents", "--dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("webhook bundle: %d %s", code, errb.String())
	}
	var cm corev1.ConfigMap
	if err := json.Unmarshal(out.Bytes(), &cm); err != nil {
		t.Fatalf("not a ConfigMap: %v", err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	c, err := ca.ReadCertificate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cm.APIVersion != "v1" || cm.Kind != "ConfigMap" || cm.Name != "sluice-ca-bundle" || cm.Namespace != "agents" ||
		!strings.HasSuffix(strings.TrimSpace(cm.Data["ca-bundle.pem"]), strings.TrimSpace(string(caPEM))) {
		t.Errorf("ConfigMap %s %s %s/%s, bundle ends with the CA: %v", cm.APIVersion, cm.Kind, cm.Namespace, cm.Name,
			strings.HasSuffix(strings.TrimSpace(cm.Data["ca-bundle.pem"]), strings.TrimSpace(string(caPEM))))
	}
	certs, err := pkcs12.DecodeTrustStore(cm.BinaryData["java-truststore.p12"], ca.TrustStorePassword)
	if err != nil || len(certs) == 0 || !certs[0].Equal(c) {
		t.Errorf("trust store: %d certificates, %v", len(certs), err)
	}

	for _, args := range [][]string{
		{"webhook", "bundle", "--dir", dir},
		{"webhook", "--mount-path", "relative"},
	} {
		errb.Reset()
		if code := dispatch(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage): %s", args, code, errb.String())
		}
	}
}
