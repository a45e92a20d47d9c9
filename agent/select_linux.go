package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/workload"
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
// before children, and for the cgroups of a container or pod whose
// metadata changed (late: the cgroup was there before its metadata).
func (a *Agent) consider(rel string, id uint64, late bool) error {
	who, byMeta := a.selectedByMeta(rel) // may ask a runtime: not under a.mu
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	if byMeta {
		if _, done := a.roots[rel]; !done && !a.underRootLocked(rel) {
			attrs := []any{audit.KeyCgroup, rel, audit.KeyWorkload, who.Name(), audit.KeyContainer, who.Container, audit.KeyImage, who.Image, audit.KeyNamespace, who.Namespace, audit.KeyPod, who.Pod}
			if late && who.ContainerID != "" {
				// Its metadata came after its cgroup: what it did
				// meanwhile was not intercepted (see agent/doc.go). A
				// pod's cgroup holds no process of its own: its
				// containers come later, in cgroups below it.
				a.log.Warn("intercepting a container selected by agent.select after its cgroup appeared; its earlier connects went direct", attrs...)
			} else {
				a.log.Info("intercepting a container selected by agent.select", attrs...)
			}
		}
		return a.selectRootLocked(rel, id)
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
	if err := a.consider(rel, id, false); err != nil {
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

// selectedByMeta reports whether agent.select selects the cgroup at rel:
// a container's cgroup (its id in the path) by any entry, a pod's cgroup
// (a pod uid and no container id) by an entry that names no container
// fields. who is the identity it was matched as.
func (a *Agent) selectedByMeta(rel string) (who workload.Identity, ok bool) {
	if len(a.sels) == 0 {
		return who, false
	}
	who.ContainerID, who.PodUID = workload.ParseCgroupPath(rel)
	if who.ContainerID == "" && who.PodUID == "" {
		return who, false
	}
	a.opts.Metadata.Enrich(a.ctx, &who)
	// A pod's cgroup has no container name or image, so a selector that
	// names those matches only its containers' cgroups (Match).
	for _, s := range a.sels {
		if s.Match(&who) {
			return who, true
		}
	}
	return who, false
}

// onMetaChange re-selects the cgroups that name a container or pod whose
// metadata changed (Options.Metadata.OnChange).
func (a *Agent) onMetaChange(containerID, podUID string) {
	if containerID == "" && podUID == "" {
		return
	}
	type cg struct {
		rel string
		id  uint64
	}
	var found []cg
	a.names.each(func(id uint64, rel string) {
		c, p := workload.ParseCgroupPath(rel)
		if (containerID != "" && c == containerID) || (podUID != "" && p == podUID) {
			found = append(found, cg{rel, id})
		}
	})
	// Parents first, as the walk and the watch do.
	slices.SortFunc(found, func(x, y cg) int { return strings.Compare(x.rel, y.rel) })
	for _, f := range found {
		if err := a.consider(f.rel, f.id, true); err != nil {
			a.log.Error("select cgroup", audit.KeyCgroup, f.rel, audit.KeyError, err)
		}
	}
}
