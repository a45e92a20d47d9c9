package containers

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/sluicehq/sluice/config"
)

// The sockets "auto" looks for, in order.
var (
	autoDocker = []string{"/var/run/docker.sock", "/run/docker.sock"}
	autoCRI    = []string{"/run/containerd/containerd.sock", "/run/crio/crio.sock"}
)

// FromConfig returns the cache of agent.runtime: a source for each
// runtime configured (or, for "auto", found), and the Kubernetes API in a
// cluster. The sources are not run until Cache.Run. A socket named by
// path that is not there is an error; "auto" that finds none is not.
func FromConfig(r config.Runtime, log *slog.Logger) (*Cache, error) {
	var srcs []Source
	var errs []error
	if p, err := socket("agent.runtime.docker", r.Docker, autoDocker); err != nil {
		errs = append(errs, err)
	} else if p != "" {
		srcs = append(srcs, NewDocker(p))
	}
	if p, err := socket("agent.runtime.cri", r.CRI, autoCRI); err != nil {
		errs = append(errs, err)
	} else if p != "" {
		c, err := NewCRI(p)
		if err != nil {
			errs = append(errs, err)
		} else {
			srcs = append(srcs, c)
		}
	}
	if r.Kubernetes == "auto" {
		node := r.NodeName
		if node == "" {
			node = os.Getenv("NODE_NAME")
		}
		if node == "" {
			node, _ = os.Hostname()
		}
		k, ok, err := InCluster(node)
		switch {
		case err != nil:
			errs = append(errs, err)
		case ok:
			srcs = append(srcs, k)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return New(Options{Size: r.CacheSize, Log: log}, srcs...), nil
}

// socket resolves one runtime setting to a socket path ("" for none).
func socket(key, v string, auto []string) (string, error) {
	switch v {
	case "off", "":
		return "", nil
	case "auto":
		for _, p := range auto {
			if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
				return p, nil
			}
		}
		return "", nil
	}
	fi, err := os.Stat(v)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w; give the runtime's socket, \"auto\" or \"off\"", key, v, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return "", fmt.Errorf("%s %q: not a unix socket; give the runtime's socket, \"auto\" or \"off\"", key, v)
	}
	return v, nil
}
