package kubeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"sync"
)

// Secret is one Secret of the API, as a store of files by name that
// agents on many nodes share: read, created, or filled once where it was
// empty, each write conditional, so that of two agents writing at once
// one wins and the other learns it (ca.SharedStore).
type Secret struct {
	c               *Client
	Namespace, Name string
	// Labels are set on a Secret Put creates.
	Labels map[string]string

	mu          sync.Mutex
	last        map[string]json.RawMessage // the object Get read last, for Put to fill
	lastVersion string                     // its resourceVersion
}

// maxSecret bounds a Secret read from the API (the API's own limit is
// 1 MiB of data).
const maxSecret = 4 << 20

// Secret returns namespace/name.
func (c *Client) Secret(namespace, name string) *Secret {
	return &Secret{c: c, Namespace: namespace, Name: name}
}

func (s *Secret) String() string { return "secret " + s.Namespace + "/" + s.Name }

func (s *Secret) path() string {
	return "/api/v1/namespaces/" + url.PathEscape(s.Namespace) + "/secrets/" + url.PathEscape(s.Name)
}

// Get returns the Secret's data and resourceVersion; found is false
// when there is no such Secret.
func (s *Secret) Get(ctx context.Context) (files map[string][]byte, version string, found bool, err error) {
	resp, err := s.c.Do(ctx, http.MethodGet, s.path(), nil, nil)
	if err != nil {
		if StatusCode(err) == http.StatusNotFound {
			return nil, "", false, nil
		}
		return nil, "", false, s.refused(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSecret+1))
	if err != nil {
		return nil, "", false, fmt.Errorf("kubernetes api: read %s: %w", s, err)
	}
	if len(b) > maxSecret {
		return nil, "", false, fmt.Errorf("kubernetes api: read %s: larger than %d bytes", s, maxSecret)
	}
	var (
		obj  map[string]json.RawMessage
		meta struct {
			ResourceVersion string `json:"resourceVersion"`
		}
		data map[string][]byte // base64 in JSON
	)
	err = json.Unmarshal(b, &obj)
	if err == nil {
		err = json.Unmarshal(obj["metadata"], &meta)
	}
	if err == nil && obj["data"] != nil {
		err = json.Unmarshal(obj["data"], &data)
	}
	if err != nil {
		return nil, "", false, fmt.Errorf("kubernetes api: decode %s: %w", s, err)
	}
	s.mu.Lock()
	s.last, s.lastVersion = obj, meta.ResourceVersion
	s.mu.Unlock()
	return data, meta.ResourceVersion, true, nil
}

// Put creates the Secret (type Opaque) with files as its data when
// version is "", else replaces the data of the one Get read at version,
// keeping the rest of it. ok is false when another writer was first: the
// Secret already exists (409 AlreadyExists), or changed since version
// (409 Conflict).
func (s *Secret) Put(ctx context.Context, files map[string][]byte, version string) (ok bool, err error) {
	var (
		method = http.MethodPut
		path   = s.path()
		body   []byte
	)
	data, err := json.Marshal(files)
	if err != nil {
		return false, fmt.Errorf("kubernetes api: encode %s: %w", s, err)
	}
	if version == "" {
		method, path = http.MethodPost, "/api/v1/namespaces/"+url.PathEscape(s.Namespace)+"/secrets"
		meta := map[string]any{"name": s.Name, "namespace": s.Namespace}
		if len(s.Labels) > 0 {
			meta["labels"] = s.Labels
		}
		body, err = json.Marshal(map[string]any{
			"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": json.RawMessage(data),
		})
	} else {
		s.mu.Lock()
		obj, last := s.last, s.lastVersion
		s.mu.Unlock()
		if obj == nil || last != version {
			return false, fmt.Errorf("kubernetes api: update %s: version %q is not the one last read", s, version)
		}
		put := maps.Clone(obj)
		put["data"] = data // the resourceVersion in metadata makes the update conditional
		body, err = json.Marshal(put)
	}
	if err != nil {
		return false, fmt.Errorf("kubernetes api: encode %s: %w", s, err)
	}
	resp, err := s.c.Do(ctx, method, path, nil, body)
	if err != nil {
		if StatusCode(err) == http.StatusConflict {
			return false, nil
		}
		return false, s.refused(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxSecret))
	resp.Body.Close()
	return true, nil
}

// refused is err, with what the agent's role must allow when the API
// said it may not.
func (s *Secret) refused(err error) error {
	if code := StatusCode(err); code == http.StatusUnauthorized || code == http.StatusForbidden {
		return fmt.Errorf("%w (the agent's service account needs get, create and update on %s, as deploy/kubernetes/rbac.yaml grants)", err, s)
	}
	return err
}
