package launch

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeChild stands for the child process: it records the signals it gets
// and exits (sends on waited) on the first one in exitOn.
type fakeChild struct {
	mu     sync.Mutex
	got    []os.Signal
	exitOn []os.Signal
	waited chan error
}

func (f *fakeChild) Signal(s os.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, s)
	if slices.Contains(f.exitOn, s) {
		f.waited <- errors.New("signal: " + s.String())
	}
	return nil
}

func TestStopSequence(t *testing.T) {
	o := Options{InterruptWait: 20 * time.Millisecond, StopGrace: 20 * time.Millisecond}
	tests := []struct {
		name       string
		exitsFirst bool        // exits before ctx ends
		exitsOnInt bool        // exits by itself once ctx ends (the terminal's Ctrl-C)
		exitOn     []os.Signal // signals from sluice it dies of
		want       []os.Signal
	}{
		{"exits before ctx ends", true, false, nil, nil},
		{"exits on the terminal's interrupt", false, true, nil, nil},
		{"ignores interrupt, exits on SIGTERM", false, false, []os.Signal{syscall.SIGTERM}, []os.Signal{syscall.SIGTERM}},
		{"ignores SIGTERM too", false, false, []os.Signal{syscall.SIGKILL}, []os.Signal{syscall.SIGTERM, syscall.SIGKILL}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeChild{exitOn: tt.exitOn, waited: make(chan error, 1)}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.exitsFirst {
				f.waited <- nil
			} else {
				cancel()
				if tt.exitsOnInt {
					f.waited <- errors.New("signal: interrupt")
				}
			}
			stop(ctx, f, f.waited, o)
			f.mu.Lock()
			defer f.mu.Unlock()
			if !slices.Equal(f.got, tt.want) {
				t.Errorf("signals sent %v, want %v", f.got, tt.want)
			}
		})
	}
}

func TestWaitsDefaults(t *testing.T) {
	i, g := Options{}.waits()
	if i != 2*time.Second || g != 10*time.Second {
		t.Errorf("defaults %v, %v; want 2s, 10s", i, g)
	}
}
