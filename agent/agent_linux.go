package agent

import (
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/bpf"
	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// Agent is a running node agent. Its methods are safe for concurrent use.
type Agent struct {
	cfg   config.Agent
	log   *slog.Logger
	h     Handler
	opts  Options
	mount string
	globs []cgroup2.Glob
	// sels are agent.select: containers and pods by runtime metadata
	// (Options.Metadata).
	sels []workload.Selector
	objs bpf.SluiceObjects
	ia   *interceptAddrs
	aw   *addrWatch // keeps ia in place; nil until Start has placed it
	hold *holder    // this process's record as holder of cfg's state
	lns  []net.Listener
	// dnsSrvs serve Options.DNS on agent.dnsPort (none without it).
	dnsSrvs []*dns.Server
	// dnsTCP holds the origins of the open TCP connections to dnsSrvs,
	// dnsUDP hands out those of UDP queries.
	dnsTCP dnsTCPOrigins
	dnsUDP dnsUDPOrigins
	rb     *ringbuf.Reader
	ring   *ringWait // where readEvents waits for rb
	// bypassNames are agent.bypassHosts; bypass the addresses learned
	// for them (nil without any).
	bypassNames hostMatcher
	bypass      *bypassTable
	names       *cgroupNames
	exes        *exeCache
	// noLookupAndDelete: the kernel refused lookup-and-delete on
	// sluice_peers once; takeOrigin looks up and deletes instead.
	noLookupAndDelete atomic.Bool
	watch             *watcher
	// noOriginConn and noOriginDNS limit the warnings about connections
	// and DNS queries the kernel named no origin for.
	noOriginConn, noOriginDNS logLimit
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
	log = log.With(audit.KeyComponent, "agent")
	if opts.OriginWait <= 0 {
		opts.OriginWait = 250 * time.Millisecond
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	if err := probeKernel(); err != nil {
		return nil, err
	}
	mount, err := cgroup2.Mount()
	if err != nil {
		return nil, err
	}
	globs, err := compileGlobs(cfg.Cgroups)
	if err != nil {
		return nil, err
	}
	sels := compileSelect(cfg.Select)
	if len(sels) > 0 && opts.Metadata == nil {
		return nil, errors.New("start agent: agent.select needs container metadata, and no container runtime was found: set agent.runtime.docker or agent.runtime.cri to the runtime's socket")
	}
	settings, ports, err := compileSettings(cfg)
	if err != nil {
		return nil, err
	}
	if opts.DNS == nil {
		// Nothing would answer: leave workloads' DNS alone.
		settings.DnsPort = 0
	}

	if h == nil {
		return nil, errors.New("start agent: nil handler")
	}
	a := &Agent{
		cfg: cfg, log: log, h: h, opts: opts, mount: mount, globs: globs, sels: sels,
		names:    newCgroupNames(mount),
		exes:     newExeCache(exeCacheSize),
		attached: map[uint64]*attachment{},
		roots:    map[string]uint64{},
		selected: map[uint64]string{},
		oldLinks: map[string]link.Link{},
	}
	a.noOriginConn.every, a.noOriginDNS.every = noOriginLogEvery, noOriginLogEvery
	if a.own, err = cgroup2.Self(); err != nil {
		// Not fatal, but the agent cannot keep its own cgroup out of a
		// selection it cannot name.
		log.Warn("agent's own cgroup unknown", audit.KeyError, err)
	} else if settings.AgentCgroup, err = cgroup2.ID(filepath.Join(mount, a.own)); err != nil {
		// Not fatal either: no socket is then exempt as the agent's, so
		// a workload's marked socket is redirected all the same.
		log.Warn("agent's own cgroup id unknown", audit.KeyCgroup, a.own, audit.KeyError, err)
		settings.AgentCgroup = 0
	}
	a.ctx, a.cancel = context.WithCancel(ctx)
	ok := false
	defer func() {
		if !ok {
			a.abort()
		}
	}()

	// Nothing another live agent holds is replaced.
	if a.hold, err = claim(cfg, opts.Force); err != nil {
		return nil, err
	}
	// The address first: nothing is attached unless it is local.
	if a.ia, err = ensureIntercept(cfg.InterceptIPv4, cfg.InterceptIPv6, log); err != nil {
		return nil, err
	}
	linkName := a.ia.link.Attrs().Name // the watch may replace a vanished link
	a.aw = startAddrWatch(a.ia, log)
	settings.Intercept4 = binary.NativeEndian.Uint32(a.ia.v4.AsSlice()) // network order in memory
	settings.Flags |= uint16(bpf.SluiceSettingFlagSET_V4)
	if a.ia.v6.IsValid() {
		settings.Intercept6 = a.ia.v6.As16()
		settings.Flags |= uint16(bpf.SluiceSettingFlagSET_V6)
	}

	if err := a.load(settings, ports); err != nil {
		return nil, err
	}
	a.startBypassHosts(settings.DnsPort != 0)
	if err := a.listen(); err != nil {
		return nil, err
	}
	if settings.DnsPort != 0 {
		if err := a.listenDNS(); err != nil {
			return nil, err
		}
	}
	if err := a.adoptPins(); err != nil {
		return nil, err
	}

	// Select: the root, or the cgroups matching the globs.
	if cfg.Attach == "root" {
		rootID, err := cgroup2.ID(mount)
		if err != nil {
			return nil, fmt.Errorf("select cgroup2 root: %w", err)
		}
		if err := a.attach(rootID, "/"); err != nil {
			return nil, err
		}
	}
	if len(sels) > 0 {
		opts.Metadata.OnChange(a.onMetaChange)
	}
	if len(globs) > 0 || len(sels) > 0 || cfg.Attach == "root" {
		if a.watch, err = newWatcher(mount, a.onNewCgroup, a.onGoneCgroup, log); err != nil {
			return nil, err
		}
	}
	var serr []error
	walkCgroups(mount, mount, func(rel string, id uint64) {
		a.names.add(id, rel)
		if err := a.consider(rel, id, false); err != nil {
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
	if a.ring, err = openRingWait(a.objs.SluiceEvents, a.rb); err != nil {
		return nil, err
	}
	a.wg.Add(1)
	go a.readEvents()
	a.wg.Add(1)
	go a.runClock()
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
	log.Info("agent started", audit.KeyMount, mount, audit.KeyAttach, cfg.Attach, audit.KeyFailMode, cfg.FailMode, audit.KeyIntercept4, a.ia.v4.String(), audit.KeyIntercept6, a.ia.v6.String(), audit.KeyProxyPort, cfg.ProxyPort, audit.KeyLink, linkName)
	return a, nil
}

// compileSettings turns the config into the kernel's settings and ports.
func compileSettings(cfg config.Agent) (bpf.SluiceSettings, []uint16, error) {
	s := bpf.SluiceSettings{Mark: cfg.Mark, ProxyPort: cfg.ProxyPort, DnsPort: cfg.DNSPort}
	if cfg.Attach == "root" {
		s.Flags |= uint16(bpf.SluiceSettingFlagSET_USE_SELECTION)
	}
	if cfg.RefuseQUIC {
		s.Flags |= uint16(bpf.SluiceSettingFlagSET_REFUSE_QUIC)
	}
	var ports []uint16
	var errs []error
	for i, p := range cfg.Ports {
		if p == "all" {
			s.Flags |= uint16(bpf.SluiceSettingFlagSET_ALL_PORTS)
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
	if cfg.DNSPort != 0 && cfg.DNSPort == cfg.ProxyPort {
		errs = append(errs, fmt.Errorf("agent.dnsPort %d: must differ from agent.proxyPort, e.g. 15053", cfg.DNSPort))
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
	// With the current task's BTF the hooks name the process image of
	// each connect, and the agent remembers its exe (exeCache); without
	// it (older kernels) the agent reads the exe link at every event.
	if features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetCurrentTaskBtf) == nil {
		if err := spec.Variables[bpf.SluiceVarHaveTaskBtf].Set(uint32(1)); err != nil {
			return fmt.Errorf("set %s: %w", bpf.SluiceVarHaveTaskBtf, err)
		}
	}
	// With BPF atomics the connect hooks keep redirected origins in
	// sluice_origin_slots, without a hash update per connect.
	if haveOriginSlots() == nil {
		if err := spec.Variables[bpf.SluiceVarHaveOriginSlots].Set(uint32(1)); err != nil {
			return fmt.Errorf("set %s: %w", bpf.SluiceVarHaveOriginSlots, err)
		}
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
	if err := a.objs.SluiceClock.Put(uint32(0), uint64(1)); err != nil {
		return fmt.Errorf("start the hooks' clock: %w", err)
	}
	for _, p := range ports {
		if err := a.objs.SluicePorts.Put(uint32(p), uint8(1)); err != nil {
			return fmt.Errorf("write ports map: %w", err)
		}
	}
	deny, err := expandAddrPorts(a.opts.DenyAddrPorts)
	if err != nil {
		return err
	}
	for _, ap := range deny {
		k := bpf.SluicePeerKey{Addr: ap.Addr().As16(), Port: ap.Port()}
		if err := a.objs.SluiceDenyAddrport.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("write deny map %s: %w", ap, err)
		}
	}
	// One trie per family holds both lists; bypass entries are written
	// last, so a prefix in both lists is bypassed (the operator's
	// explicit exemption), and the longest prefix decides otherwise.
	for _, l := range []struct {
		name  string
		pfxs  []netip.Prefix
		value uint8
	}{
		{"deny", a.cfg.DenyCIDRs, uint8(bpf.SluiceCidrActionCIDR_DENY)},
		{"bypass", a.cfg.BypassCIDRs, uint8(bpf.SluiceCidrActionCIDR_BYPASS)},
	} {
		for _, pfx := range l.pfxs {
			pfx = pfx.Masked()
			if pfx.Addr().Is4() {
				k := bpf.SluiceLpm4Key{Prefixlen: uint32(pfx.Bits()), Addr: pfx.Addr().As4()}
				err = a.objs.SluiceDeny4.Put(&k, l.value)
			} else {
				k := bpf.SluiceLpm6Key{Prefixlen: uint32(pfx.Bits()), Addr: pfx.Addr().As16()}
				err = a.objs.SluiceDeny6.Put(&k, l.value)
			}
			if err != nil {
				return fmt.Errorf("write %s map %s: %w", l.name, pfx, err)
			}
		}
	}
	return nil
}

// listen opens the transparent listeners on the intercept addresses.
func (a *Agent) listen() error {
	// No TCP keep-alive on accepted connections: every client is a process
	// on this node, whose end the kernel reports at once (FIN or RST), and
	// Go's default costs four setsockopt calls per accepted connection.
	lc := net.ListenConfig{Control: MarkControl(a.cfg.Mark), KeepAlive: -1}
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
	for _, s := range a.dnsSrvs {
		_ = s.Shutdown()
	}
	done := make(chan struct{})
	go func() { a.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		a.log.Warn("handlers still running after close")
	}
	if a.rb != nil {
		// The events still in the ring buffer are read first (they may
		// not have woken the reader, see eventBatchWait): the reader
		// sees the flush at once, its wait ended (a parked reader's next
		// look may be a second away).
		if err := a.rb.Flush(); err != nil {
			a.rb.Close()
		}
		if a.ring != nil {
			a.ring.interrupt()
		}
	}
	a.wg.Wait()
	if a.rb != nil {
		a.rb.Close()
	}
	if a.ring != nil {
		a.ring.close()
	}
	a.objs.Close()
	if a.aw != nil {
		a.aw.close()
	}
	if a.ia != nil && a.cfg.FailMode != "closed" {
		a.ia.remove(a.log)
	}
	if a.hold != nil {
		if err := a.hold.release(); err != nil {
			a.log.Warn("release intercept state", audit.KeyError, err)
		}
	}
	a.log.Info("agent stopped", audit.KeyFailMode, a.cfg.FailMode)
}

// Cleanup removes everything an agent with cfg installed: pinned hooks
// (detached), pinned maps, the pin directory, the intercept addresses,
// their guards and the sluice0 link (`sluice agent --cleanup`). It
// refuses with a *HeldError, removing nothing, while another live agent
// process holds the address or the pins; CleanupWith can force it.
func Cleanup(cfg config.Agent, log *slog.Logger) error {
	return CleanupWith(cfg, log, CleanupOptions{})
}

// CleanupWith is Cleanup with options.
func CleanupWith(cfg config.Agent, log *slog.Logger, o CleanupOptions) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(audit.KeyComponent, "agent")
	stale, err := checkHeld("clean up", cfg)
	if err != nil && !o.Force {
		return err
	}
	if err != nil {
		log.Warn("cleaning up state a live agent holds (forced)", audit.KeyError, err)
	}
	var errs []error
	for _, h := range stale {
		if err := os.Remove(h.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove stale holder record %s: %w", h.path, err))
		}
	}
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
			log.Info("removed hook", audit.KeyPin, p)
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
