package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/sluicehq/sluice/bpf"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/mitm"
	"github.com/sluicehq/sluice/workload"
)

// Settings flags, mirrored from sluice.c (SET_*).
const (
	setV4           = 1
	setV6           = 2
	setAllPorts     = 4
	setUseSelection = 8
)

// hook is one program and where it attaches. The order matters: sockops
// and getpeername go in before connect, so no connection is redirected
// without its origin being recorded for the proxy.
type hook struct {
	name   string
	attach ebpf.AttachType
	prog   func(o *bpf.SluiceObjects) *ebpf.Program
}

var hooks = []hook{
	{"sockops", ebpf.AttachCGroupSockOps, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceSockops }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceGetpeername4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceGetpeername6 }},
	{"connect4", ebpf.AttachCGroupInet4Connect, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(o *bpf.SluiceObjects) *ebpf.Program { return o.SluiceConnect6 }},
}

// attachment is the set of links on one cgroup.
type attachment struct {
	path  string
	links map[string]link.Link
}

// Agent is a running node agent. Its methods are safe for concurrent use.
type Agent struct {
	cfg   config.Agent
	log   *slog.Logger
	h     Handler
	opts  Options
	mount string
	globs []glob
	objs  bpf.SluiceObjects
	ia    *interceptAddrs
	lns   []net.Listener
	rb    *ringbuf.Reader
	names *cgroupNames
	watch *watcher
	// own is the agent's own cgroup path: never selected, and in "cgroup"
	// attach mode no hook goes on it or an ancestor of it.
	own string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops, event reader, watcher
	conns  sync.WaitGroup // handlers

	mu       sync.Mutex
	attached map[uint64]*attachment // cgroup id -> links
	roots    map[string]uint64      // selected cgroups (globs, SelectCgroup)
	selected map[uint64]string      // root mode: ids in the selection map
	oldLinks map[string]link.Link   // an earlier agent's pins, not yet adopted
	closed   bool
}

// Start probes the kernel, places and verifies the intercept address,
// loads the programs, listens on the intercept address, attaches the hooks
// to the selected cgroups (or the root) and starts reading events and
// watching the cgroup tree. Connections are handed to h until Close. ctx
// bounds the agent's life: when it is done the agent stops accepting and
// handlers see it cancelled (Close must still be called).
func Start(ctx context.Context, cfg config.Agent, h Handler, log *slog.Logger, opts Options) (*Agent, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "agent")
	if opts.OriginWait <= 0 {
		opts.OriginWait = 250 * time.Millisecond
	}
	if err := probeKernel(); err != nil {
		return nil, err
	}
	mount, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	var globs []glob
	var gerrs []error
	for _, p := range cfg.Cgroups {
		g, err := compileGlob(p)
		if err != nil {
			gerrs = append(gerrs, err)
			continue
		}
		globs = append(globs, g)
	}
	if err := errors.Join(gerrs...); err != nil {
		return nil, err
	}
	settings, ports, err := compileSettings(cfg)
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}

	a := &Agent{
		cfg: cfg, log: log, h: h, opts: opts, mount: mount, globs: globs,
		names:    newCgroupNames(mount),
		attached: map[uint64]*attachment{},
		roots:    map[string]uint64{},
		selected: map[uint64]string{},
		oldLinks: map[string]link.Link{},
	}
	if h == nil {
		return nil, errors.New("start agent: nil handler")
	}
	a.own = ownCgroup()
	a.ctx, a.cancel = context.WithCancel(ctx)
	ok := false
	defer func() {
		if !ok {
			a.abort()
		}
	}()

	// The address first: nothing is attached unless it is local.
	if a.ia, err = ensureIntercept(cfg.InterceptIPv4, cfg.InterceptIPv6, log); err != nil {
		return nil, err
	}
	settings.Intercept4 = binary.NativeEndian.Uint32(a.ia.v4.AsSlice()) // network order in memory
	settings.Flags |= setV4
	if a.ia.v6.IsValid() {
		settings.Intercept6 = a.ia.v6.As16()
		settings.Flags |= setV6
	}

	if err := a.load(settings, ports); err != nil {
		return nil, err
	}
	if err := a.listen(); err != nil {
		return nil, err
	}
	if err := a.adoptPins(); err != nil {
		return nil, err
	}

	// Select: the root, or the cgroups matching the globs.
	if cfg.Attach == "root" {
		rootID, err := cgroupID(mount)
		if err != nil {
			return nil, fmt.Errorf("stat cgroup2 root %s: %w", mount, err)
		}
		if err := a.attach(rootID, "/"); err != nil {
			return nil, err
		}
	}
	if len(globs) > 0 || cfg.Attach == "root" {
		if a.watch, err = newWatcher(mount, a.onNewCgroup, a.onGoneCgroup, log); err != nil {
			return nil, err
		}
	}
	var serr []error
	walkCgroups(mount, mount, func(rel string, id uint64) {
		a.names.add(id, rel)
		if err := a.consider(rel, id); err != nil {
			serr = append(serr, err)
		}
	})
	if err := errors.Join(serr...); err != nil {
		return nil, err
	}
	a.dropOldLinks()

	a.rb, err = ringbuf.NewReader(a.objs.SluiceEvents)
	if err != nil {
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	a.wg.Add(1)
	go a.readEvents()
	if a.watch != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.watch.run() }()
	}
	a.wg.Add(1)
	go func() { // ctx done: stop accepting
		defer a.wg.Done()
		<-a.ctx.Done()
		for _, l := range a.lns {
			l.Close()
		}
	}()
	ok = true
	log.Info("agent started", "mount", mount, "attach", cfg.Attach, "failMode", cfg.FailMode,
		"intercept4", a.ia.v4.String(), "intercept6", a.ia.v6.String(), "proxyPort", cfg.ProxyPort, "link", a.ia.link.Attrs().Name)
	return a, nil
}

// compileSettings turns the config into the kernel's settings and ports.
func compileSettings(cfg config.Agent) (bpf.SluiceSettings, []uint16, error) {
	s := bpf.SluiceSettings{Mark: cfg.Mark, ProxyPort: cfg.ProxyPort}
	if cfg.Attach == "root" {
		s.Flags |= setUseSelection
	}
	var ports []uint16
	var errs []error
	for i, p := range cfg.Ports {
		if p == "all" {
			s.Flags |= setAllPorts
			continue
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("agent.ports[%d] %q: must be a port number 1-65535 or \"all\"", i, p))
			continue
		}
		ports = append(ports, uint16(n))
	}
	if !cfg.InterceptIPv4.Is4() {
		errs = append(errs, fmt.Errorf("agent.interceptIPv4 %q: must be an IPv4 address, e.g. 169.254.77.77", cfg.InterceptIPv4))
	}
	if cfg.ProxyPort == 0 {
		errs = append(errs, errors.New("agent.proxyPort 0: must be a port number, e.g. 15001"))
	}
	if cfg.Attach != "cgroup" && cfg.Attach != "root" {
		errs = append(errs, fmt.Errorf("agent.attach %q: must be \"cgroup\" or \"root\"", cfg.Attach))
	}
	if cfg.FailMode != "closed" && cfg.FailMode != "open" {
		errs = append(errs, fmt.Errorf("agent.failMode %q: must be \"closed\" or \"open\"", cfg.FailMode))
	}
	return s, ports, errors.Join(errs...)
}

// load loads the programs and fills the maps.
func (a *Agent) load(s bpf.SluiceSettings, ports []uint16) error {
	spec, err := bpf.LoadSluice()
	if err != nil {
		return fmt.Errorf("load bpf spec: %w", err)
	}
	if err := spec.LoadAndAssign(&a.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load bpf programs (getpeername hooks need Linux 5.8): %+v", ve)
		}
		return fmt.Errorf("load bpf programs (getpeername hooks need Linux 5.8): %w", err)
	}
	if err := a.objs.SluiceSettings.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("write settings map: %w", err)
	}
	for _, p := range ports {
		if err := a.objs.SluicePorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("write ports map: %w", err)
		}
	}
	for _, pfx := range a.cfg.DenyCIDRs {
		pfx = pfx.Masked()
		if pfx.Addr().Is4() {
			k := bpf.SluiceLpm4Key{Prefixlen: uint32(pfx.Bits()), Addr: pfx.Addr().As4()}
			err = a.objs.SluiceDeny4.Put(&k, uint8(1))
		} else {
			k := bpf.SluiceLpm6Key{Prefixlen: uint32(pfx.Bits()), Addr: pfx.Addr().As16()}
			err = a.objs.SluiceDeny6.Put(&k, uint8(1))
		}
		if err != nil {
			return fmt.Errorf("write deny map %s: %w", pfx, err)
		}
	}
	return nil
}

// listen opens the transparent listeners on the intercept addresses.
func (a *Agent) listen() error {
	lc := net.ListenConfig{Control: MarkControl(a.cfg.Mark)}
	for _, ad := range []netip.Addr{a.ia.v4, a.ia.v6} {
		if !ad.IsValid() {
			continue
		}
		network := "tcp4"
		if ad.Is6() {
			network = "tcp6"
		}
		ap := netip.AddrPortFrom(ad, a.cfg.ProxyPort).String()
		l, err := lc.Listen(a.ctx, network, ap)
		if err != nil {
			return fmt.Errorf("listen on intercept address %s: %w", ap, err)
		}
		a.lns = append(a.lns, l)
		a.wg.Add(1)
		go a.accept(l)
	}
	return nil
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
				a.log.Warn("drop unreadable pin", "pin", p, "err", err)
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
		"sluice_events": m.SluiceEvents, "sluice_origins": m.SluiceOrigins, "sluice_peers": m.SluicePeers,
		"sluice_ports": m.SluicePorts, "sluice_selected": m.SluiceSelected, "sluice_settings": m.SluiceSettings,
	}
}

// dropOldLinks detaches the earlier agent's links that were not adopted.
func (a *Agent) dropOldLinks() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, l := range a.oldLinks {
		detachLink(l)
		delete(a.oldLinks, k)
		a.log.Info("detached earlier agent's hook", "pin", k)
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
				a.log.Warn("replace earlier agent's hook", "pin", key, "err", err)
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
	a.log.Info("intercepting cgroup", "cgroup", rel, "cgroup_id", id)
	return nil
}

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
	id, err := cgroupID(filepath.Join(a.mount, rel))
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
	for _, g := range a.globs {
		if g.Match(rel) {
			return a.selectRootLocked(rel, id)
		}
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
		a.log.Warn("not intercepting the agent's own cgroup", "cgroup", rel)
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
		a.log.Warn("not attaching to an ancestor of the agent's own cgroup; attaching to its other children", "cgroup", rel, "agent_cgroup", a.own)
		var errs []error
		ents, _ := os.ReadDir(filepath.Join(a.mount, rel))
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			child := filepath.Join(rel, e.Name())
			cid, err := cgroupID(filepath.Join(a.mount, child))
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
	a.log.Info("intercepting cgroup", "cgroup", rel, "cgroup_id", id)
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

// ownCgroup is the calling process's cgroup v2 path, "" when unknown.
func ownCgroup() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			return filepath.Clean(rest)
		}
	}
	return ""
}

// isUnder reports whether cgroup path p is anc or below it.
func isUnder(p, anc string) bool {
	return anc == "/" || p == anc || strings.HasPrefix(p, anc+"/")
}

func (a *Agent) onNewCgroup(rel string, id uint64) {
	a.names.add(id, rel)
	if err := a.consider(rel, id); err != nil {
		a.log.Error("select new cgroup", "cgroup", rel, "err", err)
	}
}

func (a *Agent) onGoneCgroup(rel string) {
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

// accept serves one listener until it is closed.
func (a *Agent) accept(l net.Listener) {
	defer a.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || a.ctx.Err() != nil {
				return
			}
			a.log.Warn("accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		a.conns.Add(1)
		go func() {
			defer a.conns.Done()
			a.serve(c)
		}()
	}
}

// serve names the connection's workload and hands it to the handler.
func (a *Agent) serve(c net.Conn) {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		c.Close()
		return
	}
	peer := ta.AddrPort()
	o, err := a.origin(peer)
	if err != nil {
		a.log.Warn("closing connection without origin", "peer", peer.String(), "err", err)
		c.Close()
		return
	}
	dst, id := a.describe(o, peer)
	a.h.Handle(a.ctx, c, dst, id)
}

var errNoOrigin = errors.New("no origin recorded for this peer")

// origin reads and deletes the kernel's record for peer, waiting up to
// OriginWait for it to appear.
func (a *Agent) origin(peer netip.AddrPort) (bpf.SluiceOrigin, error) {
	k := bpf.SluicePeerKey{Addr: peer.Addr().As16(), Port: peer.Port()}
	var o bpf.SluiceOrigin
	deadline := time.Now().Add(a.opts.OriginWait)
	wait := time.Millisecond
	for {
		err := a.objs.SluicePeers.Lookup(&k, &o)
		if err == nil {
			_ = a.objs.SluicePeers.Delete(&k)
			return o, nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return o, fmt.Errorf("look up origin of %s: %w", peer, err)
		}
		if time.Now().After(deadline) {
			return o, fmt.Errorf("look up origin of %s: %w", peer, errNoOrigin)
		}
		time.Sleep(wait)
		wait = min(wait*2, 20*time.Millisecond)
	}
}

// describe builds the destination and identity of a redirected connection.
func (a *Agent) describe(o bpf.SluiceOrigin, peer netip.AddrPort) (mitm.Destination, workload.Identity) {
	addr := netip.AddrFrom16(o.Addr)
	if o.Family == 2 { // AF_INET
		addr = addr.Unmap()
	}
	dst := mitm.Destination{Addr: netip.AddrPortFrom(addr, o.Port), Port: o.Port}
	pid := int(o.Pid)
	id := workload.Identity{
		Client: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()),
		PID:    pid,
		UID:    o.Uid,
		Comm:   cString(o.Comm[:]),
		Cgroup: a.names.lookup(o.CgroupId, pid),
	}
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil {
		id.Exe = exe
	}
	id.ContainerID, id.PodUID = workload.ParseCgroupPath(id.Cgroup)
	return dst, id
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

var reasons = map[uint8]string{
	uint8(bpf.SluiceReasonREASON_DENY_CIDR):            ReasonDenyCIDR,
	uint8(bpf.SluiceReasonREASON_PORT):                 ReasonPort,
	uint8(bpf.SluiceReasonREASON_NOT_TCP):              ReasonNotTCP,
	uint8(bpf.SluiceReasonREASON_PORT_NOT_INTERCEPTED): ReasonPortNotListed,
	uint8(bpf.SluiceReasonREASON_NO_INTERCEPT):         ReasonNoIntercept,
}

var verdicts = map[uint8]Verdict{
	uint8(bpf.SluiceVerdictVERDICT_REDIRECTED): Redirected,
	uint8(bpf.SluiceVerdictVERDICT_DENIED):     Denied,
	uint8(bpf.SluiceVerdictVERDICT_DIRECT):     Direct,
}

// readEvents drains the ring buffer until it is closed.
func (a *Agent) readEvents() {
	defer a.wg.Done()
	for {
		rec, err := a.rb.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return
			}
			a.log.Warn("read event", "err", err)
			continue
		}
		var e bpf.SluiceEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			a.log.Warn("decode event", "err", err)
			continue
		}
		ev := a.event(e)
		if ev.Verdict == Denied {
			a.log.Warn("connect denied", "verdict", string(ev.Verdict), "reason", ev.Reason,
				"dst", ev.Dst.String(), "pid", ev.PID, "uid", ev.UID, "comm", ev.Comm, "cgroup", ev.Cgroup)
		}
		if a.opts.OnEvent != nil {
			a.opts.OnEvent(ev)
		}
	}
}

func (a *Agent) event(e bpf.SluiceEvent) Event {
	addr := netip.AddrFrom16(e.Addr)
	if addr.Is4In6() {
		addr = addr.Unmap()
	}
	v, ok := verdicts[e.Verdict]
	if !ok {
		v = Verdict("unknown")
	}
	r, ok := reasons[e.Reason]
	if !ok {
		r = ReasonUnknownInEvent
	}
	return Event{
		Time: time.Now(), Verdict: v, Reason: r,
		Dst:      netip.AddrPortFrom(addr, e.Port),
		Protocol: e.Protocol, PID: int(e.Pid), UID: e.Uid, Comm: cString(e.Comm[:]),
		CgroupID: e.CgroupId, Cgroup: a.names.lookup(e.CgroupId, int(e.Pid)),
		NetnsCookie: e.NetnsCookie, Cookie: e.Cookie,
	}
}

// Drops is the number of events the kernel could not queue (ring buffer
// full) since the programs were loaded.
func (a *Agent) Drops() uint64 {
	var vals []uint64
	if err := a.objs.SluiceDrops.Lookup(uint32(0), &vals); err != nil {
		return 0
	}
	var n uint64
	for _, v := range vals {
		n += v
	}
	return n
}

// Intercepted lists the cgroup paths whose processes are intercepted:
// those the hooks are attached to ("cgroup" attach) or those in the
// selection map ("root" attach), sorted.
func (a *Agent) Intercepted() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	if a.cfg.Attach == "root" {
		for _, p := range a.selected {
			out = append(out, p)
		}
	} else {
		for _, at := range a.attached {
			out = append(out, at.path)
		}
	}
	sort.Strings(out)
	return out
}

// InterceptAddrs returns the verified intercept addresses (v6 invalid
// when IPv6 is not intercepted).
func (a *Agent) InterceptAddrs() (v4, v6 netip.Addr) { return a.ia.v4, a.ia.v6 }

// Close stops the agent. failMode "open": the hooks are detached first (new
// connects go direct), then the listeners close and the address the agent
// added is removed. failMode "closed": the pinned hooks and maps stay, and
// so does the address (connects fail until an agent is back). Handlers see
// their context cancelled; Close waits up to 5s for them.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.shutdown()
	return nil
}

// abort undoes a failed Start.
func (a *Agent) abort() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.shutdown()
}

func (a *Agent) shutdown() {
	a.cancel()
	if a.watch != nil {
		a.watch.close()
	}
	a.mu.Lock()
	for id, at := range a.attached {
		// connect first, sockops last: the reverse of attach.
		for i := len(hooks) - 1; i >= 0; i-- {
			if l := at.links[hooks[i].name]; l != nil {
				l.Close() // detaches unless pinned (closed mode)
			}
		}
		delete(a.attached, id)
	}
	for k, l := range a.oldLinks {
		l.Close()
		delete(a.oldLinks, k)
	}
	a.mu.Unlock()
	for _, l := range a.lns {
		l.Close()
	}
	done := make(chan struct{})
	go func() { a.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		a.log.Warn("handlers still running after close")
	}
	if a.rb != nil {
		a.rb.Close()
	}
	a.wg.Wait()
	a.objs.Close()
	if a.ia != nil && a.cfg.FailMode != "closed" {
		a.ia.remove(a.log)
	}
	a.log.Info("agent stopped", "failMode", a.cfg.FailMode)
}

// Cleanup removes everything an agent with cfg installed: pinned hooks
// (detached), pinned maps, the pin directory, the intercept addresses and
// the sluice0 link. Run it with no agent running (`sluice agent --cleanup`).
func Cleanup(cfg config.Agent, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "agent")
	var errs []error
	linksDir := filepath.Join(cfg.BPFFS, "links")
	if ents, err := os.ReadDir(linksDir); err == nil {
		for _, e := range ents {
			p := filepath.Join(linksDir, e.Name())
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				if err := os.Remove(p); err != nil {
					errs = append(errs, fmt.Errorf("remove pin %s: %w", p, err))
				}
				continue
			}
			detachLink(l)
			log.Info("removed hook", "pin", p)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list pins %s: %w", linksDir, err))
	}
	if _, err := os.Stat(cfg.BPFFS); err == nil {
		if err := os.RemoveAll(cfg.BPFFS); err != nil {
			errs = append(errs, fmt.Errorf("remove pins %s: %w", cfg.BPFFS, err))
		}
	}
	if err := removeIntercept(cfg.InterceptIPv4, cfg.InterceptIPv6); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
