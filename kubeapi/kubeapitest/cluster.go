// Package kubeapitest points tests at a real Kubernetes API server
// (kube-apiserver and etcd) when one is given, and skips them when none
// is: SLUICE_KUBE_API names its URL, SLUICE_KUBE_API_CA the PEM file of
// the CA its serving certificate chains to, SLUICE_KUBE_API_TOKEN a file
// holding the bearer token of a system:masters user. Each test works in
// namespaces and cluster objects of its own, named sluice-test-…, and
// deletes them when it ends.
package kubeapitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluicehq/sluice/kubeapi"
)

// The environment that names the API server.
const (
	EnvServer = "SLUICE_KUBE_API"
	EnvCA     = "SLUICE_KUBE_API_CA"
	EnvToken  = "SLUICE_KUBE_API_TOKEN"
)

// Cluster is the API server the tests were pointed at.
type Cluster struct {
	Server string
	TLS    *tls.Config
	// Admin acts as a system:masters user.
	Admin *kubeapi.Client
}

// Real is the API server the environment names; without one the test
// is skipped.
func Real(t testing.TB) *Cluster {
	t.Helper()
	server := os.Getenv(EnvServer)
	if server == "" {
		t.Skipf("no Kubernetes API server: set %s, %s and %s", EnvServer, EnvCA, EnvToken)
	}
	pem, err := os.ReadFile(os.Getenv(EnvCA))
	if err != nil {
		t.Fatalf("%s: %v", EnvCA, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s: no certificate", EnvCA)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &Cluster{Server: server, TLS: tc, Admin: kubeapi.New(server, os.Getenv(EnvToken), tc)}
}

// Name is a fresh name for a test's object: sluice-test-… .
func Name() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "sluice-test-" + hex.EncodeToString(b)
}

// Client acts with the token in tokenFile.
func (c *Cluster) Client(tokenFile string) *kubeapi.Client {
	return kubeapi.New(c.Server, tokenFile, c.TLS.Clone())
}

// Do sends obj (JSON; nil for none) as the admin and decodes the answer
// into a map; a refusal fails the test.
func (c *Cluster) Do(t testing.TB, method, path string, obj any) map[string]any {
	t.Helper()
	var body []byte
	if obj != nil {
		var err error
		if body, err = json.Marshal(obj); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Admin.Do(ctx, method, path, nil, body)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: decode the answer: %v", method, path, err)
	}
	return out
}

// Create posts obj to the collection at path and deletes it at the end
// of the test (its name is obj's metadata.name). It returns the object as
// stored.
func (c *Cluster) Create(t testing.TB, path string, obj map[string]any) map[string]any {
	t.Helper()
	out := c.Do(t, http.MethodPost, path, obj)
	name := out["metadata"].(map[string]any)["name"].(string)
	t.Cleanup(func() { c.delete(t, path+"/"+name) })
	return out
}

// delete removes what path names, and what it owns, at once; gone already
// is no failure.
func (c *Cluster) delete(t testing.TB, path string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := []byte(`{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"propagationPolicy":"Background"}`)
	resp, err := c.Admin.Do(ctx, http.MethodDelete, path, nil, body)
	switch {
	case err == nil:
		resp.Body.Close()
	case kubeapi.StatusCode(err) == http.StatusNotFound:
	default:
		t.Errorf("clean up: %v", err)
	}
}

// Namespace creates a fresh namespace with labels, deleted (with all it
// holds) at the end of the test.
func (c *Cluster) Namespace(t testing.TB, labels map[string]string) string {
	t.Helper()
	name := Name()
	c.Create(t, "/api/v1/namespaces", map[string]any{
		"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": name, "labels": labels},
	})
	return name
}

// ServiceAccount creates the service account ns/name and returns a file
// holding a token the API server issued for it (TokenRequest), as the
// kubelet projects into a pod.
func (c *Cluster) ServiceAccount(t testing.TB, ns, name string) (tokenFile string) {
	t.Helper()
	c.Create(t, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{
		"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": name},
	})
	tr := c.Do(t, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+name+"/token", map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"spec": map[string]any{"expirationSeconds": 3600},
	})
	tok, _ := tr["status"].(map[string]any)["token"].(string)
	if tok == "" {
		t.Fatalf("TokenRequest for %s/%s: no token in %v", ns, name, tr)
	}
	tokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return tokenFile
}

// Manifest is the object of kind and name in the YAML file path (one of
// several documents), as JSON-ready maps.
func Manifest(t testing.TB, path, kind, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		meta, _ := obj["metadata"].(map[string]any)
		if obj["kind"] == kind && meta != nil && meta["name"] == name {
			return obj
		}
	}
	t.Fatalf("%s: no %s %s", path, kind, name)
	return nil
}
