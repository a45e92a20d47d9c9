package containers

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/sluicehq/sluice/kubeapi"
)

// Kube is the Kubernetes API as the fallback for pod labels (the CRI
// knows the labels a pod was created with; the API knows them now): the
// pods scheduled on this node (fieldSelector spec.nodeName), listed and
// then watched, over plain HTTPS with the service account's bearer token.
// It needs get, list and watch on pods.
type Kube struct {
	api *kubeapi.Client
	// Node is this node's name (the downward API's spec.nodeName).
	Node string
}

// maxKubeObject bounds one JSON value read from the API: a list of a
// node's pods, or one watch event.
const maxKubeObject = 64 << 20

// InCluster returns the source for the API server the pod's environment
// names (kubeapi.InCluster), for node. ok is false outside a cluster.
func InCluster(node string) (k *Kube, ok bool, err error) {
	api, ok, err := kubeapi.InCluster()
	if !ok || err != nil {
		return nil, ok, err
	}
	return &Kube{api: api, Node: node}, true, nil
}

// NewKube returns the source for the API server at server, for node,
// authenticating with the token in tokenFile (none when empty).
func NewKube(server, node, tokenFile string, tc *tls.Config) *Kube {
	return &Kube{api: kubeapi.New(server, tokenFile, tc), Node: node}
}

// Name is "kubernetes".
func (k *Kube) Name() string { return "kubernetes" }

// Container: the API names pods, not containers.
func (k *Kube) Container(context.Context, string) (Info, error) { return Info{}, ErrNotFound }

// Pod: pods come through the watch only (a miss is not worth a request).
func (k *Kube) Pod(context.Context, string) (Pod, error) { return Pod{}, ErrNotFound }

// kubePod is the part of a v1.Pod used here.
type kubePod struct {
	Metadata struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		UID       string            `json:"uid"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
}

type kubePodList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []kubePod `json:"items"`
}

type kubeWatchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

func (k *Kube) request(ctx context.Context, query url.Values) (*http.Response, error) {
	query.Set("fieldSelector", "spec.nodeName="+k.Node)
	resp, err := k.api.Do(ctx, http.MethodGet, "/api/v1/pods", query, nil)
	if err != nil {
		err = fmt.Errorf("list pods of node %s: %w", k.Node, err)
		if code := kubeapi.StatusCode(err); code == http.StatusUnauthorized || code == http.StatusForbidden {
			err = fmt.Errorf("%w (the agent's service account needs get, list and watch on pods)", err)
		}
		return nil, err
	}
	return resp, nil
}

// Run lists the node's pods into sink, then watches them from the list's
// resourceVersion until the watch ends (the API server ends watches
// after a while; the Cache runs it again, listing anew).
func (k *Kube) Run(ctx context.Context, sink Sink) error {
	if k.Node == "" {
		return &PermanentError{Err: errors.New("kubernetes api: the node name is unknown: set agent.runtime.nodeName or NODE_NAME")}
	}
	resp, err := k.request(ctx, url.Values{})
	if err != nil {
		return err
	}
	var list kubePodList
	err = json.NewDecoder(io.LimitReader(resp.Body, maxKubeObject)).Decode(&list)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("kubernetes api: decode pod list: %w", err)
	}
	for _, p := range list.Items {
		sink.PutPod(p.pod())
	}
	resp, err = k.request(ctx, url.Values{"watch": {"1"}, "resourceVersion": {list.Metadata.ResourceVersion}, "allowWatchBookmarks": {"true"}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev kubeWatchEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return errors.New("kubernetes api: watch ended")
			}
			return fmt.Errorf("kubernetes api: watch pods: %w", err)
		}
		if len(ev.Object) > maxKubeObject {
			continue
		}
		switch ev.Type {
		case "ADDED", "MODIFIED":
			var p kubePod
			if err := json.Unmarshal(ev.Object, &p); err == nil {
				sink.PutPod(p.pod())
			}
		case "DELETED":
			var p kubePod
			if err := json.Unmarshal(ev.Object, &p); err == nil {
				sink.RemovePod(p.Metadata.UID)
			}
		case "ERROR": // e.g. 410 Gone: the resourceVersion is too old; list anew
			return fmt.Errorf("kubernetes api: watch pods: %s", strings.TrimSpace(string(ev.Object)))
		}
	}
}

func (p kubePod) pod() Pod {
	return Pod{UID: p.Metadata.UID, Name: p.Metadata.Name, Namespace: p.Metadata.Namespace, Labels: nonNil(p.Metadata.Labels)}
}

var _ Source = (*Kube)(nil)
