package cgroup2

import (
	"errors"
	"os"
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
