package containers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI is the kubelet's container runtime (containerd, CRI-O) through its
// CRI RuntimeService over a unix socket: ListPodSandbox and
// ListContainers at start, then GetContainerEvents (pod sandboxes and
// containers as they are created, started and deleted); where the runtime
// has no event stream, the lists every PollInterval.
type CRI struct {
	socket string
	conn   *grpc.ClientConn
	rs     cri.RuntimeServiceClient
	// PollInterval is how often the lists are read again without an
	// event stream; 2s when zero.
	PollInterval time.Duration
}

// maxCRIMessage bounds one message from the runtime (a list of every
// container of a busy node).
const maxCRIMessage = 64 << 20

// NewCRI returns the CRI source for the runtime socket at path (e.g.
// /run/containerd/containerd.sock). Nothing is dialled until it is used.
func NewCRI(path string) (*CRI, error) {
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxCRIMessage)))
	if err != nil {
		return nil, fmt.Errorf("cri client for %s: %w", path, err)
	}
	return &CRI{socket: path, conn: conn, rs: cri.NewRuntimeServiceClient(conn)}, nil
}

// Close closes the connection to the runtime.
func (c *CRI) Close() error { return c.conn.Close() }

// Name is "cri".
func (c *CRI) Name() string { return "cri" }

// Run lists the pods and containers into sink and follows the runtime's
// events. A runtime that does not serve the CRI (Unimplemented on the
// first list) is a PermanentError.
func (c *CRI) Run(ctx context.Context, sink Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := c.rs.GetContainerEvents(ctx, &cri.GetEventsRequest{})
	if err := c.list(ctx, sink); err != nil {
		if status.Code(err) == codes.Unimplemented {
			return &PermanentError{Err: fmt.Errorf("cri on %s: the runtime does not serve runtime.v1.RuntimeService: %w", c.socket, err)}
		}
		return err
	}
	if err == nil {
		var ev *cri.ContainerEventResponse
		for {
			ev, err = events.Recv()
			if err != nil {
				break
			}
			c.event(ev, sink)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if status.Code(err) != codes.Unimplemented {
			if errors.Is(err, io.EOF) {
				err = errors.New("event stream ended")
			}
			return fmt.Errorf("cri events on %s: %w", c.socket, err)
		}
	}
	// No event stream: poll.
	every := c.PollInterval
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := c.list(ctx, sink); err != nil {
				return err
			}
		}
	}
}

// list puts every pod sandbox and container the runtime has into sink.
func (c *CRI) list(ctx context.Context, sink Sink) error {
	pods, err := c.rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("cri ListPodSandbox on %s: %w", c.socket, err)
	}
	byID := map[string]*cri.PodSandboxMetadata{}
	for _, p := range pods.Items {
		if p.Metadata == nil {
			continue
		}
		byID[p.Id] = p.Metadata
		sink.PutPod(Pod{UID: p.Metadata.Uid, Name: p.Metadata.Name, Namespace: p.Metadata.Namespace, Labels: nonNil(p.Labels)})
		sink.PutContainer(sandboxInfo(p.Id, p.Metadata, p.Labels))
	}
	cs, err := c.rs.ListContainers(ctx, &cri.ListContainersRequest{})
	if err != nil {
		return fmt.Errorf("cri ListContainers on %s: %w", c.socket, err)
	}
	for _, ct := range cs.Containers {
		in := Info{ID: ct.Id, Labels: ct.Labels, Image: imageName(ct.Image, ct.ImageRef)}
		if ct.Metadata != nil {
			in.Name = ct.Metadata.Name
		}
		if md := byID[ct.PodSandboxId]; md != nil {
			in.PodUID, in.Pod, in.Namespace = md.Uid, md.Name, md.Namespace
		}
		sink.PutContainer(in)
	}
	return nil
}

// event applies one container event: a sandbox's or a container's
// creation or start puts the pod (with its labels) and the container; a
// deletion forgets it.
func (c *CRI) event(ev *cri.ContainerEventResponse, sink Sink) {
	if ev.ContainerEventType == cri.ContainerEventType_CONTAINER_DELETED_EVENT {
		sink.RemoveContainer(ev.ContainerId)
		if s := ev.PodSandboxStatus; s != nil && s.Id == ev.ContainerId && s.Metadata != nil {
			sink.RemovePod(s.Metadata.Uid)
		}
		return
	}
	var md *cri.PodSandboxMetadata
	if s := ev.PodSandboxStatus; s != nil && s.Metadata != nil {
		md = s.Metadata
		sink.PutPod(Pod{UID: md.Uid, Name: md.Name, Namespace: md.Namespace, Labels: nonNil(s.Labels)})
		if s.Id == ev.ContainerId {
			sink.PutContainer(sandboxInfo(s.Id, md, s.Labels))
		}
	}
	for _, st := range ev.ContainersStatuses {
		if st == nil || st.Id == "" {
			continue
		}
		sink.PutContainer(statusInfo(st, md))
	}
}

// Container asks the runtime about container id: ContainerStatus, or,
// for a pod's sandbox id, PodSandboxStatus.
func (c *CRI) Container(ctx context.Context, id string) (Info, error) {
	r, err := c.rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id})
	if err == nil && r.Status != nil {
		in := statusInfo(r.Status, nil)
		if in.PodUID == "" {
			in = fromKubeletLabels(in)
		}
		return in, nil
	}
	if err != nil && status.Code(err) != codes.NotFound {
		return Info{}, fmt.Errorf("cri ContainerStatus %s: %w", id, err)
	}
	s, err := c.rs.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: id})
	if status.Code(err) == codes.NotFound || (err == nil && (s.Status == nil || s.Status.Metadata == nil)) {
		return Info{}, ErrNotFound
	}
	if err != nil {
		return Info{}, fmt.Errorf("cri PodSandboxStatus %s: %w", id, err)
	}
	return sandboxInfo(s.Status.Id, s.Status.Metadata, s.Status.Labels), nil
}

// Pod finds the pod's sandbox by the kubelet's uid label.
func (c *CRI) Pod(ctx context.Context, uid string) (Pod, error) {
	r, err := c.rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{LabelSelector: map[string]string{LabelPodUID: uid}}})
	if err != nil {
		return Pod{}, fmt.Errorf("cri ListPodSandbox uid %s: %w", uid, err)
	}
	for _, p := range r.Items {
		if p.Metadata != nil && p.Metadata.Uid == uid {
			return Pod{UID: uid, Name: p.Metadata.Name, Namespace: p.Metadata.Namespace, Labels: nonNil(p.Labels)}, nil
		}
	}
	return Pod{}, ErrNotFound
}

// sandboxInfo is a pod's sandbox (pause) container: in the pod, with no
// container name of its own.
func sandboxInfo(id string, md *cri.PodSandboxMetadata, labels map[string]string) Info {
	return Info{ID: id, PodUID: md.Uid, Pod: md.Name, Namespace: md.Namespace, Labels: labels}
}

func statusInfo(st *cri.ContainerStatus, md *cri.PodSandboxMetadata) Info {
	in := Info{ID: st.Id, Labels: st.Labels, Image: imageName(st.Image, st.ImageRef)}
	if st.Metadata != nil {
		in.Name = st.Metadata.Name
	}
	if md != nil {
		in.PodUID, in.Pod, in.Namespace = md.Uid, md.Name, md.Namespace
	}
	return in
}

// imageName is the image as the pod spec named it where the runtime says
// so, else the image reference.
func imageName(spec *cri.ImageSpec, ref string) string {
	if spec != nil {
		if spec.UserSpecifiedImage != "" {
			return spec.UserSpecifiedImage
		}
		if spec.Image != "" {
			return spec.Image
		}
	}
	return ref
}

// nonNil makes "no labels" a known, empty set (PutPod keeps labels it
// already has only for nil).
func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

var _ Source = (*CRI)(nil)
