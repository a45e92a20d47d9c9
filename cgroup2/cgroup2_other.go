//go:build !linux

package cgroup2

// Mount returns ErrNotSupported: cgroup v2 is Linux only.
func Mount() (string, error) { return "", ErrNotSupported }

// Self returns ErrNotSupported: cgroup v2 is Linux only.
func Self() (string, error) { return "", ErrNotSupported }

// OfProcess returns ErrNotSupported: cgroup v2 is Linux only.
func OfProcess(pid int) (string, error) { return "", ErrNotSupported }

// ID returns ErrNotSupported: cgroup v2 is Linux only.
func ID(dir string) (uint64, error) { return 0, ErrNotSupported }
