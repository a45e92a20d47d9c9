package containers

import (
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluicehq/sluice/workload"
)

const (
	sandboxID = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	apiID     = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	newID     = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
	newSbID   = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
	podUID    = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
	newPodUID = "11111111-2222-3333-4444-555555555555"
)

// fakeCRI is a CRI runtime speaking the real runtime.v1 protobuf API
// over a unix socket: a few sandboxes and containers, and an event
// stream the test feeds.
type fakeCRI struct {
	cri.UnimplementedRuntimeServiceServer
	mu         sync.Mutex
	sandboxes  []*cri.PodSandbox
	containers []*cri.Container
	events     chan *cri.ContainerEventResponse
	noEvents   bool
	statusHits int
}

func kubeletLabels(pod, ns, uid, container string) map[string]string {
	m := map[string]string{LabelPodName: pod, LabelPodNamespace: ns, LabelPodUID: uid}
	if container != "" {
		m[LabelContainerName] = container
	}
	return m
}

func newFakeCRI() *fakeCRI {
	sbLabels := kubeletLabels("web-0", "shop", podUID, "")
	sbLabels["app"] = "web"
	sbLabels["tier"] = "front"
	return &fakeCRI{
		sandboxes: []*cri.PodSandbox{{Id: sandboxID, Metadata: &cri.PodSandboxMetadata{Name: "web-0", Namespace: "shop", Uid: podUID}, Labels: sbLabels}},
		containers: []*cri.Container{{
			Id: apiID, PodSandboxId: sandboxID, Metadata: &cri.ContainerMetadata{Name: "api"},
			Image:  &cri.ImageSpec{Image: "registry.example.com/shop/api:1.2"},
			Labels: kubeletLabels("web-0", "shop", podUID, "api"),
		}},
		events: make(chan *cri.ContainerEventResponse, 8),
	}
}

func (f *fakeCRI) ListPodSandbox(_ context.Context, r *cri.ListPodSandboxRequest) (*cri.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*cri.PodSandbox
	for _, s := range f.sandboxes {
		if r.Filter != nil && r.Filter.LabelSelector != nil {
			ok := true
			for k, v := range r.Filter.LabelSelector {
				ok = ok && s.Labels[k] == v
			}
			if !ok {
				continue
			}
		}
		out = append(out, s)
	}
	return &cri.ListPodSandboxResponse{Items: out}, nil
}

func (f *fakeCRI) ListContainers(context.Context, *cri.ListContainersRequest) (*cri.ListContainersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &cri.ListContainersResponse{Containers: f.containers}, nil
}

func (f *fakeCRI) ContainerStatus(_ context.Context, r *cri.ContainerStatusRequest) (*cri.ContainerStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusHits++
	for _, c := range f.containers {
		if c.Id == r.ContainerId {
			return &cri.ContainerStatusResponse{Status: &cri.ContainerStatus{Id: c.Id, Metadata: c.Metadata, Image: c.Image, Labels: c.Labels}}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no such container")
}

func (f *fakeCRI) PodSandboxStatus(_ context.Context, r *cri.PodSandboxStatusRequest) (*cri.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.sandboxes {
		if s.Id == r.PodSandboxId {
			return &cri.PodSandboxStatusResponse{Status: &cri.PodSandboxStatus{Id: s.Id, Metadata: s.Metadata, Labels: s.Labels}}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no such sandbox")
}

func (f *fakeCRI) GetContainerEvents(_ *cri.GetEventsRequest, stream grpc.ServerStreamingServer[cri.ContainerEventResponse]) error {
	if f.noEvents {
		return status.Error(codes.Unimplemented, "no events here")
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case ev := <-f.events:
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// serve serves register's services on a fresh unix socket and returns
// its path.
func serve(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cri") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "cri.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return path
}

func newCRISource(t *testing.T, f *fakeCRI) *CRI {
	t.Helper()
	path := serve(t, func(s *grpc.Server) { cri.RegisterRuntimeServiceServer(s, f) })
	c, err := NewCRI(path)
	if err != nil {
		t.Fatal(err)
	}
	c.PollInterval = 50 * time.Millisecond
	t.Cleanup(func() { c.Close() })
	return c
}

// run runs the cache until the test ends.
func run(t *testing.T, c *Cache) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// eventually enriches an identity of containerID/podUID until check
// passes or 5s go by.
func eventually(t *testing.T, c *Cache, containerID, podUID string, check func(workload.Identity) bool) workload.Identity {
	t.Helper()
	var id workload.Identity
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		id = workload.Identity{ContainerID: containerID, PodUID: podUID}
		c.Enrich(context.Background(), &id)
		if check(id) {
			return id
		}
	}
	t.Fatalf("identity of %.12s/%s never as expected: %+v", containerID, podUID, id)
	return id
}

// TestCRIListAttributes: a container the runtime lists is named with its
// Kubernetes container name and image, and attributed to its pod, with
// the sandbox's labels over the container's.
func TestCRIListAttributes(t *testing.T) {
	c := New(Options{}, newCRISource(t, newFakeCRI()))
	run(t, c)
	id := eventually(t, c, apiID, podUID, func(id workload.Identity) bool { return id.Labels["app"] == "web" })
	if id.Container != "api" || id.Image != "registry.example.com/shop/api:1.2" || id.Pod != "web-0" || id.Namespace != "shop" || id.Labels["tier"] != "front" || id.Labels[LabelContainerName] != "api" {
		t.Fatalf("identity %+v labels %v", id, id.Labels)
	}
	// The pod's own cgroup (no container id) is named by its uid.
	pod := workload.Identity{PodUID: podUID}
	c.Enrich(context.Background(), &pod)
	if pod.Pod != "web-0" || pod.Namespace != "shop" || pod.Container != "" || pod.Labels["app"] != "web" {
		t.Fatalf("pod identity %+v", pod)
	}
	if got := id.Name(); got != "shop/web-0" {
		t.Fatalf("Name %q, want shop/web-0", got)
	}
}

// TestCRIEvents: a pod and a container created after the list arrive
// through GetContainerEvents, and OnChange names them.
func TestCRIEvents(t *testing.T) {
	f := newFakeCRI()
	c := New(Options{}, newCRISource(t, f))
	changed := make(chan [2]string, 16)
	c.OnChange(func(cid, uid string) { changed <- [2]string{cid, uid} })
	run(t, c)
	eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Container == "api" })

	md := &cri.PodSandboxMetadata{Name: "job-7", Namespace: "batch", Uid: newPodUID}
	sb := &cri.PodSandboxStatus{Id: newSbID, Metadata: md, Labels: map[string]string{"app": "job", LabelPodUID: newPodUID}}
	f.events <- &cri.ContainerEventResponse{ContainerId: newSbID, ContainerEventType: cri.ContainerEventType_CONTAINER_CREATED_EVENT, PodSandboxStatus: sb}
	f.events <- &cri.ContainerEventResponse{
		ContainerId: newID, ContainerEventType: cri.ContainerEventType_CONTAINER_CREATED_EVENT, PodSandboxStatus: sb,
		ContainersStatuses: []*cri.ContainerStatus{{Id: newID, Metadata: &cri.ContainerMetadata{Name: "worker"}, Image: &cri.ImageSpec{Image: "docker.io/library/python:3.12"}}},
	}
	id := eventually(t, c, newID, "", func(id workload.Identity) bool { return id.Container == "worker" })
	if id.Pod != "job-7" || id.Namespace != "batch" || id.PodUID != newPodUID || id.Image != "docker.io/library/python:3.12" || id.Labels["app"] != "job" {
		t.Fatalf("identity %+v labels %v", id, id.Labels)
	}
	seen := map[[2]string]bool{}
	for len(changed) > 0 {
		seen[<-changed] = true
	}
	if !seen[[2]string{"", newPodUID}] || !seen[[2]string{newID, ""}] {
		t.Fatalf("OnChange calls %v: want the new pod and the new container", seen)
	}

	// Deleted: forgotten (and the runtime no longer knows it either).
	f.events <- &cri.ContainerEventResponse{ContainerId: newID, ContainerEventType: cri.ContainerEventType_CONTAINER_DELETED_EVENT}
	eventually(t, c, newID, "", func(id workload.Identity) bool { return id.Container == "" })
}

// TestCRIPollWithoutEvents: a runtime without GetContainerEvents is
// listed again every PollInterval.
func TestCRIPollWithoutEvents(t *testing.T) {
	f := newFakeCRI()
	f.noEvents = true
	c := New(Options{}, newCRISource(t, f))
	run(t, c)
	eventually(t, c, apiID, "", func(id workload.Identity) bool { return id.Container == "api" })
	f.mu.Lock()
	f.containers = append(f.containers, &cri.Container{Id: newID, PodSandboxId: sandboxID, Metadata: &cri.ContainerMetadata{Name: "sidecar"}, Image: &cri.ImageSpec{Image: "envoy:1"}, Labels: kubeletLabels("web-0", "shop", podUID, "sidecar")})
	f.mu.Unlock()
	id := eventually(t, c, newID, "", func(id workload.Identity) bool { return id.Container == "sidecar" })
	if id.Pod != "web-0" || id.Namespace != "shop" {
		t.Fatalf("identity %+v", id)
	}
}

// TestCRIMissAsksRuntime: a container the cache has not heard of is
// looked up with ContainerStatus (the sandbox with PodSandboxStatus),
// once while the miss is remembered.
func TestCRIMissAsksRuntime(t *testing.T) {
	f := newFakeCRI()
	now := time.Unix(1000, 0)
	c := New(Options{Now: func() time.Time { return now }}, newCRISource(t, f)) // not run: no list, no events
	id := workload.Identity{ContainerID: apiID}
	c.Enrich(context.Background(), &id)
	if id.Container != "api" || id.Pod != "web-0" || id.Namespace != "shop" || id.Labels["app"] != "web" {
		t.Fatalf("identity %+v labels %v", id, id.Labels)
	}
	sb := workload.Identity{ContainerID: sandboxID}
	c.Enrich(context.Background(), &sb)
	if sb.Container != "" || sb.Pod != "web-0" || sb.PodUID != podUID {
		t.Fatalf("sandbox identity %+v", sb)
	}
	for range 3 {
		unknown := workload.Identity{ContainerID: newID}
		c.Enrich(context.Background(), &unknown)
		if unknown.Container != "" || unknown.Pod != "" {
			t.Fatalf("unknown container named: %+v", unknown)
		}
	}
	f.mu.Lock()
	hits := f.statusHits
	f.mu.Unlock()
	if hits != 3 { // api, the sandbox (tried as a container first), the unknown one once
		t.Fatalf("ContainerStatus called %d times, want 3 (a miss is remembered)", hits)
	}
}

// TestCRINotServed: a socket that serves gRPC but not the CRI stops the
// source for good instead of retrying forever.
func TestCRINotServed(t *testing.T) {
	path := serve(t, func(*grpc.Server) {})
	src, err := NewCRI(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	err = src.Run(context.Background(), New(Options{}))
	var perm *PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("Run: %v, want a PermanentError", err)
	}
}

// TestCacheBounded: the cache keeps at most Size containers.
func TestCacheBounded(t *testing.T) {
	c := New(Options{Size: 2})
	for _, id := range []string{apiID, newID, sandboxID} {
		c.PutContainer(Info{ID: id, Name: id[:3]})
	}
	if c.containers.Len() != 2 {
		t.Fatalf("%d containers kept, want 2", c.containers.Len())
	}
	if _, ok := c.containers.Peek(apiID); ok {
		t.Fatal("the oldest container was kept")
	}
	// A pod update merges: a source that knows no labels keeps them.
	c.PutPod(Pod{UID: podUID, Name: "web-0", Labels: map[string]string{"app": "web"}})
	c.PutPod(Pod{UID: podUID, Namespace: "shop"})
	p, _ := c.pods.Peek(podUID)
	if p.Name != "web-0" || p.Namespace != "shop" || !maps.Equal(p.Labels, map[string]string{"app": "web"}) {
		t.Fatalf("merged pod %+v", p)
	}
}
