package kubeapi_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/kubeapi"
	"github.com/sluicehq/sluice/kubeapi/kubeapitest"
)

// Against a real API server (kubeapitest): the Role and RoleBinding that
// deploy/kubernetes/rbac.yaml ships are what ca.secret needs, and agents
// starting together with a service account's token end with one CA in
// the Secret.
func TestRealAPIAgentsShareOneCA(t *testing.T) {
	k := kubeapitest.Real(t)
	ctx := context.Background()
	ns := k.Namespace(t, nil)
	agent := k.Client(k.ServiceAccount(t, ns, "sluice-agent"))

	// Without the grant the API refuses, and the error says what the
	// role needs.
	_, _, _, err := agent.Secret(ns, "sluice-ca").Get(ctx)
	var se *kubeapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(err.Error(), "needs get, create and update on secret "+ns+"/sluice-ca") {
		t.Fatalf("before the grant: %v, want 403 naming the grant", err)
	}

	// The shipped RBAC, moved into this test's namespace.
	role := kubeapitest.Manifest(t, "../deploy/kubernetes/rbac.yaml", "Role", "sluice-agent-ca")
	role["metadata"].(map[string]any)["namespace"] = ns
	binding := kubeapitest.Manifest(t, "../deploy/kubernetes/rbac.yaml", "RoleBinding", "sluice-agent-ca")
	binding["metadata"].(map[string]any)["namespace"] = ns
	for _, s := range binding["subjects"].([]any) {
		s.(map[string]any)["namespace"] = ns
	}
	k.Create(t, "/apis/rbac.authorization.k8s.io/v1/namespaces/"+ns+"/roles", role)
	k.Create(t, "/apis/rbac.authorization.k8s.io/v1/namespaces/"+ns+"/rolebindings", binding)
	// The authorizer learns of the binding through its own watch.
	for i := 0; ; i++ {
		_, _, found, err := agent.Secret(ns, "sluice-ca").Get(ctx)
		if err == nil && !found {
			break
		}
		if i == 100 {
			t.Fatalf("after the grant: found %v, %v", found, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	fp := agreeOnOneCA(t, 6, func() *kubeapi.Secret {
		s := agent.Secret(ns, "sluice-ca")
		s.Labels = map[string]string{"app.kubernetes.io/name": "sluice"}
		return s
	})

	// As the API holds it: an Opaque Secret with the two keys and the label.
	obj := k.Do(t, http.MethodGet, "/api/v1/namespaces/"+ns+"/secrets/sluice-ca", nil)
	data, _ := obj["data"].(map[string]any)
	labels, _ := obj["metadata"].(map[string]any)["labels"].(map[string]any)
	if obj["type"] != "Opaque" || len(data) != 2 || data[ca.CertFile] == nil || data[ca.KeyFile] == nil || labels["app.kubernetes.io/name"] != "sluice" {
		t.Errorf("the Secret as stored: type %v, keys %d, labels %v", obj["type"], len(data), labels)
	}
	// A restarted agent loads it.
	a, again, err := ca.LoadOrInitShared(ctx, agent.Secret(ns, "sluice-ca"), ca.Options{})
	if err != nil || again || a.Fingerprint() != fp {
		t.Fatalf("restart: created %v, %v", again, err)
	}
	// The grant is for that Secret by name: no other one can be read.
	if _, _, _, err := agent.Secret(ns, "other").Get(ctx); !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Errorf("another Secret: %v, want 403", err)
	}

	// An operator who leaves half a CA in it gets a refusal, not a new CA.
	delete(data, ca.KeyFile)
	obj["data"] = data
	k.Do(t, http.MethodPut, "/api/v1/namespaces/"+ns+"/secrets/sluice-ca", obj)
	_, _, err = ca.LoadOrInitShared(ctx, agent.Secret(ns, "sluice-ca"), ca.Options{})
	if err == nil || !strings.Contains(err.Error(), "holds ca.crt but no ca.key") {
		t.Errorf("half a CA: %v", err)
	}

	// One who empties it (keeping a key of their own, and an annotation)
	// has it filled with a new CA by an update, which the Role allows,
	// and keeps the rest.
	obj = k.Do(t, http.MethodGet, "/api/v1/namespaces/"+ns+"/secrets/sluice-ca", nil)
	obj["data"] = map[string]any{"note": "b3BlcmF0b3I="}
	obj["metadata"].(map[string]any)["annotations"] = map[string]any{"owner": "platform"}
	k.Do(t, http.MethodPut, "/api/v1/namespaces/"+ns+"/secrets/sluice-ca", obj)
	a, filled, err := ca.LoadOrInitShared(ctx, agent.Secret(ns, "sluice-ca"), ca.Options{})
	if err != nil || !filled || a.Fingerprint() == fp {
		t.Fatalf("an emptied Secret: created %v, %v", filled, err)
	}
	obj = k.Do(t, http.MethodGet, "/api/v1/namespaces/"+ns+"/secrets/sluice-ca", nil)
	data, _ = obj["data"].(map[string]any)
	if data["note"] != "b3BlcmF0b3I=" || data[ca.CertFile] == nil || obj["metadata"].(map[string]any)["annotations"].(map[string]any)["owner"] != "platform" {
		t.Errorf("the filled Secret lost what it held: %v", obj)
	}
}
