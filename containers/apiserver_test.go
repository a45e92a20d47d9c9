package containers

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/sluicehq/sluice/kubeapi/kubeapitest"
	"github.com/sluicehq/sluice/workload"
)

// Against a real API server (kubeapitest), with the ClusterRole that
// deploy/kubernetes/rbac.yaml ships and a service account's token: the
// pods of the agent's node are listed and watched, a pod's labels reach
// the identity of its container and a change of them arrives through the
// watch; another node's pod is not listed.
func TestRealAPIPodLabels(t *testing.T) {
	k := kubeapitest.Real(t)
	ns := k.Namespace(t, nil)
	token := k.ServiceAccount(t, ns, "sluice-agent")

	// The shipped ClusterRole and its binding, under names of this test.
	name := kubeapitest.Name()
	role := kubeapitest.Manifest(t, "../deploy/kubernetes/rbac.yaml", "ClusterRole", "sluice-agent")
	role["metadata"].(map[string]any)["name"] = name
	binding := kubeapitest.Manifest(t, "../deploy/kubernetes/rbac.yaml", "ClusterRoleBinding", "sluice-agent")
	binding["metadata"].(map[string]any)["name"] = name
	binding["roleRef"].(map[string]any)["name"] = name
	for _, s := range binding["subjects"].([]any) {
		s.(map[string]any)["namespace"] = ns
	}
	k.Create(t, "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
	k.Create(t, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)

	// Pods need their namespace's default service account, which no
	// controller makes here; they are never run (no kubelet).
	k.Create(t, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "default"}})
	node := kubeapitest.Name()
	pod := func(name, node string, labels map[string]any) map[string]any {
		return k.Create(t, "/api/v1/namespaces/"+ns+"/pods", map[string]any{
			"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": name, "labels": labels},
			"spec": map[string]any{"nodeName": node, "automountServiceAccountToken": false,
				"containers": []any{map[string]any{"name": "app", "image": "python:3.12"}}},
		})
	}
	web := pod("web-0", node, map[string]any{"app": "web", "tier": "front"})
	other := pod("other-0", kubeapitest.Name(), map[string]any{"app": "other"})
	uid := func(p map[string]any) string { return p["metadata"].(map[string]any)["uid"].(string) }

	// The authorizer learns of the binding through its own watch.
	agent := k.Client(token)
	for i := 0; ; i++ {
		resp, err := agent.Do(context.Background(), http.MethodGet, "/api/v1/pods", url.Values{"fieldSelector": {"spec.nodeName=" + node}}, nil)
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 100 {
			t.Fatalf("after the grant: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	c := New(Options{}, NewKube(k.Server, node, token, k.TLS))
	// Containers the runtime knows name their pods but not the labels.
	c.PutContainer(Info{ID: apiID, Name: "app", Labels: kubeletLabels("web-0", ns, uid(web), "app")})
	c.PutContainer(Info{ID: sandboxID, Name: "app", Labels: kubeletLabels("other-0", ns, uid(other), "app")})
	run(t, c)
	id := eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Labels["app"] == "web" })
	if id.Pod != "web-0" || id.Namespace != ns || id.Labels["tier"] != "front" {
		t.Fatalf("identity %+v labels %v", id, id.Labels)
	}

	// kubectl label pod web-0 tier=back --overwrite
	cur := k.Do(t, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/web-0", nil)
	cur["metadata"].(map[string]any)["labels"].(map[string]any)["tier"] = "back"
	k.Do(t, http.MethodPut, "/api/v1/namespaces/"+ns+"/pods/web-0", cur)
	eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Labels["tier"] == "back" })

	// The other node's pod never came: its container has no labels of it.
	id = workload.Identity{ContainerID: sandboxID}
	c.Enrich(context.Background(), &id)
	if id.Labels["app"] != "" {
		t.Errorf("a pod of another node was listed: %+v", id)
	}
}
