package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/cgroup2"
)

// watcher follows the cgroup tree with inotify: every directory is watched
// for IN_CREATE/IN_DELETE of subdirectories, recursively, so a new cgroup
// is seen as soon as it is made.
type watcher struct {
	mount  string
	f      *os.File
	fd     int
	log    *slog.Logger
	onNew  func(rel string, id uint64)
	onGone func(rel string)

	mu  sync.Mutex
	wds map[int32]string // watch descriptor -> absolute dir
}

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_ONLYDIR | unix.IN_DELETE_SELF

func newWatcher(mount string, onNew func(string, uint64), onGone func(string), log *slog.Logger) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch cgroups: inotify: %w", err)
	}
	w := &watcher{mount: mount, fd: fd, f: os.NewFile(uintptr(fd), "inotify"), log: log,
		onNew: onNew, onGone: onGone, wds: map[int32]string{}}
	w.addTree(mount, false)
	return w, nil
}

// addTree watches dir and everything below it; with report, each directory
// found is reported as new (a subtree made before its watch was in place).
func (w *watcher) addTree(dir string, report bool) {
	n := 0
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if n++; n > maxCgroupWalk {
			return filepath.SkipAll
		}
		wd, err := unix.InotifyAddWatch(w.fd, p, watchMask)
		if err != nil {
			if !errors.Is(err, unix.ENOENT) {
				w.log.Warn("watch cgroup", audit.KeyDir, p, audit.KeyError, err)
			}
			return nil
		}
		w.mu.Lock()
		w.wds[int32(wd)] = p
		w.mu.Unlock()
		if report {
			if id, err := cgroup2.ID(p); err == nil {
				w.onNew(relPath(w.mount, p), id)
			}
		}
		return nil
	})
}

// run reads events until close.
func (w *watcher) run() {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, fs.ErrClosed) {
				return
			}
			w.log.Warn("read cgroup events", audit.KeyError, err)
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : min(n, off+unix.SizeofInotifyEvent+int(ev.Len))]
			name := unix.ByteSliceToString(nameBytes)
			off += unix.SizeofInotifyEvent + int(ev.Len)
			w.handle(ev.Wd, ev.Mask, name)
		}
	}
}

func (w *watcher) handle(wd int32, mask uint32, name string) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.addTree(w.mount, true) // rescan; selection is idempotent
		return
	}
	w.mu.Lock()
	dir, ok := w.wds[wd]
	if mask&unix.IN_IGNORED != 0 {
		delete(w.wds, wd)
	}
	w.mu.Unlock()
	if !ok || name == "" || mask&unix.IN_ISDIR == 0 {
		return
	}
	p := filepath.Join(dir, name)
	switch {
	case mask&unix.IN_CREATE != 0:
		w.addTree(p, true)
	case mask&unix.IN_DELETE != 0:
		w.onGone(relPath(w.mount, p))
	}
}

func (w *watcher) close() { w.f.Close() }
