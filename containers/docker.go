package containers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Docker is the Docker Engine API over its unix socket: the few calls
// the cache needs (list, inspect, the event stream), in the API's own
// JSON, with nothing else of the Docker client.
type Docker struct {
	socket string
	hc     *http.Client
}

// maxDockerBody bounds one answer read from the API (a list of every
// container of a busy node fits many times over).
const maxDockerBody = 64 << 20

// NewDocker returns the Docker source for the API socket at path
// (normally /var/run/docker.sock).
func NewDocker(path string) *Docker {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns: 2,
	}
	return &Docker{socket: path, hc: &http.Client{Transport: tr}}
}

// Name is "docker".
func (d *Docker) Name() string { return "docker" }

// dockerContainer is the part of GET /containers/{id}/json used here.
type dockerContainer struct {
	ID     string `json:"Id"`
	Name   string `json:"Name"`
	Config struct {
		Image  string            `json:"Image"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
}

// dockerListed is one entry of GET /containers/json.
type dockerListed struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	Image  string            `json:"Image"`
	Labels map[string]string `json:"Labels"`
}

// dockerEvent is one message of GET /events. A container's events carry
// its labels in Attributes, with its "name" and "image" over any label
// of those names.
type dockerEvent struct {
	Type   string `json:"Type"`
	Action string `json:"Action"`
	Actor  struct {
		ID         string            `json:"ID"`
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
}

// fromCreateEvent is what a create event says of its container: its
// name, image and labels, as the daemon copies them into the event's
// attributes. A label named "name" or "image" is not among them (the
// attribute of that name is the container's); the inspect that follows
// brings it.
func fromCreateEvent(ev *dockerEvent) (Info, bool) {
	attrs := ev.Actor.Attributes
	name, image := attrs["name"], attrs["image"]
	if name == "" || image == "" {
		return Info{}, false
	}
	labels := make(map[string]string, len(attrs))
	for k, v := range attrs {
		if k != "name" && k != "image" {
			labels[k] = v
		}
	}
	return Info{ID: ev.Actor.ID, Name: name, Image: image, Labels: labels}, true
}

func (d *Docker) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker GET %s on %s: %w", strings.SplitN(path, "?", 2)[0], d.socket, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		resp.Body.Close()
		return nil, ErrNotFound
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("docker GET %s: %s: %s", strings.SplitN(path, "?", 2)[0], resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

func (d *Docker) getJSON(ctx context.Context, path string, v any) error {
	resp, err := d.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxDockerBody)).Decode(v); err != nil {
		return fmt.Errorf("docker GET %s: decode: %w", strings.SplitN(path, "?", 2)[0], err)
	}
	return nil
}

// Container inspects container id.
func (d *Docker) Container(ctx context.Context, id string) (Info, error) {
	var c dockerContainer
	if err := d.getJSON(ctx, "/containers/"+url.PathEscape(id)+"/json", &c); err != nil {
		return Info{}, err
	}
	return Info{ID: c.ID, Name: strings.TrimPrefix(c.Name, "/"), Image: c.Config.Image, Labels: c.Config.Labels}, nil
}

// Pod finds a container the kubelet labelled with the pod's uid and names
// the pod from its labels (Docker knows no pod labels).
func (d *Docker) Pod(ctx context.Context, uid string) (Pod, error) {
	f, _ := json.Marshal(map[string][]string{"label": {LabelPodUID + "=" + uid}})
	var list []dockerListed
	if err := d.getJSON(ctx, "/containers/json?all=1&filters="+url.QueryEscape(string(f)), &list); err != nil {
		return Pod{}, err
	}
	for _, c := range list {
		if in := fromKubeletLabels(Info{Labels: c.Labels}); in.PodUID == uid && in.Pod != "" {
			return Pod{UID: uid, Name: in.Pod, Namespace: in.Namespace}, nil
		}
	}
	return Pod{}, ErrNotFound
}

// Run follows the event stream (opened first, so nothing is missed
// between the list and the stream), lists every container, then inspects
// each container that is created or started and forgets each destroyed
// one, until ctx is done or the stream ends. A created container is put
// in the cache from its create event first: `docker run` starts it at
// once, and the daemon's inspect waits for the container's lock, which
// the start holds while runc makes the cgroup and starts the process: an
// inspect's answer can come after the container's first connect, too
// late for the agent to select it in time (agent/doc.go).
func (d *Docker) Run(ctx context.Context, sink Sink) error {
	f, _ := json.Marshal(map[string][]string{"type": {"container"}, "event": {"create", "start", "rename", "destroy"}})
	resp, err := d.get(ctx, "/events?filters="+url.QueryEscape(string(f)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var list []dockerListed
	if err := d.getJSON(ctx, "/containers/json?all=1", &list); err != nil {
		return err
	}
	for _, c := range list {
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		sink.PutContainer(Info{ID: c.ID, Name: name, Image: c.Image, Labels: c.Labels})
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev dockerEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("docker events on %s: %w", d.socket, err)
		}
		if ev.Type != "container" || ev.Actor.ID == "" {
			continue
		}
		switch ev.Action {
		case "destroy":
			sink.RemoveContainer(ev.Actor.ID)
		default: // create, start, rename
			if ev.Action == "create" {
				if in, ok := fromCreateEvent(&ev); ok {
					sink.PutContainer(in)
				}
			}
			in, err := d.Container(ctx, ev.Actor.ID)
			if errors.Is(err, ErrNotFound) {
				continue // gone already
			}
			if err != nil {
				return err
			}
			sink.PutContainer(in)
		}
	}
}

var _ Source = (*Docker)(nil)
