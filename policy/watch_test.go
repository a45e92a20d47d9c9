package policy

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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
