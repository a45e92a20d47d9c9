package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// writeServingCert writes a CA and a serving certificate for the
// webhook's Service name and 127.0.0.1 into dir and returns the CA.
func writeServingCert(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "webhook test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "sluice-webhook.sluice-system.svc"},
		DNSNames:    []string{"sluice-webhook.sluice-system.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool
}

// A running `sluice webhook`, over TLS as the API server calls it: an
// AdmissionReview for a pod gets a JSON Patch that, applied to the pod,
// mounts the bundle and sets the trust variables in every container and
// init container; the patched pod admitted again gets none. `sluice
// webhook bundle` prints the ConfigMap the volume reads, holding the
// Sluice CA in both forms.
func TestWebhookServesAdmissionReview(t *testing.T) {
	RequireE2E(t)
	dir := t.TempDir()
	roots := writeServingCert(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sluiceBin, "webhook", "--listen", "127.0.0.1:0",
		"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	addrCh := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			var m map[string]any
			if json.Unmarshal(s.Bytes(), &m) == nil && m["msg"] == "webhook listening" {
				addrCh <- m["addr"].(string)
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrCh:
	case <-time.After(20 * time.Second):
		t.Fatal("sluice webhook did not say where it listens")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "sluice-webhook.sluice-system.svc"}}}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-0", Namespace: "agents"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers: []corev1.Container{{Name: "app", Image: "eclipse-temurin:17", Env: []corev1.EnvVar{
				{Name: "JAVA_TOOL_OPTIONS", Value: "-Xss1m"},
			}}},
		},
	}
	admit := func(pod *corev1.Pod) (*admissionv1.AdmissionResponse, *corev1.Pod) {
		raw, _ := json.Marshal(pod)
		rev := admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{UID: "e2e-uid", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "agents",
				Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
		}
		body, _ := json.Marshal(rev)
		resp, err := client.Post("https://"+addr+"/mutate", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST over TLS: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(b, &out); err != nil || out.Response == nil || out.Response.UID != "e2e-uid" || !out.Response.Allowed {
			t.Fatalf("answer %s: %v", b, err)
		}
		if out.Response.Patch == nil {
			return out.Response, pod
		}
		p, err := jsonpatch.DecodePatch(out.Response.Patch)
		if err != nil {
			t.Fatal(err)
		}
		patched, err := p.Apply(raw)
		if err != nil {
			t.Fatalf("apply %s: %v", out.Response.Patch, err)
		}
		var got corev1.Pod
		if err := json.Unmarshal(patched, &got); err != nil {
			t.Fatal(err)
		}
		return out.Response, &got
	}
	resp, got := admit(pod)
	if resp.Patch == nil || len(got.Spec.Volumes) != 1 || got.Spec.Volumes[0].ConfigMap == nil || got.Spec.Volumes[0].ConfigMap.Name != "sluice-ca-bundle" {
		t.Fatalf("patched pod volumes %+v (patch %s)", got.Spec.Volumes, resp.Patch)
	}
	for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		vars := map[string]string{}
		for _, e := range c.Env {
			vars[e.Name] = e.Value
		}
		for _, k := range []string{"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE"} {
			if vars[k] != "/etc/sluice/trust/ca-bundle.pem" {
				t.Errorf("%s: %s=%q", c.Name, k, vars[k])
			}
		}
		if j := vars["JAVA_TOOL_OPTIONS"]; !strings.Contains(j, "-Djavax.net.ssl.trustStore=/etc/sluice/trust/java-truststore.p12 ") {
			t.Errorf("%s: JAVA_TOOL_OPTIONS=%q", c.Name, j)
		}
		if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/etc/sluice/trust" {
			t.Errorf("%s: mounts %+v", c.Name, c.VolumeMounts)
		}
	}
	if j := got.Spec.Containers[0].Env[0].Value; !strings.HasPrefix(j, "-Xss1m -Djavax.net.ssl.trustStore=") {
		t.Errorf("the user's JAVA_TOOL_OPTIONS lost or after ours: %q", j)
	}
	if again, _ := admit(got); again.Patch != nil {
		t.Errorf("second admission patched again: %s", again.Patch)
	}

	// The bundle ConfigMap for the namespace.
	caDir := filepath.Join(dir, "ca")
	if out, err := exec.Command(sluiceBin, "ca", "init", "--dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("sluice ca init: %v %s", err, out)
	}
	out, err := exec.Command(sluiceBin, "webhook", "bundle", "--namespace", "agents", "--dir", caDir).Output()
	if err != nil {
		t.Fatalf("sluice webhook bundle: %v", err)
	}
	var cm corev1.ConfigMap
	if err := json.Unmarshal(out, &cm); err != nil {
		t.Fatalf("bundle is not a ConfigMap: %v\n%.300s", err, out)
	}
	caPEM, err := os.ReadFile(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(caPEM)
	if cm.Kind != "ConfigMap" || cm.Name != "sluice-ca-bundle" || cm.Namespace != "agents" || !strings.Contains(cm.Data["ca-bundle.pem"], strings.TrimSpace(string(caPEM))) {
		t.Errorf("ConfigMap %s/%s kind %s; ca-bundle.pem holds the CA: %v", cm.Namespace, cm.Name, cm.Kind, strings.Contains(cm.Data["ca-bundle.pem"], strings.TrimSpace(string(caPEM))))
	}
	certs, err := pkcs12.DecodeTrustStore(cm.BinaryData["java-truststore.p12"], "changeit")
	if err != nil || len(certs) == 0 || !bytes.Equal(certs[0].Raw, block.Bytes) {
		t.Errorf("java-truststore.p12: %d certificates, %v; want the Sluice CA first", len(certs), err)
	}
}
