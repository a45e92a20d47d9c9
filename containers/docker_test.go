package containers

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/workload"
)

// fakeDocker answers the Docker Engine API calls the source makes, in
// the API's JSON, over a unix socket; events are fed by the test.
type fakeDocker struct {
	mu         sync.Mutex
	containers map[string]dockerContainer
	events     chan string
	filters    []string
	// held: the inspect of these containers waits until the channel is
	// closed, as the daemon's does while a start holds the container.
	held map[string]chan struct{}
}

func (f *fakeDocker) add(id, name, image string, labels map[string]string) {
	var c dockerContainer
	c.ID, c.Name, c.Config.Image, c.Config.Labels = id, "/"+name, image, labels
	f.mu.Lock()
	f.containers[id] = c
	f.mu.Unlock()
}

func (f *fakeDocker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == "/containers/json":
		f.filters = append(f.filters, r.URL.Query().Get("filters"))
		var list []dockerListed
		for _, c := range f.containers {
			if flt := r.URL.Query().Get("filters"); flt != "" {
				var m map[string][]string
				json.Unmarshal([]byte(flt), &m)
				k, v, _ := strings.Cut(m["label"][0], "=")
				if c.Config.Labels[k] != v {
					continue
				}
			}
			list = append(list, dockerListed{ID: c.ID, Names: []string{c.Name}, Image: c.Config.Image, Labels: c.Config.Labels})
		}
		json.NewEncoder(w).Encode(list)
	case strings.HasPrefix(r.URL.Path, "/containers/") && strings.HasSuffix(r.URL.Path, "/json"):
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/containers/"), "/json")
		if hold := f.held[id]; hold != nil {
			f.mu.Unlock()
			select {
			case <-hold:
			case <-r.Context().Done():
			}
			f.mu.Lock()
		}
		c, ok := f.containers[id]
		if !ok {
			http.Error(w, `{"message":"No such container"}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(c)
	case r.URL.Path == "/events":
		f.mu.Unlock()
		defer f.mu.Lock()
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
	default:
		http.NotFound(w, r)
	}
}

func newFakeDocker(t *testing.T) (*fakeDocker, *Docker) {
	t.Helper()
	f := &fakeDocker{containers: map[string]dockerContainer{}, events: make(chan string, 8)}
	dir, err := os.MkdirTemp("", "docker")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "docker.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return f, NewDocker(path)
}

// TestDockerListAndEvents: a listed container is named with its name,
// image and labels; one created later is inspected on its create event
// (before it starts) and reported through OnChange; a container started
// with the kubelet's labels is attributed to its pod and named by its
// Kubernetes container name.
func TestDockerListAndEvents(t *testing.T) {
	f, d := newFakeDocker(t)
	f.add(apiID, "web", "nginx:1.27", map[string]string{"team": "shop"})
	c := New(Options{}, d)
	changed := make(chan string, 8)
	c.OnChange(func(cid, _ string) {
		if cid != "" {
			changed <- cid
		}
	})
	run(t, c)
	id := eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Container == "web" })
	if id.Image != "nginx:1.27" || id.Labels["team"] != "shop" || id.Name() != "container:web" {
		t.Fatalf("identity %+v (name %s)", id, id.Name())
	}
	// The listed container may or may not be announced: a lookup on a
	// miss (eventually's Enrich) that wins the race with the list stores
	// it without OnChange. The created one must be.

	f.add(newID, "k8s_app_job-7_batch_x_0", "sluice-e2e:rootfs", kubeletLabels("job-7", "batch", newPodUID, "app"))
	f.events <- `{"Type":"container","Action":"create","Actor":{"ID":"` + newID + `","Attributes":{"name":"x"}}}`
	for got := range changed {
		if got == newID {
			break
		}
		if got != apiID {
			t.Fatalf("OnChange(%q), want the created container", got)
		}
	}
	id = eventually(t, c, newID, "", func(id workload.Identity) bool { return id.Container != "" })
	if id.Container != "app" || id.Pod != "job-7" || id.Namespace != "batch" || id.PodUID != newPodUID || id.Name() != "batch/job-7" {
		t.Fatalf("identity %+v", id)
	}
	// The pod's own cgroup is named through a container that has its uid.
	pod := workload.Identity{PodUID: newPodUID}
	c.Enrich(context.Background(), &pod)
	if pod.Pod != "job-7" || pod.Namespace != "batch" {
		t.Fatalf("pod identity %+v", pod)
	}

	f.events <- `{"Type":"container","Action":"destroy","Actor":{"ID":"` + apiID + `"}}`
	f.mu.Lock()
	delete(f.containers, apiID)
	f.mu.Unlock()
	eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Container == "" })
}

// TestDockerMissAndPod: without Run, a container is inspected on demand,
// and a pod uid is found by the kubelet label filter.
func TestDockerMissAndPod(t *testing.T) {
	f, d := newFakeDocker(t)
	f.add(apiID, "web", "nginx:1.27", kubeletLabels("web-0", "shop", podUID, "nginx"))
	in, err := d.Container(context.Background(), apiID)
	if err != nil || in.Name != "web" || in.Image != "nginx:1.27" {
		t.Fatalf("Container: %+v, %v", in, err)
	}
	if _, err := d.Container(context.Background(), newID); err != ErrNotFound {
		t.Fatalf("unknown container: %v, want ErrNotFound", err)
	}
	p, err := d.Pod(context.Background(), podUID)
	if err != nil || p.Name != "web-0" || p.Namespace != "shop" {
		t.Fatalf("Pod: %+v, %v", p, err)
	}
	if want := `{"label":["io.kubernetes.pod.uid=` + podUID + `"]}`; f.filters[len(f.filters)-1] != want {
		t.Fatalf("filters %q, want %q", f.filters[len(f.filters)-1], want)
	}
}

// TestDockerCreateEventNamesTheContainerBeforeItsInspect: `docker run`
// starts a container right after creating it, and the daemon answers an
// inspect only once the start is over (it holds the container's lock),
// by when the container may have connected. Its create event already
// carries its name, image and labels: the cache has them while the
// inspect still waits, so the agent can select the container by label
// when its cgroup appears.
func TestDockerCreateEventNamesTheContainerBeforeItsInspect(t *testing.T) {
	f, d := newFakeDocker(t)
	start := make(chan struct{})
	f.held = map[string]chan struct{}{newID: start}
	defer close(start)
	f.add(apiID, "db", "postgres:17", nil)
	c := New(Options{LookupTimeout: 50 * time.Millisecond}, d)
	changed := make(chan string, 8)
	c.OnChange(func(cid, _ string) { changed <- cid })
	run(t, c)
	eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Container == "db" }) // listed: the stream is open
	for len(changed) > 0 {
		<-changed
	}
	f.add(newID, "web-1", "shop/web:2", map[string]string{"sluice.e2e/intercept": "yes", "team": "blue"})
	f.events <- `{"Type":"container","Action":"create","Actor":{"ID":"` + newID + `","Attributes":{"image":"shop/web:2","name":"web-1","sluice.e2e/intercept":"yes","team":"blue"}}}`
	select {
	case got := <-changed:
		if got != newID {
			t.Fatalf("OnChange(%q), want the created container", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the create event was not reported while the container's inspect waited")
	}
	id := workload.Identity{ContainerID: newID}
	c.Enrich(context.Background(), &id)
	if id.Container != "web-1" || id.Image != "shop/web:2" || id.Labels["sluice.e2e/intercept"] != "yes" || id.Labels["team"] != "blue" || len(id.Labels) != 2 {
		t.Fatalf("identity while the inspect waits: %+v", id)
	}
}
