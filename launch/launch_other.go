//go:build !linux

package launch

import (
	"context"
	"errors"
)

// Run is not supported outside Linux: interception needs cgroup v2 and eBPF.
func Run(ctx context.Context, o Options) (int, error) {
	return 1, errors.New("sluice run: not supported on this OS (needs Linux with cgroup v2 and eBPF)")
}
