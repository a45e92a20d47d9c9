package webhook_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/webhook"
)

const (
	bundle = "/etc/sluice/trust/ca-bundle.pem"
	store  = "/etc/sluice/trust/java-truststore.p12"
)

var javaOpts = "-Djavax.net.ssl.trustStore=" + store + " -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=" + ca.TrustStorePassword

// review is an AdmissionReview as the API server sends it for a pod
// CREATE.
func review(t testing.TB, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	rev := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("705ab4f5-6393-11e8-b7cc-42010a800002"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "agents",
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	b, err := json.Marshal(rev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// admit posts the review to the handler and returns its response and the
// pod with the returned JSON Patch applied (by a JSON Patch library, as
// the API server applies it).
func admit(t testing.TB, h http.Handler, pod *corev1.Pod) (*admissionv1.AdmissionResponse, *corev1.Pod) {
	t.Helper()
	req := httptest.NewRequest("POST", "/mutate", bytes.NewReader(review(t, pod)))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body.String())
	}
	var rev admissionv1.AdmissionReview
	if err := json.Unmarshal(w.Body.Bytes(), &rev); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v", err)
	}
	if rev.APIVersion != "admission.k8s.io/v1" || rev.Kind != "AdmissionReview" || rev.Response == nil || rev.Request != nil {
		t.Fatalf("review %+v", rev)
	}
	resp := rev.Response
	if resp.UID != "705ab4f5-6393-11e8-b7cc-42010a800002" || !resp.Allowed {
		t.Fatalf("response %+v: want the request's UID, allowed", resp)
	}
	if resp.Patch == nil {
		return resp, pod
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", resp.PatchType)
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", resp.Patch, err)
	}
	raw, _ := json.Marshal(pod)
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", resp.Patch, err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return resp, &got
}

func env(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := m[e.Name]; dup {
			m[e.Name] = corev1.EnvVar{Name: "DUPLICATE"}
			continue
		}
		m[e.Name] = e
	}
	return m
}

// checkTrusts asserts that c mounts the bundle and has every variable.
func checkTrusts(t *testing.T, c corev1.Container, javaPrefix string) {
	t.Helper()
	n := 0
	for _, m := range c.VolumeMounts {
		if m.Name == webhook.VolumeName {
			n++
			if m.MountPath != "/etc/sluice/trust" || !m.ReadOnly {
				t.Errorf("%s: mount %+v", c.Name, m)
			}
		}
	}
	if n != 1 {
		t.Errorf("%s: %d mounts of the bundle, want 1", c.Name, n)
	}
	e := env(c)
	for _, k := range ca.TrustEnv {
		if e[k].Value != bundle || e[k].ValueFrom != nil {
			t.Errorf("%s: %s = %+v, want %s", c.Name, k, e[k], bundle)
		}
	}
	if got := e[ca.JavaToolOptionsEnv].Value; got != javaPrefix+javaOpts {
		t.Errorf("%s: JAVA_TOOL_OPTIONS = %q, want %q", c.Name, got, javaPrefix+javaOpts)
	}
}

func testPod() *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-0", Namespace: "agents"},
		Spec: corev1.PodSpec{
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			InitContainers: []corev1.Container{
				{Name: "fetch", Image: "curlimages/curl"},
			},
			Containers: []corev1.Container{
				{Name: "app", Image: "python:3.12", Env: []corev1.EnvVar{
					{Name: "SSL_CERT_FILE", Value: "/old/bundle.pem"},
					{Name: "JAVA_TOOL_OPTIONS", Value: "-Xmx1g"},
					{Name: "KEEP", Value: "me"},
				}, VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}},
				{Name: "sidecar", Image: "node:22", Env: []corev1.EnvVar{
					{Name: "AWS_CA_BUNDLE", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}},
				}},
			},
		},
	}
	p.APIVersion, p.Kind = "v1", "Pod"
	return p
}

// Every container and init container gets the bundle and the variables;
// the user's other variables and mounts stay, JAVA_TOOL_OPTIONS keeps the
// user's options before Sluice's, and a second admission of the patched
// pod patches nothing.
func TestAdmitPod(t *testing.T) {
	h := webhook.NewHandler(webhook.Options{})
	resp, pod := admit(t, h, testPod())
	if resp.Patch == nil {
		t.Fatal("no patch")
	}
	var vols []corev1.Volume
	for _, v := range pod.Spec.Volumes {
		if v.Name == webhook.VolumeName {
			vols = append(vols, v)
		}
	}
	if len(pod.Spec.Volumes) != 2 || len(vols) != 1 || vols[0].ConfigMap == nil || vols[0].ConfigMap.Name != webhook.DefaultConfigMap ||
		len(vols[0].ConfigMap.Items) != 2 || vols[0].ConfigMap.Items[0].Key != webhook.BundleKey || vols[0].ConfigMap.Items[1].Key != webhook.TrustStoreKey {
		t.Fatalf("volumes %+v", pod.Spec.Volumes)
	}
	checkTrusts(t, pod.Spec.InitContainers[0], "")
	checkTrusts(t, pod.Spec.Containers[0], "-Xmx1g ")
	checkTrusts(t, pod.Spec.Containers[1], "")
	if e := env(pod.Spec.Containers[0]); e["KEEP"].Value != "me" {
		t.Errorf("the user's variable: %+v", e["KEEP"])
	}
	if m := pod.Spec.Containers[0].VolumeMounts; len(m) != 2 || m[0].Name != "data" {
		t.Errorf("mounts %+v", m)
	}

	again, pod2 := admit(t, h, pod)
	if again.Patch != nil {
		t.Fatalf("second admission patched again: %s", again.Patch)
	}
	checkTrusts(t, pod2.Spec.Containers[0], "-Xmx1g ")
}

// A pod with no volumes and containers with no env or mounts (the
// patch must create the arrays), and one that opts out.
func TestAdmitBarePodAndOptOut(t *testing.T) {
	h := webhook.NewHandler(webhook.Options{})
	bare := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	bare.GenerateName = "job-"
	_, pod := admit(t, h, bare)
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].Name != webhook.VolumeName {
		t.Fatalf("volumes %+v", pod.Spec.Volumes)
	}
	checkTrusts(t, pod.Spec.Containers[0], "")

	out := testPod()
	out.Annotations = map[string]string{webhook.AnnotationInject: "false"}
	if resp, _ := admit(t, h, out); resp.Patch != nil {
		t.Errorf("opted-out pod patched: %s", resp.Patch)
	}
}

// JAVA_TOOL_OPTIONS from a Secret can't be extended: it is left as it
// is, the rest is patched.
func TestAdmitJavaOptionsFromSecretLeftAlone(t *testing.T) {
	p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x", Env: []corev1.EnvVar{
		{Name: "JAVA_TOOL_OPTIONS", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "opts"}}},
	}}}}}
	_, pod := admit(t, webhook.NewHandler(webhook.Options{}), p)
	e := env(pod.Spec.Containers[0])
	if e["JAVA_TOOL_OPTIONS"].ValueFrom == nil || e["SSL_CERT_FILE"].Value != bundle {
		t.Errorf("env %+v", pod.Spec.Containers[0].Env)
	}
}

// Not a pod CREATE: allowed, unchanged.
func TestAdmitOtherRequests(t *testing.T) {
	h := webhook.NewHandler(webhook.Options{})
	var rev admissionv1.AdmissionReview
	_ = json.Unmarshal(review(t, testPod()), &rev)
	for _, mutate := range []func(*admissionv1.AdmissionRequest){
		func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update },
		func(r *admissionv1.AdmissionRequest) { r.Kind.Kind = "Deployment"; r.Kind.Group = "apps" },
		func(r *admissionv1.AdmissionRequest) { r.Object.Raw = []byte(`{"spec": 7}`) },
	} {
		r := rev
		req := *rev.Request
		mutate(&req)
		r.Request = &req
		b, _ := json.Marshal(r)
		out, err := h.Review(b)
		if err != nil {
			t.Fatal(err)
		}
		var got admissionv1.AdmissionReview
		if err := json.Unmarshal(out, &got); err != nil || got.Response == nil || !got.Response.Allowed || got.Response.Patch != nil {
			t.Errorf("%s %s: %s %v", req.Operation, req.Kind.Kind, out, err)
		}
	}
}

// What is not an AdmissionReview POSTed as JSON is refused with the
// status that says why.
func TestHandlerRefusesBadRequests(t *testing.T) {
	h := webhook.NewHandler(webhook.Options{})
	for _, tc := range []struct {
		method, ctype, body string
		code                int
	}{
		{"GET", "", "", http.StatusMethodNotAllowed},
		{"POST", "text/plain", "{}", http.StatusUnsupportedMediaType},
		{"POST", "application/json", "not json", http.StatusBadRequest},
		{"POST", "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`, http.StatusBadRequest},
		{"POST", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest},
		{"POST", "application/json", strings.Repeat(" ", 3<<20+1), http.StatusRequestEntityTooLarge},
	} {
		req := httptest.NewRequest(tc.method, "/mutate", strings.NewReader(tc.body))
		if tc.ctype != "" {
			req.Header.Set("Content-Type", tc.ctype)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != tc.code {
			t.Errorf("%s %s %.40q: %d, want %d", tc.method, tc.ctype, tc.body, w.Code, tc.code)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, p := range []string{"relative/path", "/with space", `/quo"te`} {
		if err := (webhook.Options{MountPath: p}).Validate(); err == nil || !strings.Contains(err.Error(), "--mount-path") {
			t.Errorf("%q: %v", p, err)
		}
	}
	if err := (webhook.Options{MountPath: "/etc/ca"}).Validate(); err != nil {
		t.Error(err)
	}
}

// The reviews the API server could send: whatever arrives, Review
// answers or errs without a panic, and a patch it returns applies to the
// pod it came with.
func FuzzReview(f *testing.F) {
	f.Add(review(f, testPod()))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"name":"a","env":[{"name":"JAVA_TOOL_OPTIONS","value":"-Dx"}]}]}}}}`))
	h := webhook.NewHandler(webhook.Options{})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := h.Review(b)
		if err != nil {
			return
		}
		var rev admissionv1.AdmissionReview
		if err := json.Unmarshal(out, &rev); err != nil || rev.Response == nil {
			t.Fatalf("answer %s: %v", out, err)
		}
		if rev.Response.Patch == nil {
			return
		}
		var in admissionv1.AdmissionReview
		_ = json.Unmarshal(b, &in)
		p, err := jsonpatch.DecodePatch(rev.Response.Patch)
		if err != nil {
			t.Fatalf("patch %s: %v", rev.Response.Patch, err)
		}
		var pod corev1.Pod
		_ = json.Unmarshal(in.Request.Object.Raw, &pod)
		raw, _ := json.Marshal(pod)
		if _, err := p.Apply(raw); err != nil {
			t.Fatalf("patch %s does not apply: %v", rev.Response.Patch, err)
		}
	})
}
