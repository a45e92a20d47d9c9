package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

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
	o, err := a.origin(peer)
	if err != nil {
		a.log.Warn("closing connection without origin", audit.KeyPeer, peer.String(), audit.KeyError, err)
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
		NetnsCookie: o.NetnsCookie,
		meta:        a.opts.Metadata,
		startTime:   o.StartTime, execID: o.ExecId, exes: a.exes,
	})
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
