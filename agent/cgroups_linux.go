package agent

import (
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/cgroup2"
)

// maxCgroupWalk bounds one walk of the cgroup tree.
const maxCgroupWalk = 200000

// relPath turns a path under mount into a cgroup path ("/a/b"; "/" for the
// root).
func relPath(mount, p string) string {
	r := strings.TrimPrefix(p, mount)
	if r == "" {
		return "/"
	}
	if !strings.HasPrefix(r, "/") {
		r = "/" + r
	}
	return r
}

// walkCgroups calls fn for dir and every cgroup below it, parents first,
// with the cgroup path relative to mount. It stops after maxCgroupWalk.
func walkCgroups(mount, dir string, fn func(rel string, id uint64)) {
	n := 0
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if n++; n > maxCgroupWalk {
			return filepath.SkipAll
		}
		id, err := cgroup2.ID(p)
		if err != nil {
			return nil
		}
		fn(relPath(mount, p), id)
		return nil
	})
}

// cgroupNames maps cgroup ids to paths for workload identities. Misses
// trigger a walk of the tree, at most one per second; otherwise the
// process's /proc/PID/cgroup is used.
type cgroupNames struct {
	mount string
	mu    sync.Mutex
	byID  map[uint64]string
	last  time.Time
}

func newCgroupNames(mount string) *cgroupNames {
	return &cgroupNames{mount: mount, byID: map[uint64]string{}}
}

func (c *cgroupNames) add(id uint64, rel string) {
	c.mu.Lock()
	c.byID[id] = rel
	c.mu.Unlock()
}

// forget drops rel and the cgroups below it (the cgroup was removed).
func (c *cgroupNames) forget(rel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, p := range c.byID {
		if p == rel || strings.HasPrefix(p, rel+"/") {
			delete(c.byID, id)
		}
	}
}

// each calls fn for every cgroup known, on a copy (fn may call back).
func (c *cgroupNames) each(fn func(id uint64, rel string)) {
	c.mu.Lock()
	m := make(map[uint64]string, len(c.byID))
	for id, rel := range c.byID {
		m[id] = rel
	}
	c.mu.Unlock()
	for id, rel := range m {
		fn(id, rel)
	}
}

func (c *cgroupNames) lookup(id uint64, pid int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.byID[id]; ok {
		return p
	}
	if time.Since(c.last) > time.Second {
		c.last = time.Now()
		m := map[uint64]string{}
		walkCgroups(c.mount, c.mount, func(rel string, id uint64) { m[id] = rel })
		c.byID = m
		if p, ok := m[id]; ok {
			return p
		}
	}
	// Fall back to the process's current cgroup when it still has the id.
	rel, err := cgroup2.OfProcess(pid)
	if err != nil {
		return ""
	}
	if cid, err := cgroup2.ID(filepath.Join(c.mount, rel)); err == nil && cid == id {
		c.byID[id] = rel
		return rel
	}
	return ""
}
