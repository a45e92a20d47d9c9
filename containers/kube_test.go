package containers

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/workload"
)

// fakeAPI is the pods endpoint of a Kubernetes API server: a list, then
// a watch stream of events in the API's JSON, fed by the test.
type fakeAPI struct {
	mu      sync.Mutex
	queries []string
	auth    []string
	events  chan string
}

const podJSON = `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"%s","namespace":"%s","uid":"%s","resourceVersion":"%d","labels":%s},"spec":{"nodeName":"node-a","containers":[{"name":"app","image":"python:3.12"}]},"status":{"phase":"Running"}}`

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.queries = append(f.queries, r.URL.RawQuery)
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	f.mu.Unlock()
	if r.URL.Path != "/api/v1/pods" || r.URL.Query().Get("fieldSelector") != "spec.nodeName=node-a" {
		http.Error(w, `{"kind":"Status","status":"Failure","code":403}`, http.StatusForbidden)
		return
	}
	if r.URL.Query().Get("watch") == "" {
		fmt.Fprintf(w, `{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"100"},"items":[`+podJSON+`]}`,
			"web-0", "shop", podUID, 99, `{"app":"web","tier":"front"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-f.events:
			fmt.Fprintln(w, ev)
			w.(http.Flusher).Flush()
		}
	}
}

// TestKubeListWatch: the node's pods are listed with the service
// account's token and the node's field selector, then watched from the
// list's resourceVersion; the API's labels are the pod's labels, and a
// label change arrives through the watch.
func TestKubeListWatch(t *testing.T) {
	f := &fakeAPI{events: make(chan string, 4)}
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close) // after the cache's run ends (cleanups run last first)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("secret-token\n"), 0o600)
	k := NewKube(srv.URL, "node-a", tok, srv.Client().Transport.(*http.Transport).TLSClientConfig)

	c := New(Options{}, k)
	// A container the runtime knows names the pod but not its labels.
	c.PutContainer(Info{ID: apiID, Name: "app", Labels: kubeletLabels("web-0", "shop", podUID, "app")})
	run(t, c)
	id := eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Labels["app"] == "web" })
	if id.Pod != "web-0" || id.Namespace != "shop" || id.Labels["tier"] != "front" {
		t.Fatalf("identity %+v labels %v", id, id.Labels)
	}

	f.events <- fmt.Sprintf(`{"type":"MODIFIED","object":`+podJSON+`}`, "web-0", "shop", podUID, 101, `{"app":"web","tier":"back"}`)
	eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Labels["tier"] == "back" })

	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queries) < 2 || f.auth[0] != "Bearer secret-token" {
		t.Fatalf("queries %q auth %q", f.queries, f.auth)
	}
	if q := f.queries[1]; q != "allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dnode-a&resourceVersion=100&watch=1" {
		t.Fatalf("watch query %q", q)
	}
}

// TestKubeForbidden: a 403 names the RBAC the agent needs.
func TestKubeForbidden(t *testing.T) {
	srv := httptest.NewTLSServer(&fakeAPI{})
	defer srv.Close()
	k := NewKube(srv.URL, "other-node", "", srv.Client().Transport.(*http.Transport).TLSClientConfig)
	err := k.Run(t.Context(), New(Options{}))
	if err == nil || !strings.Contains(err.Error(), "403 Forbidden") || !strings.Contains(err.Error(), "get, list and watch on pods") {
		t.Fatalf("Run: %v", err)
	}
}
