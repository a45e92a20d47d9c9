package cgroup2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// ErrNoEntry is returned when a /proc/PID/cgroup file has no cgroup v2
// ("0::") line: the process is only in cgroup v1 hierarchies.
var ErrNoEntry = errors.New("no cgroup v2 entry (0::) in the process's cgroup file")

// parseProcCgroup returns the cgroup v2 path of a /proc/PID/cgroup file:
// the "0::/path" line, cleaned ("/" for the root). The path is relative to
// the cgroup2 mount as the reader's cgroup namespace sees it. A cgroup that
// was removed is shown with a " (deleted)" suffix, which is dropped.
//
// In cgroup v1 lines ("4:memory:/x") the hierarchy id is never 0, so the
// first "0::" line is the unified hierarchy's, hybrid hosts included.
func parseProcCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4<<10), 1<<20)
	for sc.Scan() {
		p, ok := strings.CutPrefix(sc.Text(), "0::")
		if !ok {
			continue
		}
		p = strings.TrimSuffix(p, " (deleted)")
		if !strings.HasPrefix(p, "/") {
			return "", fmt.Errorf("read cgroup v2 entry %q: not an absolute path", p)
		}
		return path.Clean(p), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read cgroup v2 entry: %w", err)
	}
	return "", ErrNoEntry
}
