package kubeapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/kubeapi"
)

// secretsAPI is the secrets endpoints of a Kubernetes API server, with
// its rules: a bearer token on every request, a Status object with every
// refusal, 409 AlreadyExists on creating a Secret that exists, and 409
// Conflict on an update whose resourceVersion is not the current one.
type secretsAPI struct {
	token string

	mu      sync.Mutex
	objects map[string]map[string]any // by "namespace/name", as the API stores them
	version int
	forbid  bool     // refuse everything with 403, as RBAC without the grant does
	log     []string // "METHOD path"
}

func newSecretsAPI(t *testing.T) (*secretsAPI, *kubeapi.Client) {
	t.Helper()
	api := &secretsAPI{token: "agent-token", objects: map[string]map[string]any{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/secrets/{name}", api.get)
	mux.HandleFunc("POST /api/v1/namespaces/{ns}/secrets", api.create)
	mux.HandleFunc("PUT /api/v1/namespaces/{ns}/secrets/{name}", api.update)
	srv := httptest.NewTLSServer(api.guard(mux))
	t.Cleanup(srv.Close)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(api.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return api, kubeapi.New(srv.URL, tok, srv.Client().Transport.(*http.Transport).TLSClientConfig)
}

func status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": msg, "code": code,
	})
}

func (a *secretsAPI) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.log = append(a.log, r.Method+" "+r.URL.Path)
		forbid := a.forbid
		a.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+a.token {
			status(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
			return
		}
		if forbid {
			status(w, http.StatusForbidden, "Forbidden", fmt.Sprintf(`secrets is forbidden: User "system:serviceaccount:sluice-system:sluice" cannot %s resource "secrets"`, strings.ToLower(r.Method)))
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (a *secretsAPI) reply(w http.ResponseWriter, code int, obj map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(obj)
}

func (a *secretsAPI) get(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("ns") + "/" + r.PathValue("name")
	obj, ok := a.objects[key]
	if !ok {
		status(w, http.StatusNotFound, "NotFound", fmt.Sprintf(`secrets %q not found`, r.PathValue("name")))
		return
	}
	a.reply(w, http.StatusOK, obj)
}

func (a *secretsAPI) decode(w http.ResponseWriter, r *http.Request) (map[string]any, map[string]any, bool) {
	var obj map[string]any
	if r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&obj) != nil {
		status(w, http.StatusBadRequest, "BadRequest", "not a JSON object")
		return nil, nil, false
	}
	meta, _ := obj["metadata"].(map[string]any)
	if obj["apiVersion"] != "v1" || obj["kind"] != "Secret" || meta == nil {
		status(w, http.StatusBadRequest, "BadRequest", "not a v1 Secret")
		return nil, nil, false
	}
	if _, ok := obj["data"].(map[string]any); !ok {
		status(w, http.StatusBadRequest, "BadRequest", "no data")
		return nil, nil, false
	}
	return obj, meta, true
}

func (a *secretsAPI) create(w http.ResponseWriter, r *http.Request) {
	obj, meta, ok := a.decode(w, r)
	if !ok {
		return
	}
	if meta["namespace"] != r.PathValue("ns") || meta["resourceVersion"] != nil {
		status(w, http.StatusBadRequest, "BadRequest", "bad metadata")
		return
	}
	key := r.PathValue("ns") + "/" + meta["name"].(string)
	if _, exists := a.objects[key]; exists {
		status(w, http.StatusConflict, "AlreadyExists", fmt.Sprintf(`secrets %q already exists`, meta["name"]))
		return
	}
	a.version++
	meta["resourceVersion"] = strconv.Itoa(a.version)
	meta["uid"] = "uid-" + strconv.Itoa(a.version)
	a.objects[key] = obj
	a.reply(w, http.StatusCreated, obj)
}

func (a *secretsAPI) update(w http.ResponseWriter, r *http.Request) {
	obj, meta, ok := a.decode(w, r)
	if !ok {
		return
	}
	key := r.PathValue("ns") + "/" + r.PathValue("name")
	cur, exists := a.objects[key]
	if !exists {
		status(w, http.StatusNotFound, "NotFound", "not found")
		return
	}
	if meta["resourceVersion"] != cur["metadata"].(map[string]any)["resourceVersion"] {
		status(w, http.StatusConflict, "Conflict", "the object has been modified; please apply your changes to the latest version and try again")
		return
	}
	a.version++
	meta["resourceVersion"] = strconv.Itoa(a.version)
	a.objects[key] = obj
	a.reply(w, http.StatusOK, obj)
}

// put stores a Secret as kubectl apply would.
func (a *secretsAPI) put(key string, obj map[string]any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.version++
	obj["metadata"].(map[string]any)["resourceVersion"] = strconv.Itoa(a.version)
	a.objects[key] = obj
}

func (a *secretsAPI) object(key string) map[string]any {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.objects[key]
}

func TestSecretGetOfAnAbsentSecret(t *testing.T) {
	api, c := newSecretsAPI(t)
	files, version, found, err := c.Secret("sluice-system", "sluice-ca").Get(context.Background())
	if err != nil || found || files != nil || version != "" {
		t.Fatalf("Get: %v %q %v %v", files, version, found, err)
	}
	if api.log[0] != "GET /api/v1/namespaces/sluice-system/secrets/sluice-ca" {
		t.Errorf("asked %q", api.log[0])
	}
}

func TestSecretCreateThenGet(t *testing.T) {
	api, c := newSecretsAPI(t)
	s := c.Secret("sluice-system", "sluice-ca")
	s.Labels = map[string]string{"app.kubernetes.io/name": "sluice"}
	ok, err := s.Put(context.Background(), map[string][]byte{"ca.crt": []byte("CERT\n"), "ca.key": {0, 1, 2}}, "")
	if err != nil || !ok {
		t.Fatalf("Put: %v %v", ok, err)
	}
	// As the API holds it: an Opaque Secret, the data in base64, the labels.
	obj := api.object("sluice-system/sluice-ca")
	meta := obj["metadata"].(map[string]any)
	if obj["type"] != "Opaque" || meta["name"] != "sluice-ca" || meta["labels"].(map[string]any)["app.kubernetes.io/name"] != "sluice" {
		t.Errorf("stored %v", obj)
	}
	if d := obj["data"].(map[string]any); d["ca.crt"] != "Q0VSVAo=" || d["ca.key"] != "AAEC" {
		t.Errorf("stored data %v", d)
	}
	files, version, found, err := s.Get(context.Background())
	if err != nil || !found || string(files["ca.crt"]) != "CERT\n" || string(files["ca.key"]) != "\x00\x01\x02" || version == "" {
		t.Fatalf("Get: %q %q %v %v", files, version, found, err)
	}
	// Creating it again is another writer's Secret already there.
	if ok, err := s.Put(context.Background(), files, ""); err != nil || ok {
		t.Errorf("second create: ok %v, %v; want false, nil", ok, err)
	}
}

// An update replaces the data of the object read, and keeps the rest of
// it: what an operator or another controller set stays.
func TestSecretUpdateKeepsTheRestOfTheObject(t *testing.T) {
	api, c := newSecretsAPI(t)
	api.put("sluice-system/sluice-ca", map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
		"metadata":  map[string]any{"name": "sluice-ca", "namespace": "sluice-system", "annotations": map[string]any{"owner": "platform"}},
		"data":      map[string]any{"note": "aGk="},
		"immutable": false,
	})
	s := c.Secret("sluice-system", "sluice-ca")
	files, version, found, err := s.Get(context.Background())
	if err != nil || !found {
		t.Fatalf("Get: %v %v", found, err)
	}
	put := maps.Clone(files)
	put["ca.crt"] = []byte("CERT")
	if ok, err := s.Put(context.Background(), put, version); err != nil || !ok {
		t.Fatalf("Put: %v %v", ok, err)
	}
	obj := api.object("sluice-system/sluice-ca")
	if obj["metadata"].(map[string]any)["annotations"].(map[string]any)["owner"] != "platform" || obj["immutable"] != false {
		t.Errorf("the update dropped what it did not own: %v", obj)
	}
	if d := obj["data"].(map[string]any); d["note"] != "aGk=" || d["ca.crt"] != "Q0VSVA==" {
		t.Errorf("data %v", d)
	}
	if api.log[1] != "PUT /api/v1/namespaces/sluice-system/secrets/sluice-ca" {
		t.Errorf("asked %q", api.log[1])
	}
}

// An update of a Secret that changed since it was read is another
// writer's win: ok false, no error.
func TestSecretUpdateOfAStaleVersion(t *testing.T) {
	api, c := newSecretsAPI(t)
	api.put("ns/s", map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "s", "namespace": "ns"}, "data": map[string]any{}})
	s := c.Secret("ns", "s")
	files, version, _, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	api.put("ns/s", map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "s", "namespace": "ns"}, "data": map[string]any{"x": "eA=="}})
	if ok, err := s.Put(context.Background(), files, version); err != nil || ok {
		t.Errorf("stale update: ok %v, %v; want false, nil", ok, err)
	}
	if _, err := s.Put(context.Background(), files, "not-read"); err == nil {
		t.Error("an update at a version never read was sent")
	}
}

// Without the RBAC grant the error says what the role needs.
func TestSecretForbiddenNamesTheGrant(t *testing.T) {
	api, c := newSecretsAPI(t)
	api.forbid = true
	_, _, _, err := c.Secret("sluice-system", "sluice-ca").Get(context.Background())
	var se *kubeapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || se.Reason != "Forbidden" {
		t.Fatalf("error %v, want a 403 StatusError", err)
	}
	for _, want := range []string{
		"kubernetes api: GET /api/v1/namespaces/sluice-system/secrets/sluice-ca: 403 Forbidden: secrets is forbidden",
		"needs get, create and update on secret sluice-system/sluice-ca",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestTokenIsReadForEveryRequest(t *testing.T) {
	api, c := newSecretsAPI(t)
	if err := os.WriteFile(c.TokenFile, []byte("rotated"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := c.Secret("a", "b").Get(context.Background())
	var se *kubeapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("with the old token gone: %v, want 401", err)
	}
	api.token = "rotated"
	if _, _, _, err := c.Secret("a", "b").Get(context.Background()); err != nil {
		t.Fatalf("with the rotated token: %v", err)
	}
}

// Agents on many nodes starting at once against one API server end with
// one CA in the Secret, and every one of them holds it.
func TestAgentsShareOneCAThroughTheSecret(t *testing.T) {
	api, c := newSecretsAPI(t)
	fp := agreeOnOneCA(t, 6, func() *kubeapi.Secret { return c.Secret("sluice-system", "sluice-ca") })
	// The Secret holds that CA: a restarted agent loads it.
	a, created2, err := ca.LoadOrInitShared(context.Background(), c.Secret("sluice-system", "sluice-ca"), ca.Options{})
	if err != nil || created2 || a.Fingerprint() != fp {
		t.Fatalf("restart: created %v, %v", created2, err)
	}
	if d := api.object("sluice-system/sluice-ca")["data"].(map[string]any); len(d) != 2 {
		t.Errorf("the Secret holds %d keys, want ca.crt and ca.key", len(d))
	}
}

// agreeOnOneCA starts agents at once, each loading or creating the CA in
// its own handle on one Secret, and checks that exactly one created it
// and all hold it; it returns its fingerprint.
func agreeOnOneCA(t *testing.T, agents int, secret func() *kubeapi.Secret) string {
	t.Helper()
	var (
		wg      sync.WaitGroup
		fps     = make([]string, agents)
		created = make([]bool, agents)
		errs    = make([]error, agents)
	)
	for i := range agents {
		wg.Go(func() {
			var a *ca.Authority
			a, created[i], errs[i] = ca.LoadOrInitShared(context.Background(), secret(), ca.Options{})
			if a != nil {
				fps[i] = a.Fingerprint()
			}
		})
	}
	wg.Wait()
	creators := 0
	for i := range agents {
		if errs[i] != nil {
			t.Fatalf("agent %d: %v", i, errs[i])
		}
		if created[i] {
			creators++
		}
		if fps[i] != fps[0] {
			t.Errorf("agent %d has CA %s, agent 0 has %s", i, fps[i], fps[0])
		}
	}
	if creators != 1 {
		t.Errorf("%d agents created a CA, want 1", creators)
	}
	return fps[0]
}
