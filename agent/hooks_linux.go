package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/bpf"
)

// hook is one program and where it attaches. The order matters: sockops
// and getpeername go in before connect, so no connection is redirected
// without its origin being recorded for the proxy; the mark guard
// (setsockopt) and the packet deny (egress) go in before connect too, so
// a cgroup is never redirected while its raw packets or forged marks
// still pass; recvmsg goes in before sendmsg, so no DNS reply arrives
// from the intercept address instead of the resolver asked.
type hook struct {
	name   string
	attach ebpf.AttachType
	prog   func(o *bpf.SluiceObjects) *ebpf.Program
}

var hooks = []hook{
	{"sockops", ebpf.AttachCGroupSockOps, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceSockops }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceGetpeername4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceGetpeername6 }},
	{"setsockopt", ebpf.AttachCGroupSetsockopt, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceSetsockopt }},
	{"egress", ebpf.AttachCGroupInetEgress, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceEgress }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceRecvmsg4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceRecvmsg6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceSendmsg4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceSendmsg6 }},
	{"connect4", ebpf.AttachCGroupInet4Connect, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceConnect6 }},
}

// attachment is the set of links on one cgroup.
type attachment struct {
	path  string
	links map[string]link.Link
}

func (a *Agent) pinDir(kind string) string { return filepath.Join(a.cfg.BPFFS, kind) }

// adoptPins loads an earlier agent's pinned links (to update in place)
// and replaces its pinned maps by ours (closed mode).
func (a *Agent) adoptPins() error {
	if a.cfg.FailMode == "closed" {
		if err := ensureBPFFS(a.cfg.BPFFS); err != nil {
			return err
		}
	}
	if ents, err := os.ReadDir(a.pinDir("links")); err == nil {
		for _, e := range ents {
			p := filepath.Join(a.pinDir("links"), e.Name())
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				a.log.Warn("drop unreadable pin", audit.KeyPin, p, audit.KeyError, err)
				os.Remove(p)
				continue
			}
			a.oldLinks[e.Name()] = l
		}
	}
	if a.cfg.FailMode != "closed" {
		// An earlier closed-mode agent's map pins are of no use to us;
		// its links are adopted (unpinned) or detached.
		_ = os.RemoveAll(a.pinDir("maps"))
		return nil
	}
	if err := os.MkdirAll(a.pinDir("links"), 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	if err := os.MkdirAll(a.pinDir("maps"), 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	for name, m := range a.mapsByName() {
		p := filepath.Join(a.pinDir("maps"), name)
		os.Remove(p)
		if err := m.Pin(p); err != nil {
			return fmt.Errorf("pin map %s: %w", p, err)
		}
	}
	return nil
}

func (a *Agent) mapsByName() map[string]*ebpf.Map {
	m := a.objs.SluiceMaps
	return map[string]*ebpf.Map{
		"sluice_deny4": m.SluiceDeny4, "sluice_deny6": m.SluiceDeny6, "sluice_drops": m.SluiceDrops,
		"sluice_map_errors":   m.SluiceMapErrors,
		"sluice_egress_drops": m.SluiceEgressDrops, "sluice_egress_last": m.SluiceEgressLast,
		"sluice_deny_addrport": m.SluiceDenyAddrport, "sluice_dns_peers": m.SluiceDnsPeers,
		"sluice_events": m.SluiceEvents, "sluice_origins": m.SluiceOrigins, "sluice_peers": m.SluicePeers,
		"sluice_origin_slots": m.SluiceOriginSlots, "sluice_clock": m.SluiceClock,
		"sluice_reader": m.SluiceReader,
		"sluice_ports":  m.SluicePorts, "sluice_selected": m.SluiceSelected, "sluice_settings": m.SluiceSettings,
	}
}

// dropOldLinks detaches the earlier agent's links that were not adopted.
func (a *Agent) dropOldLinks() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, l := range a.oldLinks {
		detachLink(l)
		delete(a.oldLinks, k)
		a.log.Info("detached earlier agent's hook", audit.KeyPin, k)
	}
	if a.cfg.FailMode != "closed" {
		// Remove the pin directory if an earlier agent left it empty.
		_ = os.Remove(a.pinDir("links"))
		_ = os.Remove(a.cfg.BPFFS)
	}
}

// detachAll detaches an attachment's links, connect first, sockops last.
func detachAll(at *attachment) {
	for i := len(hooks) - 1; i >= 0; i-- {
		if l := at.links[hooks[i].name]; l != nil {
			detachLink(l)
		}
	}
}

func detachLink(l link.Link) {
	_ = l.Detach()
	_ = l.Unpin()
	_ = l.Close()
}

// attach puts every hook on the cgroup (id, rel), updating an earlier
// agent's pinned links in place where there are any.
func (a *Agent) attach(id uint64, rel string) error {
	if _, ok := a.attached[id]; ok {
		return nil
	}
	dir := filepath.Join(a.mount, rel)
	at := &attachment{path: rel, links: map[string]link.Link{}}
	for _, hk := range hooks {
		key := strconv.FormatUint(id, 10) + "-" + hk.name
		prog := hk.prog(&a.objs)
		var l link.Link
		adopted := false
		if old, ok := a.oldLinks[key]; ok {
			delete(a.oldLinks, key)
			if err := old.Update(prog); err == nil {
				l, adopted = old, true
			} else {
				a.log.Warn("replace earlier agent's hook", audit.KeyPin, key, audit.KeyError, err)
				detachLink(old)
			}
		}
		if l == nil {
			var err error
			l, err = link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: hk.attach, Program: prog})
			if err != nil {
				detachAll(at)
				return fmt.Errorf("attach %s to %s: %w", hk.name, dir, err)
			}
		}
		switch {
		case a.cfg.FailMode == "closed" && !adopted:
			if err := l.Pin(filepath.Join(a.pinDir("links"), key)); err != nil {
				detachLink(l)
				detachAll(at)
				return fmt.Errorf("pin %s link of %s: %w", hk.name, dir, err)
			}
		case a.cfg.FailMode != "closed" && adopted:
			_ = l.Unpin() // ours now, and gone when we exit
		}
		at.links[hk.name] = l
	}
	a.attached[id] = at
	a.log.Info("intercepting cgroup", audit.KeyCgroup, rel, audit.KeyCgroupID, id)
	return nil
}
