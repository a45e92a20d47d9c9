package cgroup2

import (
	"errors"
	"strings"
	"testing"
)

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name, file, want string
		err              error
	}{
		{"unified", "0::/user.slice/session-3.scope\n", "/user.slice/session-3.scope", nil},
		{"hybrid: v1 lines first", "12:pids:/user.slice\n4:memory:/x\n1:name=systemd:/user.slice\n0::/user.slice/session-3.scope\n", "/user.slice/session-3.scope", nil},
		{"root", "0::/\n", "/", nil},
		{"not clean", "0::/a//b/\n", "/a/b", nil},
		{"removed cgroup", "0::/a/b (deleted)\n", "/a/b", nil},
		{"v1 only", "12:pids:/user.slice\n4:memory:/x\n", "", ErrNoEntry},
		{"empty", "", "", ErrNoEntry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcCgroup(strings.NewReader(tt.file))
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Fatalf("parseProcCgroup = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
	if _, err := parseProcCgroup(strings.NewReader("0::relative\n")); err == nil {
		t.Error("a relative path was accepted")
	}
}
