package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/bpf"
	"github.com/sluicehq/sluice/workload"
)

// accept serves one listener until it is closed.
func (a *Agent) accept(l net.Listener) {
	defer a.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || a.ctx.Err() != nil {
				return
			}
			a.log.Warn("accept", audit.KeyError, err)
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
	o, err := a.origin(c, peer)
	if errors.Is(err, errPeerReset) {
		c.Close() // nothing to proxy, nobody to answer
		return
	}
	if err != nil {
		if held, ok := a.noOriginConn.allow(time.Now()); ok {
			a.log.Warn("closing connection without origin", audit.KeyPeer, peer.String(), audit.KeyError, err, audit.KeySuppressed, held)
		}
		c.Close()
		return
	}
	dst, id := a.describe(o, peer)
	a.reportRedirect(o, dst, id)
	a.h.Handle(a.ctx, c, dst, id)
}

// reportRedirect hands OnEvent the redirect of a connection the proxy
// accepted. The connect hooks queue no event for it (sluice.c decide):
// its origin, read here anyway, says all that event said, and the ring
// buffer write, the wake-up and the read cost more than the redirect
// itself.
func (a *Agent) reportRedirect(o bpf.SluiceOrigin, dst workload.Destination, id workload.Identity) {
	if a.opts.OnEvent == nil {
		return
	}
	a.opts.OnEvent(Event{
		Time: time.Now(), Verdict: Redirected, Reason: ReasonPort,
		Dst: dst.Addr, Protocol: unix.IPPROTO_TCP,
		PID: id.PID, UID: id.UID, Comm: id.Comm, CgroupID: o.CgroupId, Cgroup: id.Cgroup,
		meta:      a.opts.Metadata,
		startTime: o.StartTime, execID: o.ExecId, exes: a.exes,
	})
}

var (
	errNoOrigin  = errors.New("no origin recorded for this peer")
	errPeerReset = errors.New("peer reset the connection before its origin was read")
)

// origin reads and deletes the kernel's record for peer, the peer of c,
// waiting up to OriginWait for it to appear; but not once c is closed
// (TCP_CLOSE, the peer reset it): a record missing then is not coming
// (it was evicted, or written by an agent before this one), and waiting
// would cost a dozen lookups and wake-ups. A peer that closed before
// the accept still has its record: sockops keeps it for the agent.
func (a *Agent) origin(c net.Conn, peer netip.AddrPort) (bpf.SluiceOrigin, error) {
	k := peerKey(peer)
	return waitOrigin(peer, asBytes(&k), a.opts.OriginWait, a.takeOrigin, func() bool { return peerReset(c) })
}

// peerKey is the sluice_peers key of peer. As16 writes IPv4 as
// ::ffff:a.b.c.d, as the kernel does.
func peerKey(peer netip.AddrPort) bpf.SluicePeerKey {
	return bpf.SluicePeerKey{Addr: peer.Addr().As16(), Port: peer.Port()}
}

// asBytes is the memory of *p. As bytes, cilium/ebpf hands keys and
// values to the syscall as they are; as structs with padding it takes
// reflection and a copy.
func asBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// waitOrigin reads the origin of peer, under the map key kb, with read (a
// lookup, or a lookup and delete), retrying while the kernel has none,
// for up to wait or until gone (nil: never) says it will not come
// (errPeerReset). The first read costs no clock read; the retries back
// off from 1 to 20 ms.
func waitOrigin(peer netip.AddrPort, kb []byte, wait time.Duration, read func(kb, ob []byte) error, gone func() bool) (bpf.SluiceOrigin, error) {
	var o bpf.SluiceOrigin
	ob := asBytes(&o)
	var deadline time.Time
	pause := time.Millisecond
	for {
		err := read(kb, ob)
		if err == nil {
			return o, nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return o, fmt.Errorf("look up origin of %s: %w", peer, err)
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(wait)
		}
		if gone != nil && gone() {
			return o, fmt.Errorf("look up origin of %s: %w", peer, errPeerReset)
		}
		if time.Now().After(deadline) {
			return o, fmt.Errorf("look up origin of %s: %w", peer, errNoOrigin)
		}
		time.Sleep(pause)
		pause = min(pause*2, 20*time.Millisecond)
	}
}

// takeOrigin reads the sluice_peers entry of key kb into ob and deletes
// it (take).
func (a *Agent) takeOrigin(kb, ob []byte) error {
	return a.take(a.objs.SluicePeers, kb, ob)
}

// take reads the entry of key kb of the hash map m into ob and deletes
// it: in one syscall where the kernel can (lookup-and-delete on hash
// maps, Linux 5.14), else a lookup and a delete.
func (a *Agent) take(m *ebpf.Map, kb, ob []byte) error {
	if !a.noLookupAndDelete.Load() {
		err := m.LookupAndDelete(kb, ob)
		if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		a.noLookupAndDelete.Store(true) // an older kernel: EINVAL or ENOTSUPP
	}
	if err := m.Lookup(kb, ob); err != nil {
		return err
	}
	_ = m.Delete(kb)
	return nil
}

// tcpClose is TCP_CLOSE of the kernel's TCP states (net/tcp_states.h).
const tcpClose = 7

// peerReset reports whether the peer of c has reset it (the socket is in
// TCP_CLOSE). A peer that only half-closed (FIN) may still have its
// record, so it is waited for as before.
func peerReset(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	_ = rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		closed = err == nil && info.State == tcpClose
	})
	return closed
}

// describe builds the destination and identity of a redirected connection.
func (a *Agent) describe(o bpf.SluiceOrigin, peer netip.AddrPort) (workload.Destination, workload.Identity) {
	addr := netip.AddrFrom16(o.Addr)
	if o.Family == unix.AF_INET {
		addr = addr.Unmap()
	}
	dst := workload.Destination{Addr: netip.AddrPortFrom(addr, o.Port), Port: o.Port}
	pid := int(o.Pid)
	img := procImage{pid: pid, startTime: o.StartTime, execID: o.ExecId}
	id := processIdentity(a.ctx, a.opts.Metadata, a.exes, img, o.Uid, cString(o.Comm[:]), a.names.lookup(o.CgroupId, pid))
	id.Client = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
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
