package agent

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A HeldError names the live agent's pid, what it holds and the flag that
// overrides the refusal, and is found through errors.As.
func TestHeldErrorMessage(t *testing.T) {
	tests := []struct {
		err  *HeldError
		want string
	}{
		{&HeldError{Action: "clean up", PID: 4242, What: []string{"intercept address 169.254.77.77", "pins under /sys/fs/bpf/sluice"}},
			"clean up: intercept address 169.254.77.77, pins under /sys/fs/bpf/sluice held by the live agent with pid 4242; stop that agent first, or pass --force to remove them anyway"},
		{&HeldError{Action: "start agent", PID: 7, What: []string{"intercept address fdc5:1ce0:77::77"}},
			"start agent: intercept address fdc5:1ce0:77::77 held by the live agent with pid 7; stop that agent first, or pass --force to take them over anyway"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
		var he *HeldError
		if !errors.As(fmt.Errorf("wrapped: %w", errors.Join(tt.err)), &he) || he.PID != tt.err.PID {
			t.Errorf("errors.As did not find the HeldError in %v", tt.err)
		}
	}
}

// The start time is field 22 of /proc/PID/stat, counted after the last
// ')' since a command name may hold spaces and parentheses.
func TestParseStatStart(t *testing.T) {
	rest := "S 1 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 10000 100"
	tests := []struct {
		stat    string
		want    uint64
		wantErr string
	}{
		{"1 (systemd) " + rest, 987654, ""},
		{"77 (a) b (c)) " + rest, 987654, ""},
		{"77 (short) S 1 2", 0, "fields after the command name"},
		{"garbage", 0, "no command name"},
	}
	for _, tt := range tests {
		got, err := parseStatStart([]byte(tt.stat))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want one containing %q", tt.stat, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %d, %v; want %d", tt.stat, got, err, tt.want)
		}
	}
}
