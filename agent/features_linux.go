package agent

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// probeKernel checks every kernel feature the hooks need and names what is
// missing with the kernel version that brings it.
func probeKernel() error {
	type probe struct {
		what, kernel string
		fn           func() error
	}
	helper := func(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
		return func() error { return features.HaveProgramHelper(pt, fn) }
	}
	probes := []probe{
		{"cgroup sock_addr programs (connect4/6)", "4.17", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"sockops programs", "4.13", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"ring buffer maps", "5.8", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"LPM trie maps", "4.11", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"LRU hash maps", "4.10", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"bpf_getsockopt in sock_addr programs (SO_MARK check)", "5.8", helper(ebpf.CGroupSockAddr, asm.FnGetsockopt)},
		{"bpf_get_current_cgroup_id in sock_addr programs", "5.7", helper(ebpf.CGroupSockAddr, asm.FnGetCurrentCgroupId)},
		{"bpf_ringbuf_reserve in sock_addr programs", "5.8", helper(ebpf.CGroupSockAddr, asm.FnRingbufReserve)},
		{"bpf_sock_ops_cb_flags_set in sockops programs", "4.16", helper(ebpf.SockOps, asm.FnSockOpsCbFlagsSet)},
		{"cgroup/getpeername4 programs", "5.8", attachType(ebpf.AttachCgroupInet4GetPeername)},
		{"cgroup/getpeername6 programs", "5.8", attachType(ebpf.AttachCgroupInet6GetPeername)},
		{"cgroup/sendmsg4 programs (DNS and QUIC on UDP)", "4.18", attachType(ebpf.AttachCGroupUDP4Sendmsg)},
		{"cgroup/sendmsg6 programs (DNS and QUIC on UDP)", "4.18", attachType(ebpf.AttachCGroupUDP6Sendmsg)},
		{"cgroup/recvmsg4 programs (DNS replies)", "5.2", attachType(ebpf.AttachCGroupUDP4Recvmsg)},
		{"cgroup/recvmsg6 programs (DNS replies)", "5.2", attachType(ebpf.AttachCGroupUDP6Recvmsg)},
		{"cgroup/setsockopt programs (the mark guard)", "5.3", func() error { return features.HaveProgramType(ebpf.CGroupSockopt) }},
		{"cgroup_skb programs (the packet deny)", "4.10", func() error { return features.HaveProgramType(ebpf.CGroupSKB) }},
		{"bpf_skb_cgroup_id in cgroup_skb programs", "5.8", helper(ebpf.CGroupSKB, asm.FnSkbCgroupId)},
		{"bpf_ringbuf_reserve in cgroup_skb programs", "5.8", helper(ebpf.CGroupSKB, asm.FnRingbufReserve)},
	}
	var errs []error
	for _, p := range probes {
		err := p.fn()
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			errs = append(errs, fmt.Errorf("kernel %s lacks %s: needs Linux %s or later", kernelRelease(), p.what, p.kernel))
		default:
			errs = append(errs, fmt.Errorf("probe %s: %w", p.what, err))
		}
	}
	return errors.Join(errs...)
}

// haveOriginSlots reports whether the connect hooks may keep origins in
// sluice_origin_slots: a sock_addr program may use a compare-and-swap
// (BPF atomics, Linux 5.12). Without, they keep them in sluice_origins.
func haveOriginSlots() error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, -8),
			asm.Mov.Imm(asm.R2, 1),
			asm.CmpXchg.Mem(asm.R1, asm.R2, asm.DWord, 0), // r0 = cmpxchg(*(u64 *)r1, r0, r2)
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("%w: bpf atomics: %w", ebpf.ErrNotSupported, err)
	}
	return p.Close()
}

// attachType probes whether a sock_addr program with expected attach type
// at loads: the kernel refuses attach types it does not know with EINVAL.
func attachType(at ebpf.AttachType) func() error {
	return func() error {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.CGroupSockAddr,
			AttachType:   at,
			Instructions: asm.Instructions{asm.LoadImm(asm.R0, 1, asm.DWord), asm.Return()},
			License:      "GPL",
		})
		if err != nil {
			if errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
			}
			return err
		}
		return p.Close()
	}
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "(unknown)"
	}
	return unix.ByteSliceToString(u.Release[:])
}
