/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The mark guard: a selected workload may not give a socket the agent's
 * mark. cgroup/setsockopt refuses SOL_SOCKET/SO_MARK with that value
 * (EPERM) and records the attempt (REASON_MARK_FORGED). Other marks, and
 * every other option, pass untouched.
 *
 * The guard is defence in depth and a tripwire: the connect hooks no
 * longer trust the mark alone (agent_socket in sluice.c), so a socket
 * marked before its cgroup was selected is still redirected.
 *
 * Included by sluice.c after the shared maps and helpers.
 */
#ifndef SLUICE_MARK_GUARD_H
#define SLUICE_MARK_GUARD_H

/* emit_mark_forged records who tried to set the agent's mark. */
static __always_inline void emit_mark_forged(struct bpf_sockopt *ctx)
{
	struct origin o = {};
	struct bpf_sock *sk = ctx->sk;
	__u32 protocol = 0;

	o.pid = bpf_get_current_pid_tgid() >> 32;
	o.uid = (__u32)bpf_get_current_uid_gid();
	o.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	if (sk)
		protocol = sk->protocol;
	emit_event(&o, VERDICT_DENIED, REASON_MARK_FORGED, protocol);
}

SEC("cgroup/setsockopt")
int sluice_setsockopt(struct bpf_sockopt *ctx)
{
	struct settings *s = get_settings();
	__u8 *val = ctx->optval;
	__u8 *end = ctx->optval_end;
	__u32 mark;

	if (!s || !s->mark || unselected(s, bpf_get_current_cgroup_id()))
		return 1;
	if (ctx->level != SOL_SOCKET_ || ctx->optname != SO_MARK_)
		return 1;
	/* The agent itself (never selected, but an earlier agent's pinned
	 * hooks may cover it). */
	if (s->agent_cgroup && bpf_get_current_cgroup_id() == s->agent_cgroup)
		return 1;
	/* The kernel reads the first int of optval and refuses a shorter
	 * optlen itself (EINVAL). */
	if (ctx->optlen < (int)sizeof(mark))
		return 1;
	if (val + sizeof(mark) <= end) {
		__builtin_memcpy(&mark, val, sizeof(mark));
		if (mark != s->mark)
			return 1;
	}
	/* The agent's value, or a value the program could not read: refuse. */
	emit_mark_forged(ctx);
	return 0;
}

#endif /* SLUICE_MARK_GUARD_H */
