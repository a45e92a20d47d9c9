package cgroup2

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestParseMount(t *testing.T) {
	tests := []struct {
		file, want string
		err        error
	}{
		{"mountinfo-hybrid", "/sys/fs/cgroup/unified", nil},
		{"mountinfo-unified", "/sys/fs/cgroup", nil},
		{"mountinfo-container", "/host cgroup", nil},
		{"mountinfo-escaped", "/mnt/my cgroup", nil},
		{"mountinfo-nested-only", "/sys/fs/cgroup", nil},
		{"mountinfo-v1only", "", ErrNoCgroup2},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			f, err := os.Open("testdata/" + tt.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := parseMount(f)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("parseMount = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func FuzzParseMount(f *testing.F) {
	for _, n := range []string{"mountinfo-hybrid", "mountinfo-unified", "mountinfo-container", "mountinfo-escaped"} {
		b, err := os.ReadFile("testdata/" + n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseMount(strings.NewReader(s))
		if err == nil && got == "" {
			t.Fatal("no error and no mount point")
		}
	})
}

// The child's cgroup view is every cgroup and cgroup2 mount, and whatever
// is mounted at /sys/fs/cgroup or below (a hybrid layout's tmpfs), each
// once, escapes undone.
func TestViewMounts(t *testing.T) {
	const mountinfo = `22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
67 41 0:38 / /sys/fs/cgroup/unified ro,relatime - cgroup2 cgroup2 rw
70 1 0:38 / /run/my\040cgroups rw - cgroup2 cgroup2 rw,nsdelegate
71 1 0:40 / /sys/fs/cgroupx rw - tmpfs tmpfs rw
malformed line
`
	got := ViewMounts(strings.NewReader(mountinfo))
	want := []string{"/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified", "/run/my cgroups"}
	if !slices.Equal(got, want) {
		t.Errorf("ViewMounts = %q, want %q", got, want)
	}
}
