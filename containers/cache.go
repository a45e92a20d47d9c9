package containers

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// Source is one view of the node's containers: a runtime (Docker, the
// CRI) or the Kubernetes API.
type Source interface {
	// Name names the source in logs: "docker", "cri", "kubernetes".
	Name() string
	// Run puts everything the source knows into sink, then follows its
	// events into sink until ctx is done or the connection ends, and
	// returns why it stopped. Run may be called again after it returned
	// (the Cache does, with back-off), unless the error is Permanent.
	Run(ctx context.Context, sink Sink) error
	// Container asks the source about container id now. It returns
	// ErrNotFound when the source does not know it.
	Container(ctx context.Context, id string) (Info, error)
	// Pod asks the source about the pod with uid now; ErrNotFound when
	// it does not know it.
	Pod(ctx context.Context, uid string) (Pod, error)
}

// Sink receives what a Source sees. The Cache is one.
type Sink interface {
	PutContainer(Info)
	PutPod(Pod)
	RemoveContainer(id string)
	RemovePod(uid string)
}

// PermanentError is a Run error after which the source is not run again
// (the socket is not this runtime's API, the API refuses the agent).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Options configure a Cache. Zero values take the defaults.
type Options struct {
	// Size bounds the containers and, separately, the pods kept (LRU);
	// default 16384.
	Size int
	// LookupTimeout bounds one lookup of an unknown container or pod in
	// the sources; default 500ms.
	LookupTimeout time.Duration
	// MissTTL is how long a container or pod no source knew is not asked
	// about again; default 5s.
	MissTTL time.Duration
	Log     *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Cache holds what the sources said about containers and pods, bounded.
// Its methods are safe for concurrent use.
type Cache struct {
	o       Options
	sources []Source
	log     *slog.Logger

	containers *lru.Cache[string, Info]
	pods       *lru.Cache[string, Pod]
	misses     *lru.Cache[string, time.Time]
	flight     singleflight.Group

	mu       sync.Mutex
	onChange []func(containerID, podUID string)
}

// New returns a cache fed by sources (none: it knows nothing, and
// Enrich leaves identities as they are).
func New(o Options, sources ...Source) *Cache {
	if o.Size <= 0 {
		o.Size = 16384
	}
	if o.LookupTimeout <= 0 {
		o.LookupTimeout = 500 * time.Millisecond
	}
	if o.MissTTL <= 0 {
		o.MissTTL = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Cache{o: o, sources: sources, log: o.Log.With(audit.KeyComponent, audit.ComponentContainers)}
	c.containers, _ = lru.New[string, Info](o.Size)
	c.pods, _ = lru.New[string, Pod](o.Size)
	c.misses, _ = lru.New[string, time.Time](4096)
	return c
}

// Sources are the cache's sources, in the order given to New.
func (c *Cache) Sources() []Source { return c.sources }

// OnChange registers fn, called (on a source's goroutine, with no lock
// held) after a container or a pod was added or changed; one of its
// arguments is empty. The agent re-selects the cgroups they name.
func (c *Cache) OnChange(fn func(containerID, podUID string)) {
	c.mu.Lock()
	c.onChange = append(c.onChange, fn)
	c.mu.Unlock()
}

func (c *Cache) changed(containerID, podUID string) {
	c.mu.Lock()
	fns := c.onChange
	c.mu.Unlock()
	for _, fn := range fns {
		fn(containerID, podUID)
	}
}

// Run runs every source until ctx is done, restarting each after its
// Run returns (1s, doubling to 30s; back to 1s after a run that lasted a
// minute). It returns when ctx is done.
func (c *Cache) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range c.sources {
		wg.Go(func() { c.runSource(ctx, s) })
	}
	wg.Wait()
}

func (c *Cache) runSource(ctx context.Context, s Source) {
	backoff := time.Second
	for {
		start := time.Now()
		err := s.Run(ctx, c)
		if ctx.Err() != nil {
			return
		}
		var perm *PermanentError
		if errors.As(err, &perm) {
			c.log.Warn("container runtime source stopped", audit.KeyRuntime, s.Name(), audit.KeyError, err)
			return
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		c.log.Warn("container runtime source failed, retrying", audit.KeyRuntime, s.Name(), audit.KeyError, err, audit.KeyRetryIn, backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// PutContainer adds or replaces a container, and its pod's name and
// namespace where the container names them.
func (c *Cache) PutContainer(in Info) { c.putContainer(in, true) }

// putContainer is PutContainer; notify false leaves OnChange out (a
// lookup on a miss: the caller is about to use what it found).
func (c *Cache) putContainer(in Info, notify bool) {
	in = fromKubeletLabels(in)
	if old, ok := c.containers.Peek(in.ID); ok && sameInfo(old, in) {
		return
	}
	c.containers.Add(in.ID, in)
	c.misses.Remove(in.ID)
	if in.PodUID != "" {
		c.mergePod(Pod{UID: in.PodUID, Name: in.Pod, Namespace: in.Namespace})
	}
	if notify {
		c.changed(in.ID, "")
	}
}

// PutPod adds a pod or merges what is new about it: a field left empty
// (nil labels) keeps what was known.
func (c *Cache) PutPod(p Pod) {
	if c.mergePod(p) {
		c.changed("", p.UID)
	}
}

func (c *Cache) mergePod(p Pod) (changed bool) {
	if p.UID == "" {
		return false
	}
	c.mu.Lock() // the read-merge-write of one pod
	defer c.mu.Unlock()
	old, ok := c.pods.Peek(p.UID)
	merged := old
	merged.UID = p.UID
	if p.Name != "" {
		merged.Name = p.Name
	}
	if p.Namespace != "" {
		merged.Namespace = p.Namespace
	}
	if p.Labels != nil {
		merged.Labels = p.Labels
	}
	if ok && merged.Name == old.Name && merged.Namespace == old.Namespace && maps.Equal(merged.Labels, old.Labels) {
		return false
	}
	c.pods.Add(p.UID, merged)
	c.misses.Remove("pod:" + p.UID)
	return true
}

// RemoveContainer forgets a container (it was destroyed).
func (c *Cache) RemoveContainer(id string) { c.containers.Remove(id) }

// RemovePod forgets a pod (it was deleted).
func (c *Cache) RemovePod(uid string) { c.pods.Remove(uid) }

func sameInfo(a, b Info) bool {
	return a.Name == b.Name && a.Image == b.Image && a.PodUID == b.PodUID && a.Pod == b.Pod &&
		a.Namespace == b.Namespace && maps.Equal(a.Labels, b.Labels)
}

// Container returns what is known about container id, asking the
// sources when the cache does not know it (see Options.LookupTimeout and
// MissTTL); ok is false when nobody knows it.
func (c *Cache) Container(ctx context.Context, id string) (Info, bool) {
	if in, ok := c.containers.Get(id); ok {
		return in, true
	}
	if len(c.sources) == 0 || c.missed(id) {
		return Info{}, false
	}
	v, _, _ := c.flight.Do(id, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.LookupTimeout)
		defer cancel()
		for _, s := range c.sources {
			in, err := s.Container(ctx, id)
			if err == nil {
				c.putContainer(in, false)
				in, _ = c.containers.Peek(id)
				return in, nil
			}
			if !errors.Is(err, ErrNotFound) {
				c.log.Debug("look up container", audit.KeyRuntime, s.Name(), audit.KeyContainerID, id, audit.KeyError, err)
			}
		}
		c.misses.Add(id, c.o.Now())
		return nil, nil
	})
	in, ok := v.(Info)
	return in, ok
}

// Pod returns what is known about the pod with uid, asking the sources
// when the cache does not know it or not its labels (a container's
// kubelet labels name a pod, not its labels); ok is false when nobody
// knows it.
func (c *Cache) Pod(ctx context.Context, uid string) (Pod, bool) {
	p, ok := c.pods.Get(uid)
	if ok && p.Labels != nil {
		return p, true
	}
	key := "pod:" + uid
	if len(c.sources) == 0 || c.missed(key) {
		return p, ok
	}
	v, _, _ := c.flight.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.LookupTimeout)
		defer cancel()
		for _, s := range c.sources {
			found, err := s.Pod(ctx, uid)
			if err == nil && found.Labels != nil {
				c.mergePod(found)
				found, _ = c.pods.Peek(uid)
				return found, nil
			}
			if err == nil {
				c.mergePod(found)
			}
		}
		c.misses.Add(key, c.o.Now())
		found, ok := c.pods.Peek(uid)
		if !ok {
			return nil, nil
		}
		return found, nil
	})
	got, ok := v.(Pod)
	return got, ok
}

func (c *Cache) missed(key string) bool {
	at, ok := c.misses.Peek(key)
	return ok && c.o.Now().Sub(at) < c.o.MissTTL
}

// Enrich fills id's container name, image, pod, namespace and labels
// from what the cache (and, on a miss, the sources) know about the
// container and pod its cgroup names (ContainerID, PodUID). It leaves id
// as it is when neither is set or nobody knows them.
func (c *Cache) Enrich(ctx context.Context, id *workload.Identity) {
	if id.ContainerID == "" && id.PodUID == "" {
		return
	}
	var in Info
	if id.ContainerID != "" {
		in, _ = c.Container(ctx, id.ContainerID)
	}
	podUID := id.PodUID
	if podUID == "" {
		podUID = in.PodUID
	}
	var pod Pod
	if podUID != "" {
		pod, _ = c.Pod(ctx, podUID)
	}
	id.Container, id.Image = in.Name, in.Image
	id.PodUID = podUID
	id.Pod, id.Namespace = first(pod.Name, in.Pod), first(pod.Namespace, in.Namespace)
	id.Labels = mergeLabels(in.Labels, pod.Labels)
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// mergeLabels is the pod's labels over the container's; it shares a map
// when only one is set.
func mergeLabels(container, pod map[string]string) map[string]string {
	switch {
	case len(pod) == 0:
		return container
	case len(container) == 0:
		return pod
	}
	m := make(map[string]string, len(container)+len(pod))
	maps.Copy(m, container)
	maps.Copy(m, pod)
	return m
}

// Close closes the sources that hold a connection. Run must have
// returned.
func (c *Cache) Close() error {
	var errs []error
	for _, s := range c.sources {
		if cl, ok := s.(interface{ Close() error }); ok {
			errs = append(errs, cl.Close())
		}
	}
	return errors.Join(errs...)
}
