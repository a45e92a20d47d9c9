package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/sluicehq/sluice/bpf"
)

var reasons = map[uint8]string{
	uint8(bpf.SluiceReasonREASON_DENY_CIDR):            ReasonDenyCIDR,
	uint8(bpf.SluiceReasonREASON_DENY_ADDR_PORT):       ReasonDenyAddrPort,
	uint8(bpf.SluiceReasonREASON_PORT):                 ReasonPort,
	uint8(bpf.SluiceReasonREASON_NOT_TCP):              ReasonNotTCP,
	uint8(bpf.SluiceReasonREASON_PORT_NOT_INTERCEPTED): ReasonPortNotListed,
	uint8(bpf.SluiceReasonREASON_NO_INTERCEPT):         ReasonNoIntercept,
	uint8(bpf.SluiceReasonREASON_BYPASS_CIDR):          ReasonBypassCIDR,
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
			a.log.Warn("read event", "error", err)
			continue
		}
		var e bpf.SluiceEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			a.log.Warn("decode event", "error", err)
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
		r = ReasonUnknown
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
