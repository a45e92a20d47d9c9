package cgroup2

import (
	"errors"
	"runtime"
)

// ErrNotSupported is returned, on systems other than Linux, by the
// functions that read /proc or cgroupfs.
var ErrNotSupported = errors.New("cgroup2: not supported on " + runtime.GOOS + " (needs Linux with cgroup v2)")
