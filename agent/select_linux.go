package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/cgroup2"
)

// SelectCgroup intercepts the cgroup at path (relative to the cgroup2
// mount, or absolute under it) and its subtree from now on.
func (a *Agent) SelectCgroup(path string) error {
	rel := path
	if strings.HasPrefix(path, a.mount+"/") || path == a.mount {
		rel = relPath(a.mount, path)
	}
	if !strings.HasPrefix(rel, "/") {
		return fmt.Errorf("select cgroup %q: want a path relative to the cgroup2 mount (%s) starting with \"/\"", path, a.mount)
	}
	rel = filepath.Clean(rel)
	id, err := cgroup2.ID(filepath.Join(a.mount, rel))
	if err != nil {
		return fmt.Errorf("select cgroup %s: %w", rel, err)
	}
	a.names.add(id, rel)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errors.New("select cgroup: agent closed")
	}
	return a.selectRootLocked(rel, id)
}

// ReleaseCgroup stops intercepting the cgroup at path (as given to
// SelectCgroup): its hooks are detached (or its ids leave the selection
// map) and it is forgotten. `sluice run` calls it when its child is done.
func (a *Agent) ReleaseCgroup(path string) error {
	rel := path
	if strings.HasPrefix(path, a.mount+"/") || path == a.mount {
		rel = relPath(a.mount, path)
	}
	rel = filepath.Clean(rel)
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.roots[rel]; !ok {
		return fmt.Errorf("release cgroup %s: not selected", rel)
	}
	delete(a.roots, rel)
	for id, at := range a.attached {
		if at.path != "/" && isUnder(at.path, rel) {
			detachAll(at)
			delete(a.attached, id)
		}
	}
	for id, r := range a.selected {
		if isUnder(r, rel) && !a.underRootLocked(r) {
			_ = a.objs.SluiceSelected.Delete(id)
			delete(a.selected, id)
		}
	}
	return nil
}

// consider is called for every cgroup found (startup walk, inotify), parents
// before children.
func (a *Agent) consider(rel string, id uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	if matchesAny(a.globs, rel) {
		return a.selectRootLocked(rel, id)
	}
	if a.cfg.Attach == "root" && a.underRootLocked(rel) {
		return a.selectIDLocked(id, rel)
	}
	return nil
}

func (a *Agent) selectRootLocked(rel string, id uint64) error {
	if _, ok := a.roots[rel]; ok {
		return nil
	}
	if a.own != "" && rel == a.own {
		a.log.Warn("not intercepting the agent's own cgroup", audit.KeyCgroup, rel)
		return nil
	}
	if a.cfg.Attach == "root" {
		a.roots[rel] = id
		var errs []error
		walkCgroups(a.mount, filepath.Join(a.mount, rel), func(r string, cid uint64) {
			a.names.add(cid, r)
			if err := a.selectIDLocked(cid, r); err != nil {
				errs = append(errs, err)
			}
		})
		return errors.Join(errs...)
	}
	a.roots[rel] = id
	if a.coveredLocked(rel) {
		return nil
	}
	if a.own != "" && isUnder(a.own, rel) {
		// Hooks here would cover the agent itself: attach to the children
		// instead, leaving out the branch that holds the agent.
		a.log.Warn("not attaching to an ancestor of the agent's own cgroup; attaching to its other children", audit.KeyCgroup, rel, audit.KeyAgentCgroup, a.own)
		var errs []error
		ents, _ := os.ReadDir(filepath.Join(a.mount, rel))
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			child := filepath.Join(rel, e.Name())
			cid, err := cgroup2.ID(filepath.Join(a.mount, child))
			if err != nil {
				continue
			}
			if err := a.selectRootLocked(child, cid); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	if err := a.attach(id, rel); err != nil {
		delete(a.roots, rel)
		return err
	}
	return nil
}

func (a *Agent) selectIDLocked(id uint64, rel string) error {
	if _, ok := a.selected[id]; ok || rel == a.own {
		return nil
	}
	if err := a.objs.SluiceSelected.Put(id, uint8(1)); err != nil {
		return fmt.Errorf("select cgroup %s: write selection map: %w", rel, err)
	}
	a.selected[id] = rel
	a.log.Info("intercepting cgroup", audit.KeyCgroup, rel, audit.KeyCgroupID, id)
	return nil
}

// coveredLocked reports whether rel or an ancestor already has the hooks.
func (a *Agent) coveredLocked(rel string) bool {
	for _, at := range a.attached {
		if isUnder(rel, at.path) {
			return true
		}
	}
	return false
}

func (a *Agent) underRootLocked(rel string) bool {
	for r := range a.roots {
		if isUnder(rel, r) {
			return true
		}
	}
	return false
}

// isUnder reports whether cgroup path p is anc or below it.
func isUnder(p, anc string) bool {
	return anc == "/" || p == anc || strings.HasPrefix(p, anc+"/")
}

func (a *Agent) onNewCgroup(rel string, id uint64) {
	a.names.add(id, rel)
	if err := a.consider(rel, id); err != nil {
		a.log.Error("select new cgroup", audit.KeyCgroup, rel, audit.KeyError, err)
	}
}

func (a *Agent) onGoneCgroup(rel string) {
	a.names.forget(rel)
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, at := range a.attached {
		if at.path == rel && rel != "/" {
			detachAll(at)
			delete(a.attached, id)
		}
	}
	for id, r := range a.selected {
		if r == rel {
			_ = a.objs.SluiceSelected.Delete(id)
			delete(a.selected, id)
		}
	}
	delete(a.roots, rel)
}
