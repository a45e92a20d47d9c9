//go:build !linux

package launch

import (
	"fmt"
	"os"
)

// Child is not supported outside Linux (see Run).
func Child(args []string) int {
	fmt.Fprintln(os.Stderr, "sluice run: not supported on this OS (needs Linux with cgroup v2 and eBPF)")
	return 126
}
