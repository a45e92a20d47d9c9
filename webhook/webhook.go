// Package webhook is the Kubernetes mutating admission webhook `sluice
// webhook` serves, so that the pods of selected namespaces trust the
// Sluice CA with no image change: it patches each pod (JSON Patch) to
// mount the CA bundle from a ConfigMap in the pod's namespace and to point
// every container and init container at it through the variables TLS
// clients read (ca.TrustEnv, and JAVA_TOOL_OPTIONS with a PKCS#12 trust
// store for Java).
//
// The bundle is a configMap volume (ConfigMaps are namespaced: one per
// selected namespace, made by `sluice webhook bundle`): ca-bundle.pem
// (the system roots and the Sluice CA, what `sluice run` writes) and
// java-truststore.p12 (the same certificates, as `sluice ca export
// --format jks --with-system-roots` writes). The patch is idempotent: a
// pod that already has what the webhook adds gets an empty patch, so a
// second admission (reinvocation, a re-applied pod) does not add twice.
// A pod annotated sluice.dev/inject-ca: "false" is left alone.
package webhook

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
)

// The names the webhook and the bundle ConfigMap share.
const (
	// DefaultConfigMap is the ConfigMap, in the pod's namespace, that
	// holds the bundle.
	DefaultConfigMap = "sluice-ca-bundle"
	// DefaultMountPath is where the bundle is mounted in each container.
	DefaultMountPath = "/etc/sluice/trust"
	// BundleKey and TrustStoreKey are the ConfigMap's keys (and the
	// files' names under the mount path).
	BundleKey     = "ca-bundle.pem"
	TrustStoreKey = "java-truststore.p12"
	// VolumeName is the pod volume the webhook adds; a pod that has it
	// was patched already.
	VolumeName = "sluice-ca-bundle"
	// AnnotationInject on a pod, "false", opts the pod out.
	AnnotationInject = "sluice.dev/inject-ca"
	// NamespaceLabel selects namespaces in the MutatingWebhookConfiguration
	// (deploy/kubernetes/webhook.yaml): sluice.dev/inject-ca=enabled.
	NamespaceLabel = "sluice.dev/inject-ca"
	// Path is where Serve answers reviews (clientConfig.service.path),
	// HealthPath its readiness probe.
	Path       = "/mutate"
	HealthPath = "/healthz"
)

// maxReviewBytes bounds an AdmissionReview body (the API server sends at
// most its request limit, 3 MiB).
const maxReviewBytes = 3 << 20

// Options configure the patch. Zero values take the defaults.
type Options struct {
	ConfigMap string // DefaultConfigMap
	MountPath string // DefaultMountPath; no whitespace or quotes (JAVA_TOOL_OPTIONS)
	Log       *slog.Logger
}

// Validate reports an unusable option, naming the flag.
func (o Options) Validate() error {
	if o.MountPath != "" && (!strings.HasPrefix(o.MountPath, "/") || strings.ContainsAny(o.MountPath, " \t\n\r\"'")) {
		return fmt.Errorf("--mount-path %q: must be an absolute path without whitespace or quotes (JAVA_TOOL_OPTIONS is split on whitespace)", o.MountPath)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.ConfigMap == "" {
		o.ConfigMap = DefaultConfigMap
	}
	if o.MountPath == "" {
		o.MountPath = DefaultMountPath
	}
	o.MountPath = strings.TrimRight(o.MountPath, "/")
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Op is one JSON Patch (RFC 6902) operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Patch returns the JSON Patch operations that give pod the bundle and
// the variables: none when the pod opted out or has them all already.
func Patch(pod *corev1.Pod, o Options) []Op {
	o = o.withDefaults()
	if strings.EqualFold(pod.Annotations[AnnotationInject], "false") {
		return nil
	}
	var ops []Op
	has := false
	for _, v := range pod.Spec.Volumes {
		if v.Name == VolumeName {
			has = true
		}
	}
	if !has {
		vol := volume(o)
		if len(pod.Spec.Volumes) == 0 {
			ops = append(ops, Op{Op: "add", Path: "/spec/volumes", Value: []corev1.Volume{vol}})
		} else {
			ops = append(ops, Op{Op: "add", Path: "/spec/volumes/-", Value: vol})
		}
	}
	for i := range pod.Spec.InitContainers {
		ops = append(ops, containerOps("/spec/initContainers/"+strconv.Itoa(i), &pod.Spec.InitContainers[i], o)...)
	}
	for i := range pod.Spec.Containers {
		ops = append(ops, containerOps("/spec/containers/"+strconv.Itoa(i), &pod.Spec.Containers[i], o)...)
	}
	return ops
}

func volume(o Options) corev1.Volume {
	mode := int32(0o444)
	optional := false
	return corev1.Volume{Name: VolumeName, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: o.ConfigMap},
		Items: []corev1.KeyToPath{
			{Key: BundleKey, Path: BundleKey},
			{Key: TrustStoreKey, Path: TrustStoreKey},
		},
		DefaultMode: &mode,
		// A pod waits for the bundle rather than run with variables that
		// point at nothing.
		Optional: &optional,
	}}}
}

// containerOps patches one container at base: the mount, and each
// variable set to what it must be (added, or its entry replaced).
func containerOps(base string, c *corev1.Container, o Options) []Op {
	var ops []Op
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == VolumeName {
			mounted = true
		}
	}
	if !mounted {
		m := corev1.VolumeMount{Name: VolumeName, MountPath: o.MountPath, ReadOnly: true}
		if len(c.VolumeMounts) == 0 {
			ops = append(ops, Op{Op: "add", Path: base + "/volumeMounts", Value: []corev1.VolumeMount{m}})
		} else {
			ops = append(ops, Op{Op: "add", Path: base + "/volumeMounts/-", Value: m})
		}
	}
	bundle := o.MountPath + "/" + BundleKey
	store := o.MountPath + "/" + TrustStoreKey
	want := make([]corev1.EnvVar, 0, len(ca.TrustEnv)+1)
	for _, k := range ca.TrustEnv {
		want = append(want, corev1.EnvVar{Name: k, Value: bundle})
	}
	java := corev1.EnvVar{Name: ca.JavaToolOptionsEnv, Value: ca.JavaToolOptions("", store, ca.TrustStorePassword)}
	index := map[string]int{}
	for i, e := range c.Env {
		index[e.Name] = i
	}
	if i, ok := index[java.Name]; ok {
		old := c.Env[i]
		switch {
		case old.ValueFrom != nil:
			// From a Secret or ConfigMap: it can't be extended here.
			o.Log.Warn("JAVA_TOOL_OPTIONS comes from valueFrom: left as it is; Java in this container does not trust the Sluice CA", audit.KeyPath, base)
			java.Name = ""
		case strings.Contains(old.Value, "-Djavax.net.ssl.trustStore="+store+" "):
			java.Name = "" // ours already
		default:
			java.Value = ca.JavaToolOptions(old.Value, store, ca.TrustStorePassword)
		}
	}
	if java.Name != "" {
		want = append(want, java)
	}
	envLen := len(c.Env)
	for _, e := range want {
		i, ok := index[e.Name]
		switch {
		case !ok && envLen == 0:
			ops = append(ops, Op{Op: "add", Path: base + "/env", Value: []corev1.EnvVar{e}})
			envLen++
		case !ok:
			ops = append(ops, Op{Op: "add", Path: base + "/env/-", Value: e})
			envLen++
		case c.Env[i].ValueFrom != nil || c.Env[i].Value != e.Value:
			ops = append(ops, Op{Op: "replace", Path: base + "/env/" + strconv.Itoa(i), Value: e})
		}
	}
	return ops
}

// Handler serves AdmissionReview requests (admission.k8s.io/v1) for pods
// with the patch of Patch. It always allows: the webhook adds trust, it
// never refuses a pod (failurePolicy is documented in the manifest).
type Handler struct {
	o Options
}

// NewHandler returns the webhook's HTTP handler.
func NewHandler(o Options) *Handler { return &Handler{o: o.withDefaults()} }

var _ http.Handler = (*Handler)(nil)

// ServeHTTP implements http.Handler: POST an AdmissionReview JSON, get
// the AdmissionReview with its response.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > maxReviewBytes {
		http.Error(w, "AdmissionReview too large", http.StatusRequestEntityTooLarge)
		return
	}
	out, err := h.Review(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// Review answers one AdmissionReview (JSON) with an AdmissionReview
// carrying the response: allowed, with the JSON Patch when there is one.
// A review that is not an admission.k8s.io/v1 request is an error; a
// request for anything but a pod, or a pod that does not decode, is
// allowed unchanged.
func (h *Handler) Review(body []byte) ([]byte, error) {
	var rev admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &rev); err != nil {
		return nil, fmt.Errorf("decode AdmissionReview: %w", err)
	}
	if rev.APIVersion != "admission.k8s.io/v1" || rev.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("decode AdmissionReview: apiVersion %q kind %q, want admission.k8s.io/v1 AdmissionReview", rev.APIVersion, rev.Kind)
	}
	req := rev.Request
	if req == nil {
		return nil, errors.New("decode AdmissionReview: no request")
	}
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Kind == "Pod" && req.Kind.Group == "" && req.Operation == admissionv1.Create {
		var pod corev1.Pod
		if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
			h.o.Log.Warn("pod not decoded: admitted unchanged", audit.KeyError, err.Error())
		} else if ops := Patch(&pod, h.o); len(ops) > 0 {
			patch, err := json.Marshal(ops)
			if err != nil {
				return nil, fmt.Errorf("encode patch: %w", err)
			}
			pt := admissionv1.PatchTypeJSONPatch
			resp.Patch, resp.PatchType = patch, &pt
			name := pod.Name
			if name == "" {
				name = pod.GenerateName + "*"
			}
			h.o.Log.Info("pod given the Sluice CA", audit.KeyNamespace, req.Namespace, audit.KeyPod, name, audit.KeyPatchOps, len(ops))
		}
	}
	rev.Request, rev.Response = nil, resp
	return json.Marshal(rev)
}

// certReloader serves the certificate in its files, loaded again when
// either file's modification time changes (a rotated Secret); a pair that
// does not load keeps the previous one, logged.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	certMod time.Time
	keyMod  time.Time
}

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	cs, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("load webhook certificate: %w", err)
	}
	ks, err := os.Stat(r.keyFile)
	if err != nil {
		return fmt.Errorf("load webhook key: %w", err)
	}
	if r.cert != nil && cs.ModTime().Equal(r.certMod) && ks.ModTime().Equal(r.keyMod) {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load webhook certificate %s: %w", r.certFile, err)
	}
	r.cert, r.certMod, r.keyMod = &cert, cs.ModTime(), ks.ModTime()
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.load(); err != nil {
		r.log.Warn("webhook certificate not reloaded: serving the previous one", audit.KeyError, err.Error())
	}
	return r.cert, nil
}

// Serve answers admission reviews over TLS on ln until ctx ends, with the
// certificate and key in certFile and keyFile (PEM; the Service's DNS name
// must be among its names, and the MutatingWebhookConfiguration's
// caBundle must hold its CA), loaded again when the files change. Serve
// owns ln.
func Serve(ctx context.Context, ln net.Listener, certFile, keyFile string, o Options) error {
	o = o.withDefaults()
	certs, err := newCertReloader(certFile, keyFile, o.Log)
	if err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(Path, NewHandler(o))
	mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	hs := &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	o.Log.Info("webhook listening", audit.KeyAddr, ln.Addr().String())
	err = hs.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	_ = hs.Close()
	return fmt.Errorf("serve webhook on %s: %w", ln.Addr(), err)
}

// BundleConfigMap is the ConfigMap the webhook's volume reads, for one
// namespace: the PEM bundle and the Java trust store (see package doc).
func BundleConfigMap(name, namespace string, bundlePEM, trustStore []byte) *corev1.ConfigMap {
	if name == "" {
		name = DefaultConfigMap
	}
	cm := &corev1.ConfigMap{
		Data:       map[string]string{BundleKey: string(bundlePEM)},
		BinaryData: map[string][]byte{TrustStoreKey: trustStore},
	}
	cm.APIVersion, cm.Kind = "v1", "ConfigMap"
	cm.Name, cm.Namespace = name, namespace
	cm.Labels = map[string]string{"app.kubernetes.io/name": "sluice", "app.kubernetes.io/component": "ca-bundle"}
	return cm
}
