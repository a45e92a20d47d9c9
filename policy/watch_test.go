package policy

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	allowX = "version: 1\nrules: [{name: x, action: allow, destinations: {hosts: [x.example]}}]\ndefaults: {action: deny}\n"
	denyX  = "version: 1\nrules: [{name: x, action: deny, destinations: {hosts: [x.example]}}]\n"
	broken = "version: 1\nrules: [{name: x, action: nope}]\nmode: wrong\n"
)

type watchRig struct {
	t       *testing.T
	cur     Current
	results chan error
}

func startWatch(t *testing.T, path string, noSignal bool) *watchRig {
	t.Helper()
	w := &watchRig{t: t, results: make(chan error, 16)}
	wt := &Watcher{Path: path, Apply: func(e *Engine) { w.cur.Store(e) }, Interval: 10 * time.Millisecond,
		NoSignal: noSignal, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Reloaded: func(err error) { w.results <- err }}
	e, err := wt.Load()
	if err != nil {
		t.Fatal(err)
	}
	w.cur.Store(e)
	ctx, cancel := context.WithCancel(context.Background())
	done := wt.Start(ctx)
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *watchRig) next() error {
	w.t.Helper()
	select {
	case err := <-w.results:
		return err
	case <-time.After(10 * time.Second):
		w.t.Fatal("no reload within 10s")
		return nil
	}
}

func (w *watchRig) hostDenied() bool {
	d := w.cur.Load().Request(context.Background(), &Request{Conn: &Conn{Addrs: public}, Host: "x.example", Method: "GET", Path: "/"})
	return d.Denied()
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWatchReloads(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "policy.yaml")
	writeFile(t, f, allowX)
	w := startWatch(t, f, true)
	if w.hostDenied() {
		t.Fatal("initial policy allows x.example")
	}

	// In-place write.
	writeFile(t, f, denyX)
	if err := w.next(); err != nil || !w.hostDenied() {
		t.Fatalf("after write: err=%v denied=%v", err, w.hostDenied())
	}

	// A broken file is refused with all its problems; the old policy stays.
	writeFile(t, f, broken)
	err := w.next()
	if err == nil || len(Problems(err)) != 2 || !strings.Contains(err.Error(), `rules[0].action "nope"`) {
		t.Fatalf("broken reload: %v", err)
	}
	if !w.hostDenied() {
		t.Fatal("old policy must stay in force after a broken reload")
	}

	// Editor-style rename over the file.
	tmp := filepath.Join(dir, ".policy.yaml.swp")
	writeFile(t, tmp, allowX)
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
	if err := w.next(); err != nil || w.hostDenied() {
		t.Fatalf("after rename: err=%v denied=%v", err, w.hostDenied())
	}
}

// TestWatchConfigMapSwap reproduces how the kubelet updates a mounted
// ConfigMap: policy.yaml -> ..data/policy.yaml, ..data -> ..TIMESTAMP, and
// an update swaps the ..data symlink atomically.
func TestWatchConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, content string) {
		os.Mkdir(filepath.Join(dir, name), 0o755)
		writeFile(t, filepath.Join(dir, name, "policy.yaml"), content)
	}
	mk("..2026_01_01_a", allowX)
	if err := os.Symlink("..2026_01_01_a", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.Symlink("..data/policy.yaml", filepath.Join(dir, "policy.yaml"))
	w := startWatch(t, filepath.Join(dir, "policy.yaml"), true)
	if w.hostDenied() {
		t.Fatal("initial policy allows x.example")
	}
	mk("..2026_01_01_b", denyX)
	os.Symlink("..2026_01_01_b", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "..2026_01_01_a"))
	if err := w.next(); err != nil || !w.hostDenied() {
		t.Fatalf("after swap: err=%v denied=%v", err, w.hostDenied())
	}
}

// scriptedReads returns the contents in order, one per read, then the last
// one again; after extra reads past the end it closes settled.
type scriptedReads struct {
	mu      sync.Mutex
	script  []string
	extra   int
	settled chan struct{}
}

func (s *scriptedReads) read(string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := []byte(s.script[0])
	if len(s.script) > 1 {
		s.script = s.script[1:]
	} else if s.extra--; s.extra == 0 {
		close(s.settled)
	}
	return b, nil
}

// TestWatchActsOnlyOnStableContent scripts what a watcher reads while a
// writer truncates the file and writes it again (os.WriteFile): it must
// act only on a content read identically twice in a row, never take an
// empty read as the content in force, and report a stable broken or empty
// file exactly once.
func TestWatchActsOnlyOnStableContent(t *testing.T) {
	partial := denyX[:len("version: 1\nrules: [{name: x, action: deny")]
	for _, tc := range []struct {
		name   string
		reads  []string // after the initial allowX
		want   []string // each reload outcome: "ok" or an error substring
		denied bool     // x.example denied by the policy in force at the end
	}{
		{"truncate then write", []string{"", "version: 1\n", partial, denyX}, []string{"ok"}, true},
		{"rewrite of the same content", []string{"", "version: 1\n", allowX}, nil, false},
		{"read once, then back", []string{denyX, allowX}, nil, false},
		{"stable empty file", []string{"", "", "", allowX}, []string{"empty policy file"}, false},
		{"stable broken file", []string{broken}, []string{`rules[0].action "nope"`}, false},
		{"broken then fixed", []string{broken, broken, denyX}, []string{`rules[0].action "nope"`, "ok"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scriptedReads{script: append([]string{allowX}, tc.reads...), extra: 5, settled: make(chan struct{})}
			var cur Current
			results := make(chan error, 64)
			w := &Watcher{Path: "policy.yaml", Apply: func(e *Engine) { cur.Store(e) }, Interval: time.Millisecond, NoSignal: true,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Reloaded: func(err error) { results <- err }, readFile: s.read}
			e, err := w.Load()
			if err != nil {
				t.Fatal(err)
			}
			cur.Store(e)
			ctx, cancel := context.WithCancel(context.Background())
			done := w.Start(ctx)
			select {
			case <-s.settled:
			case <-time.After(10 * time.Second):
				t.Fatal("the watcher did not read the whole script within 10s")
			}
			cancel()
			<-done
			close(results)
			var got []string
			for err := range results {
				if err == nil {
					got = append(got, "ok")
				} else {
					got = append(got, err.Error())
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("reload outcomes %q, want %q", got, tc.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tc.want[i]) {
					t.Fatalf("reload outcomes %q, want %q", got, tc.want)
				}
			}
			d := cur.Load().Request(context.Background(), &Request{Conn: &Conn{Addrs: public}, Host: "x.example", Method: "GET", Path: "/"})
			if d.Denied() != tc.denied {
				t.Fatalf("x.example denied=%v, want %v", d.Denied(), tc.denied)
			}
		})
	}
}
