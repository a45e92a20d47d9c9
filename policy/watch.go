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

	"github.com/sluicehq/sluice/audit"
)

// Watcher reloads a policy file on SIGHUP and when its content changes.
//
// Changes are found by reading the file every Interval and comparing the
// bytes: this follows editors' rename-writes and Kubernetes ConfigMap
// symlink swaps (the path is re-resolved on every read) and needs no
// inotify. A content is acted on only once it has been read identically
// twice in a row (at two consecutive checks, or for SIGHUP at two reads a
// moment apart), so a file caught half-written by an in-place write
// (truncate, then write) is not loaded; writing a temporary file and
// renaming it over the path is still the safe way to update. An empty
// read is never taken as the content in force. A new file that does not
// load (an empty one included) is refused and logged once, with all its
// problems; the policy in force stays.
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
	// Interval between content checks. Zero: one second. A change is
	// acted on at the second check that reads it.
	Interval time.Duration
	// NoSignal disables SIGHUP handling (tests).
	NoSignal bool
	// Reloaded, when set, is called after every reload attempt with its
	// outcome (nil on success).
	Reloaded func(error)

	last   []byte
	loaded bool
	// readFile reads the policy file; nil: os.ReadFile. Tests script it.
	readFile func(string) ([]byte, error)
}

func (w *Watcher) read() ([]byte, error) {
	if w.readFile != nil {
		return w.readFile(w.Path)
	}
	return os.ReadFile(w.Path)
}

// Load reads and compiles the file now, remembering its content as the
// one in force, so that a change made between Load and Start is not
// missed. It does not call Apply.
func (w *Watcher) Load() (*Engine, error) {
	b, err := w.read()
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
	log = log.With(audit.KeyComponent, audit.ComponentPolicy, audit.KeyFile, w.Path)
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
		if b, err := w.read(); err == nil && len(b) > 0 {
			w.last = b
		}
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
	// last is the content last acted on (in force, or refused); never an
	// empty read. pending is a changed content read once, waiting to be
	// read identically again: os.WriteFile truncates, then writes, so a
	// single read may see an empty or partial file.
	last := w.last
	var pending []byte
	havePending := false
	force := false        // a SIGHUP waiting for a stable read
	emptyRefused := false // a stable empty file was reported
	settle := min(iv, 100*time.Millisecond)
	tick := time.NewTicker(iv)
	defer tick.Stop()
	refuse := func(err error) {
		probs := Problems(err)
		msgs := make([]string, len(probs))
		for i, p := range probs {
			msgs[i] = p.Error()
		}
		log.Error("policy reload refused, the old policy stays in force", audit.KeyProblems, msgs, audit.KeyError, err)
		w.done(err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			// Read now and again a moment later; if the two differ, the
			// following ticks go on until a content is read twice.
			force = true
			b, err := w.read()
			pending, havePending = b, err == nil
			t := time.NewTimer(settle)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		case <-tick.C:
		}
		b, err := w.read()
		if err != nil {
			havePending = false
			if force {
				force = false
				refuse(fmt.Errorf("read policy: %w", err))
			}
			continue // a ConfigMap swap or an editor may remove it briefly
		}
		if len(b) > 0 {
			emptyRefused = false
		}
		if !force && len(b) > 0 && bytes.Equal(b, last) {
			havePending = false
			continue
		}
		stable := havePending && bytes.Equal(b, pending)
		pending, havePending = b, true
		if !stable {
			continue
		}
		havePending = false
		trigger := map[bool]string{true: "SIGHUP", false: "file change"}[force]
		wasForced := force
		force = false
		if len(b) == 0 {
			// Refused (Parse says why) but not remembered as the content
			// in force, and reported once until the file has content.
			if wasForced || !emptyRefused {
				emptyRefused = true
				_, err := ParseWith(b, w.Path, w.Options)
				if err == nil {
					err = fmt.Errorf("read policy %s: empty policy file", w.Path)
				}
				refuse(err)
			}
			continue
		}
		last = b
		e, err := ParseWith(b, w.Path, w.Options)
		if err != nil {
			refuse(err)
			continue
		}
		w.Apply(e)
		log.Info("policy reloaded", audit.KeyTrigger, trigger)
		w.done(nil)
	}
}

func (w *Watcher) done(err error) {
	if w.Reloaded != nil {
		w.Reloaded(err)
	}
}
