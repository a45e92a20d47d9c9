package policy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Watcher reloads a policy file on SIGHUP and when its content changes.
//
// Changes are found by reading the file every Interval and comparing the
// bytes: this follows editors' rename-writes and Kubernetes ConfigMap
// symlink swaps (the path is re-resolved on every read) and needs no
// inotify. A new file that does not load is refused and logged with all
// its problems; the policy in force stays.
type Watcher struct {
	// Path is the policy file.
	Path string
	// Options compile each new Engine; set Options.Limiters so rate-limit
	// counters survive reloads.
	Options Options
	// Apply receives each newly compiled Engine (e.g. Current.Store).
	Apply func(*Engine)
	// Log receives reload outcomes. Nil: slog.Default().
	Log *slog.Logger
	// Interval between content checks. Zero: one second.
	Interval time.Duration
	// NoSignal disables SIGHUP handling (tests).
	NoSignal bool
	// Reloaded, when set, is called after every reload attempt with its
	// outcome (nil on success).
	Reloaded func(error)

	last   []byte
	loaded bool
}

// Load reads and compiles the file now, remembering its content as the
// one in force, so that a change made between Load and Start is not
// missed. It does not call Apply.
func (w *Watcher) Load() (*Engine, error) {
	b, err := os.ReadFile(w.Path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	e, err := ParseWith(b, w.Path, w.Options)
	if err != nil {
		return nil, err
	}
	w.last, w.loaded = b, true
	return e, nil
}

// Watch runs a Watcher until ctx is done; see Watcher.
func Watch(ctx context.Context, path string, o Options, apply func(*Engine), log *slog.Logger) {
	(&Watcher{Path: path, Options: o, Apply: apply, Log: log}).Run(ctx)
}

// Run watches until ctx is done; see Start.
func (w *Watcher) Run(ctx context.Context) { <-w.Start(ctx) }

// Start begins watching in a new goroutine and returns a channel closed
// when it has stopped (after ctx is done). SIGHUP is handled from the
// moment Start returns. Without a prior Load, the file's content when
// Start is called is taken as the one in force.
func (w *Watcher) Start(ctx context.Context) <-chan struct{} {
	log := w.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "policy", "file", w.Path)
	iv := w.Interval
	if iv <= 0 {
		iv = time.Second
	}
	var hup chan os.Signal
	if !w.NoSignal {
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
	}
	if !w.loaded {
		w.last, _ = os.ReadFile(w.Path)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if hup != nil {
			defer signal.Stop(hup)
		}
		w.loop(ctx, log, iv, hup)
	}()
	return done
}

func (w *Watcher) loop(ctx context.Context, log *slog.Logger, iv time.Duration, hup chan os.Signal) {
	last := w.last
	tick := time.NewTicker(iv)
	defer tick.Stop()
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-hup:
			force = true
		case <-tick.C:
		}
		b, err := os.ReadFile(w.Path)
		if err != nil {
			if force {
				log.Error("policy reload refused, the old policy stays in force", "error", err)
				w.done(err)
			}
			continue // a ConfigMap swap or an editor may remove it briefly
		}
		if !force && bytes.Equal(b, last) {
			continue
		}
		last = b
		e, err := ParseWith(b, w.Path, w.Options)
		if err != nil {
			probs := Problems(err)
			msgs := make([]string, len(probs))
			for i, p := range probs {
				msgs[i] = p.Error()
			}
			log.Error("policy reload refused, the old policy stays in force", "problems", msgs, "error", err)
			w.done(err)
			continue
		}
		w.Apply(e)
		log.Info("policy reloaded", "trigger", map[bool]string{true: "SIGHUP", false: "file change"}[force])
		w.done(nil)
	}
}

func (w *Watcher) done(err error) {
	if w.Reloaded != nil {
		w.Reloaded(err)
	}
}
