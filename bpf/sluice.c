//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Sluice's cgroup hooks: steer the TCP connects of selected cgroups to the
 * agent's transparent proxy, refuse denied destinations in the kernel, and
 * remember the original destination and the process that connected.
 *
 *   connect4/6     decide: skip (the agent's own marked sockets,
 *                  unselected cgroup), deny (LPM trie, EPERM), redirect
 *                  (intercepted TCP port) or direct; record the origin by
 *                  socket cookie; one ring buffer event per decision the
 *                  proxy does not see (a redirect to the proxy has none:
 *                  the agent reports it when the proxy accepts it).
 *   sockops        on active establishment copy the origin to a map keyed
 *                  by the workload-side {ip, port}, which is the peer the
 *                  proxy sees; drop the cookie's entry when the socket
 *                  closes (the agent deletes the peer's at accept).
 *   getpeername4/6 give the application its original destination back.
 *   setsockopt     refuse SO_MARK with the agent's mark (mark_guard.h).
 *   egress         drop every packet to a denied CIDR, raw ones too
 *                  (egress.h); name the sender of each DNS datagram.
 *   sendmsg4/6     UDP to port 53 goes to the agent's DNS server, UDP to
 *   recvmsg4/6     port 443 (QUIC) is refused; replies seem to come from
 *                  the resolver the workload asked (dns.h).
 *
 * Only UAPI headers are used (no vmlinux.h, no CO-RE): every context field
 * read here is part of the stable BPF UAPI.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCK_STREAM_ 1
#define IPPROTO_TCP_ 6
#define SOL_SOCKET_ 1
#define SO_MARK_ 36
#define TCP_CLOSE_ 7
#define IPPROTO_UDP_ 17
#define SOCK_DGRAM_ 2
#define DNS_PORT_ 53
#define QUIC_PORT_ 443
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD

char __license[] SEC("license") = "Dual BSD/GPL";

/* Verdicts carried by events. */
enum verdict {
	VERDICT_REDIRECTED = 1,
	VERDICT_DENIED = 2,
	VERDICT_DIRECT = 3,
};

/* Reasons refine a verdict. */
enum reason {
	REASON_NONE = 0,
	REASON_DENY_CIDR = 1,     /* destination in the deny trie */
	REASON_PORT = 2,          /* intercepted TCP port: redirected */
	REASON_NOT_TCP = 3,       /* not a TCP stream socket: direct */
	REASON_PORT_NOT_INTERCEPTED = 4,
	REASON_NO_INTERCEPT = 5,  /* no verified intercept address for the family */
	/* 6 was REASON_ALREADY, never emitted (an already-steered connect
	 * returns without an event); do not reuse it. */
	REASON_DENY_ADDR_PORT = 7, /* destination is one of the agent's private ports */
	REASON_BYPASS_CIDR = 8,   /* destination in agent.bypassCIDRs: direct */
	REASON_MARK_FORGED = 9,   /* setsockopt SO_MARK to the agent's mark: EPERM */
	REASON_DENY_CIDR_PACKET = 10, /* a packet to agent.denyCIDRs dropped on egress */
	REASON_DNS = 11,          /* TCP or connected UDP to port 53: to the DNS server */
	REASON_QUIC = 12,         /* UDP to port 443 refused (agent.refuseQUIC) */
};

/* Values of the CIDR tries (sluice_deny4/6): the longest prefix decides. */
enum cidr_action {
	CIDR_NONE = 0,            /* no prefix holds the address */
	CIDR_DENY = 1,            /* agent.denyCIDRs: refuse the connect */
	CIDR_BYPASS = 2,          /* agent.bypassCIDRs: never redirect */
};

/* Bits of settings.flags. */
enum setting_flag {
	SET_V4 = 1,               /* intercept4 verified local */
	SET_V6 = 2,               /* intercept6 verified local */
	SET_ALL_PORTS = 4,        /* intercept every TCP port */
	SET_USE_SELECTION = 8,    /* consult the selected-cgroups map (root attach) */
	SET_REFUSE_QUIC = 16,     /* refuse UDP to port 443 (EPERM) */
};

/* Where a map update failed: the keys of sluice_map_errors. */
enum map_error_site {
	MAP_ERR_ORIGINS = 0,      /* connect4/6: sluice_origins by socket cookie */
	MAP_ERR_PEERS = 1,        /* sockops: sluice_peers by workload {ip, port} */
	MAP_ERR_DNS_PEERS = 2,    /* egress: sluice_dns_peers by workload {ip, port, id} */
	MAP_ERR_ORIGIN_SLOTS = 3, /* connect4/6: no free slot of four; the origin went to sluice_origins */
	MAP_ERR_SITES,            /* the number of sites */
};

/* settings is the agent's configuration, one entry, written by the agent
 * after it verified that the intercept addresses are local. */
struct settings {
	__u32 mark;            /* SO_MARK of the agent's sockets; 0: none */
	__u32 intercept4;      /* network order; valid when flags & SET_V4 */
	__u8 intercept6[16];   /* valid when flags & SET_V6 */
	__u16 proxy_port;      /* host order */
	__u16 flags;           /* enum setting_flag bits */
	__u16 dns_port;        /* host order; 0: DNS is not redirected */
	__u16 _pad;
	/* The agent's own cgroup id: only a socket connected from it and
	 * carrying the mark is the agent's. 0: unknown, nothing is exempt. */
	__u64 agent_cgroup;
};

/* origin is what connect saw: the original destination and the process. */
struct origin {
	__u8 addr[16];         /* IPv4 as ::ffff:a.b.c.d */
	__u16 port;            /* host order */
	__u16 family;          /* AF_INET or AF_INET6 of the destination */
	__u32 pid;             /* tgid */
	__u32 uid;
	__u32 _pad;
	__u64 cgroup_id;
	char comm[16];
	__u64 start_time;      /* the process's start (group leader's start_time, ns since boot) */
	__u64 exec_id;         /* the task's self_exec_id: +1 at each execve */
};

/* peer_key is the workload side of a redirected connection, as the proxy
 * sees it: its address (IPv4 as ::ffff:a.b.c.d) and port. */
struct peer_key {
	__u8 addr[16];
	__u16 port;            /* host order */
	__u16 _pad;
};

/* dns_key is one UDP query to the DNS server, as the DNS server sees it:
 * its sender's address (IPv4 as ::ffff:a.b.c.d) and port, and the DNS
 * message id (the first two bytes of the payload). */
struct dns_key {
	__u8 addr[16];
	__u16 port;            /* host order */
	__u16 id;              /* host order */
};

/* dns_origin is the origin of one UDP query and when egress wrote it
 * (bpf_ktime_get_ns, CLOCK_MONOTONIC): the agent takes none older than
 * a query waits in its socket. */
struct dns_origin {
	struct origin o;
	__u64 at;
};

/* event is one connect decision. */
struct event {
	__u8 addr[16];         /* original destination, IPv4 as ::ffff:a.b.c.d */
	__u16 port;            /* host order */
	__u8 verdict;
	__u8 reason;
	__u32 pid;
	__u32 uid;
	__u32 protocol;
	__u64 cgroup_id;
	char comm[16];
	__u64 start_time;      /* as in struct origin */
	__u64 exec_id;
	__u64 at;              /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the decision */
};

struct lpm4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} sluice_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);    /* cgroup id */
	__type(value, __u8);
} sluice_selected SEC(".maps");

/* The intercepted TCP ports: 1 at the index of each (host order). An
 * array, whose lookup the JIT inlines, where a hash lookup cost a call
 * and a hash on every redirect. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} sluice_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, __u8);
} sluice_deny4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6_key);
	__type(value, __u8);
} sluice_deny6 SEC(".maps");

/* Exact destinations refused for every selected workload, e.g. the
 * agent's admin listener on the node's addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct peer_key);
	__type(value, __u8);
} sluice_deny_addrport SEC(".maps");

/* Origins by socket cookie: read by sockops and getpeername. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct origin);
} sluice_origins SEC(".maps");

/* Origins of redirected TCP connects, by socket cookie, in a
 * direct-mapped array: connect4/6 claim, with one compare-and-swap, the
 * first free slot of (cookie + i) mod ORIGIN_SLOTS for i below
 * ORIGIN_PROBES. An update of sluice_origins (its bucket lock, its LRU
 * lists, a cold element) was some 1 µs of the 1.7 a redirected connect
 * cost, on caches the proxy's work on the last connect had cooled; a
 * slot is one or two cache lines, which consecutive cookies of a CPU
 * share. A slot is freed when its socket closes (sockops, TCP_CLOSE),
 * and taken back from a connect that did not establish within
 * ORIGIN_CLAIM_TICKS of sluice_clock (refused, or never sent: no close
 * is seen then). When every probed slot is held (more connections in
 * flight than fit, or a run of collisions), the origin goes to
 * sluice_origins (counted, MAP_ERR_ORIGIN_SLOTS), and readers look in
 * both. Used only with
 * have_origin_slots (BPF atomics, Linux 5.12); without, sluice_origins
 * holds every origin. */
#define ORIGIN_SLOTS 65536
#define ORIGIN_PROBES 4
/* 5 to 6 minutes of sluice_clock's minutes: above the 127 s a connect
 * takes to fail with the default 6 SYN retries. */
#define ORIGIN_CLAIM_TICKS 5

struct origin_slot {
	__u64 cookie;          /* the owner's socket cookie; 0: free */
	__u64 claimed;         /* sluice_clock at the claim; 0 once established */
	struct origin o;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ORIGIN_SLOTS);
	__type(key, __u32);
	__type(value, struct origin_slot);
} sluice_origin_slots SEC(".maps");

/* A clock the agent advances every minute (agent.clockTick), from 1:
 * the age of a claim for the price of a load, where reading the kernel's
 * clock (bpf_ktime_get_coarse_ns) cost a redirected connect 0.1-0.2 µs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sluice_clock SEC(".maps");

/* Whether the agent's event reader is parked: it found the ring empty
 * and stopped looking every eventBatchWait (agent/events_linux.go), so
 * the event that lands in an empty ring wakes it. 0: it looks anyway. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sluice_reader SEC(".maps");

/* have_origin_slots is set by the agent when the kernel has what the
 * slots need (agent/features_linux.go); the verifier drops the slot code
 * otherwise. */
const volatile __u32 have_origin_slots = 0;

/* Origins by workload-side {ip, port}: read and deleted by the agent when
 * the proxy (or the DNS server, for TCP DNS) accepts the connection. Not
 * deleted when the workload's socket
 * closes: a client that connects and closes before the proxy accepts
 * (FIN_WAIT2 folded into TIME_WAIT reads as TCP_CLOSE) is still in the
 * accept queue and must still be named. Entries of connections never
 * accepted (an agent stopped with a backlog) age out of the LRU, and a
 * new connection from the same {ip, port} overwrites its own. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct origin);
} sluice_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} sluice_events SEC(".maps");

/* Ring buffer reserve failures, one counter per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sluice_drops SEC(".maps");

/* Failed map updates, one counter per CPU and enum map_error_site. The
 * agent sums them (Agent.MapErrors) for sluice_bpf_map_update_errors_total. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAP_ERR_SITES);
	__type(key, __u32);
	__type(value, __u64);
} sluice_map_errors SEC(".maps");

/* Force BTF for the types Go gets through bpf2go -type. */
const struct event *unused_event __attribute__((unused));
const struct origin *unused_origin __attribute__((unused));
const struct origin_slot *unused_origin_slot __attribute__((unused));
const struct peer_key *unused_peer_key __attribute__((unused));
const struct dns_key *unused_dns_key __attribute__((unused));
const struct dns_origin *unused_dns_origin __attribute__((unused));
const struct settings *unused_settings __attribute__((unused));
const enum verdict *unused_verdict __attribute__((unused));
const enum reason *unused_reason __attribute__((unused));
const enum cidr_action *unused_cidr_action __attribute__((unused));
const enum setting_flag *unused_setting_flag __attribute__((unused));
const enum map_error_site *unused_map_error_site __attribute__((unused));

/* map_error counts a failed map update at site (enum map_error_site).
 * Deletes are not counted: the agent deletes sluice_peers entries itself,
 * so a delete that finds nothing is normal. */
static __always_inline void map_error(__u32 site)
{
	__u64 *n = bpf_map_lookup_elem(&sluice_map_errors, &site);
	if (n)
		*n += 1;
}

static __always_inline struct settings *get_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sluice_settings, &zero);
}

/* origin_slot_at is the i-th slot cookie may use. */
static __always_inline struct origin_slot *origin_slot_at(__u64 cookie, __u32 i)
{
	__u32 k = (__u32)(cookie + i) & (ORIGIN_SLOTS - 1);
	return bpf_map_lookup_elem(&sluice_origin_slots, &k);
}

/* find_slot returns the slot that holds cookie's origin, NULL if none
 * does. */
static __always_inline struct origin_slot *find_slot(__u64 cookie)
{
	if (!have_origin_slots || !cookie) /* a free slot's cookie is 0 */
		return 0;
#pragma unroll
	for (__u32 i = 0; i < ORIGIN_PROBES; i++) {
		struct origin_slot *sl = origin_slot_at(cookie, i);
		if (sl && sl->cookie == cookie)
			return sl;
	}
	return 0;
}

/* find_origin returns cookie's origin, from its slot or sluice_origins;
 * NULL if neither holds one. When slot is not NULL, *slot is the slot
 * that holds it (NULL for sluice_origins). */
static __always_inline struct origin *find_origin(__u64 cookie, struct origin_slot **slot)
{
	struct origin_slot *sl = find_slot(cookie);
	if (slot)
		*slot = sl;
	if (sl)
		return &sl->o;
	return bpf_map_lookup_elem(&sluice_origins, &cookie);
}

/* store_origin keeps a redirected TCP connect's origin: in the first
 * probed slot that is free, is the socket's own (a connect again after
 * one failed), or was claimed by a connect that never established;
 * else in sluice_origins. It returns what bpf_map_update_elem does: < 0
 * when the origin could not be kept. The compare-and-swap makes one
 * claimer the owner; the owner alone writes the rest. */
static __always_inline long store_origin(__u64 cookie, const struct origin *o)
{
	if (have_origin_slots) {
		__u32 zero = 0;
		__u64 *clock = bpf_map_lookup_elem(&sluice_clock, &zero);
		__u64 now = clock && *clock ? *clock : 1;
#pragma unroll
		for (__u32 i = 0; i < ORIGIN_PROBES; i++) {
			struct origin_slot *sl = origin_slot_at(cookie, i);
			if (!sl)
				break;
			__u64 held = sl->cookie;
			__u64 at = sl->claimed;
			if (held && held != cookie && !(at && now - at > ORIGIN_CLAIM_TICKS))
				continue;
			if (__sync_val_compare_and_swap(&sl->cookie, held, cookie) != held)
				continue;
			sl->claimed = now;
			__builtin_memcpy(&sl->o, o, sizeof(*o));
			return 0;
		}
		map_error(MAP_ERR_ORIGIN_SLOTS);
	}
	return bpf_map_update_elem(&sluice_origins, &cookie, o, BPF_ANY);
}

/* unselected reports whether, with root attach, the current cgroup cg
 * (bpf_get_current_cgroup_id, read once per run by the caller) is not
 * selected: none of our business, not even the deny lists. The agent's
 * own cgroup is never selected. */
static __always_inline int unselected(struct settings *s, __u64 cg)
{
	if (s->flags & SET_USE_SELECTION) {
		if (!bpf_map_lookup_elem(&sluice_selected, &cg))
			return 1;
	}
	return 0;
}

/* agent_socket reports whether the connect is the agent's own: the socket
 * carries the agent's mark AND the connecting task is in the agent's
 * cgroup (cg, the current cgroup id). The mark alone proves nothing (root can set any mark, and a
 * socket can be marked before its cgroup was selected); the cgroup id is
 * the kernel's, which a workload cannot forge. The agent's own sockets are
 * not redirected, but they are still held to the deny lists. */
static __always_inline int agent_socket(struct bpf_sock_addr *ctx, struct settings *s, __u64 cg)
{
	__u32 mark = 0;
	if (!s->mark || !s->agent_cgroup)
		return 0;
	if (cg != s->agent_cgroup)
		return 0;
	return bpf_getsockopt(ctx, SOL_SOCKET_, SO_MARK_, &mark, sizeof(mark)) == 0 &&
	       mark == s->mark;
}

/* The few task_struct and cred fields fill_identity reads, relocated
 * against the running kernel's BTF (CO-RE): no vmlinux.h needed. uid is
 * the kernel's kuid_t, a struct holding the id in the initial user
 * namespace, which is what bpf_get_current_uid_gid returns. */
struct cred {
	struct {
		__u32 val;
	} uid;
} __attribute__((preserve_access_index));

struct task_struct {
	struct task_struct *group_leader;
	__u64 start_time;
	__u64 self_exec_id;
	int tgid;
	const struct cred *cred;
	char comm[16];
} __attribute__((preserve_access_index));

/* have_task_btf is set by the agent when sock_addr programs may call
 * bpf_get_current_task_btf (agent/features_linux.go); the verifier drops
 * the branch otherwise, and events carry zeros (the agent then reads the
 * exe link at every event, as it did before). */
const volatile __u32 have_task_btf = 0;

/* fill_identity records who connects; the caller has set o->cgroup_id
 * (the current cgroup, read once per run). start_time and exec_id name
 * the process image: pid and start_time the process (a reused pid starts
 * later), exec_id its execve generation (begin_new_exec increments
 * self_exec_id, which threads and children copy). The agent keys what it
 * reads from /proc/PID (the exe link) by the three, so an execve of
 * another binary is never attributed the old one.
 *
 * With task BTF the tgid, comm and uid are loads from the current task,
 * the values bpf_get_current_pid_tgid, _comm and _uid_gid return, at a
 * fraction of the cost of three helper calls (comm is copied whole; the
 * kernel keeps it NUL-terminated and zero-padded, and its last byte is
 * cleared here as the helper does). Without it, the helpers. */
static __always_inline void fill_identity(struct bpf_sock_addr *ctx, struct origin *o)
{
	if (have_task_btf) {
		struct task_struct *t = bpf_get_current_task_btf();
		const struct cred *c = t->cred;
		o->start_time = t->group_leader->start_time;
		o->exec_id = t->self_exec_id;
		o->pid = t->tgid;
		o->uid = c ? c->uid.val : 0;
		__builtin_memcpy(o->comm, t->comm, sizeof(o->comm));
		o->comm[sizeof(o->comm) - 1] = 0;
		return;
	}
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/* Bytes of waiting events that wake the agent (a quarter of the ring,
 * some 2,500 events), and the bytes one event takes in the ring (8-byte
 * header, 8-byte aligned). The reader looks every 32 ms anyway while
 * events come, so this mark only matters in a burst; each wake-up is an
 * IPI (a VM exit on a virtual machine) that costs more than a run of the
 * program, and at 4 KiB one connect in 40 paid it. */
#define EVENT_WAKEUP_BYTES (256 << 10)
#define EVENT_RECORD_BYTES ((sizeof(struct event) + 8 + 7) & ~7)
/* Waiting events, this one included, below which an event wakes a parked
 * reader: the first of an idle ring, or one of the first few when
 * programs on other CPUs queued theirs at the same moment. */
#define EVENT_PARKED_WAKE_BYTES (16 * EVENT_RECORD_BYTES)

/* reader_parked reports whether the agent's event reader waits for a
 * wake-up instead of looking (sluice_reader). */
static __always_inline int reader_parked(void)
{
	__u32 zero = 0;
	__u32 *p = bpf_map_lookup_elem(&sluice_reader, &zero);
	return p && *p;
}

/* emit_event queues one event; a full ring buffer is counted in
 * sluice_drops. */
static __always_inline void emit_event(const struct origin *o, __u8 verdict,
				       __u8 reason, __u32 protocol)
{
	struct event *e = bpf_ringbuf_reserve(&sluice_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&sluice_drops, &zero);
		if (n)
			*n += 1;
		return;
	}
	__builtin_memcpy(e->addr, o->addr, 16);
	e->port = o->port;
	e->verdict = verdict;
	e->reason = reason;
	e->pid = o->pid;
	e->uid = o->uid;
	e->protocol = protocol;
	e->cgroup_id = o->cgroup_id;
	__builtin_memcpy(e->comm, o->comm, 16);
	e->start_time = o->start_time;
	e->exec_id = o->exec_id;
	e->at = bpf_ktime_get_ns();
	/* Wake the agent only for a denial, when this event makes the
	 * waiting events cross a batch, or when it lands in the empty ring of
	 * a parked reader: a wake-up (irq_work; an IPI on a VM) costs more
	 * than the rest of the program. A reader that lags stays above the
	 * mark and is not woken again and again; while events come it reads
	 * at least every eventBatchWait (agent/events_linux.go) anyway. */
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(&sluice_events, BPF_RB_AVAIL_DATA);
	if (verdict == VERDICT_DENIED ||
	    (avail >= EVENT_WAKEUP_BYTES && avail < EVENT_WAKEUP_BYTES + EVENT_RECORD_BYTES) ||
	    (avail <= EVENT_PARKED_WAKE_BYTES && reader_parked()))
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static __always_inline void emit(struct bpf_sock_addr *ctx, const struct origin *o,
				 __u8 verdict, __u8 reason)
{
	emit_event(o, verdict, reason, ctx->protocol);
}

static __always_inline int intercepted_port(struct settings *s, __u16 port)
{
	__u32 k = port;
	__u8 *v;
	if (s->flags & SET_ALL_PORTS)
		return 1;
	v = bpf_map_lookup_elem(&sluice_ports, &k);
	return v && *v;
}

/* cidr4 and cidr6 return what the CIDR tries say of an address: an enum
 * cidr_action, CIDR_NONE when no prefix holds it. */
static __always_inline __u8 cidr4(__u32 ip)
{
	struct lpm4_key k = {.prefixlen = 32};
	__builtin_memcpy(k.addr, &ip, 4);
	__u8 *v = bpf_map_lookup_elem(&sluice_deny4, &k);
	return v ? *v : CIDR_NONE;
}

static __always_inline __u8 cidr6(const __u8 *ip)
{
	struct lpm6_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, ip, 16);
	__u8 *v = bpf_map_lookup_elem(&sluice_deny6, &k);
	return v ? *v : CIDR_NONE;
}

static __always_inline void mapped4(__u8 *dst, __u32 ip)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &ip, 4);
}

/* denied_addrport looks the destination up in the exact deny map; addr is
 * 16 bytes, IPv4 as ::ffff:a.b.c.d. */
static __always_inline int denied_addrport(const __u8 *addr, __u16 port)
{
	struct peer_key k = {};
	__builtin_memcpy(k.addr, addr, 16);
	k.port = port;
	return bpf_map_lookup_elem(&sluice_deny_addrport, &k) != 0;
}

/* decide applies, for both families alike, the deny lists (to the agent's
 * own sockets too; being the agent's only skips the redirect), the protocol, the bypass
 * list and the port to a filled origin. cidr is what the CIDR tries say of
 * the destination; can_intercept whether the family has a verified local
 * intercept address. It returns 0 to refuse the connect, 1 to let it
 * proceed, and sets *rewrite to the intercept port (after storing the
 * origin by cookie) when the destination must become the proxy (or, for
 * port 53, the DNS server). The socket cookie is read only to store an
 * origin: a socket's first read generates its cookie, and the other
 * decisions need none. */
static __always_inline int decide(struct bpf_sock_addr *ctx, struct settings *s,
				  struct origin *o, __u8 cidr,
				  int can_intercept, __u16 *rewrite)
{
	__u64 cookie;

	int stream = ctx->type == SOCK_STREAM_ && ctx->protocol == IPPROTO_TCP_;
	int dgram = ctx->type == SOCK_DGRAM_ && ctx->protocol == IPPROTO_UDP_;

	if (cidr == CIDR_DENY) {
		emit(ctx, o, VERDICT_DENIED, REASON_DENY_CIDR);
		return 0;
	}
	if (denied_addrport(o->addr, o->port)) {
		emit(ctx, o, VERDICT_DENIED, REASON_DENY_ADDR_PORT);
		return 0;
	}
	if (agent_socket(ctx, s, o->cgroup_id))
		return 1;
	if (dgram && o->port == QUIC_PORT_ && (s->flags & SET_REFUSE_QUIC)) {
		emit(ctx, o, VERDICT_DENIED, REASON_QUIC);
		return 0;
	}
	if (!stream && !(dgram && o->port == DNS_PORT_ && s->dns_port)) {
		emit(ctx, o, VERDICT_DIRECT, REASON_NOT_TCP);
		return 1;
	}
	if (cidr == CIDR_BYPASS) {
		emit(ctx, o, VERDICT_DIRECT, REASON_BYPASS_CIDR);
		return 1;
	}
	if (o->port == DNS_PORT_ && s->dns_port) {
		if (!can_intercept) {
			emit(ctx, o, VERDICT_DENIED, REASON_NO_INTERCEPT);
			return 0;
		}
		cookie = bpf_get_socket_cookie(ctx);
		if (bpf_map_update_elem(&sluice_origins, &cookie, o, BPF_ANY) < 0) {
			map_error(MAP_ERR_ORIGINS);
			emit(ctx, o, VERDICT_DENIED, REASON_NO_INTERCEPT);
			return 0;
		}
		emit(ctx, o, VERDICT_REDIRECTED, REASON_DNS);
		*rewrite = s->dns_port;
		return 1;
	}
	if (!intercepted_port(s, o->port)) {
		emit(ctx, o, VERDICT_DIRECT, REASON_PORT_NOT_INTERCEPTED);
		return 1;
	}
	/* Never rewrite to an address that was not verified local, and never
	 * let an intercepted connection bypass the proxy. */
	if (!can_intercept) {
		emit(ctx, o, VERDICT_DENIED, REASON_NO_INTERCEPT);
		return 0;
	}
	cookie = bpf_get_socket_cookie(ctx);
	if (store_origin(cookie, o) < 0) {
		map_error(MAP_ERR_ORIGINS);
		emit(ctx, o, VERDICT_DENIED, REASON_NO_INTERCEPT);
		return 0;
	}
	/* No event: the proxy reads this origin when it accepts the
	 * connection and reports the redirect then (agent/conn_linux.go). */
	*rewrite = s->proxy_port;
	return 1;
}

/* steered4 reports whether ip:port is already the intercept address and
 * one of the agent's ports: steered by a descendant cgroup's attachment
 * (programs of nested cgroups run in turn), or a reply's source. */
static __always_inline int steered4(struct settings *s, __u32 ip, __u16 port)
{
	return (s->flags & SET_V4) && ip == s->intercept4 &&
	       (port == s->proxy_port || (s->dns_port && port == s->dns_port));
}

/* steered6 is steered4 for a native IPv6 address (4 words). */
static __always_inline int steered6(struct settings *s, const __u32 *w, __u16 port)
{
	__u32 iw[4];
	if (!(s->flags & SET_V6))
		return 0;
	if (port != s->proxy_port && !(s->dns_port && port == s->dns_port))
		return 0;
	__builtin_memcpy(iw, s->intercept6, 16);
	return iw[0] == w[0] && iw[1] == w[1] && iw[2] == w[2] && iw[3] == w[3];
}

/* decide4 handles an IPv4 destination, from connect4 or from a v4-mapped
 * connect6; see decide. */
static __always_inline int decide4(struct bpf_sock_addr *ctx, struct settings *s,
				   __u64 cg, __u32 ip, __u16 port, __u16 *rewrite)
{
	struct origin o = {};

	/* Already steered by a descendant cgroup's attachment: leave it,
	 * whatever the deny list says. */
	if (steered4(s, ip, port))
		return 1;

	mapped4(o.addr, ip);
	o.port = port;
	o.family = AF_INET;
	o.cgroup_id = cg;
	fill_identity(ctx, &o);

	return decide(ctx, s, &o, cidr4(ip), s->flags & SET_V4, rewrite);
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	__u16 rewrite = 0;
	__u64 cg;
	if (!s)
		return 1;
	cg = bpf_get_current_cgroup_id();
	if (unselected(s, cg))
		return 1;
	__u32 ip = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int ret = decide4(ctx, s, cg, ip, port, &rewrite);
	if (rewrite) {
		ctx->user_ip4 = s->intercept4;
		ctx->user_port = bpf_htons(rewrite);
	}
	return ret;
}

static __always_inline int is_mapped4(const __u32 *w)
{
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	__u16 rewrite = 0;
	__u32 w[4];
	__u64 cg;
	if (!s)
		return 1;
	cg = bpf_get_current_cgroup_id();
	if (unselected(s, cg))
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	if (is_mapped4(w)) {
		int ret = decide4(ctx, s, cg, w[3], port, &rewrite);
		if (rewrite) {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0xffff);
			ctx->user_ip6[3] = s->intercept4;
			ctx->user_port = bpf_htons(rewrite);
		}
		return ret;
	}

	if (steered6(s, w, port))
		return 1; /* already steered by a descendant's attachment */

	struct origin o = {};
	__builtin_memcpy(o.addr, w, 16);
	o.port = port;
	o.family = AF_INET6;
	o.cgroup_id = cg;
	fill_identity(ctx, &o);

	int ret = decide(ctx, s, &o, cidr6(o.addr), s->flags & SET_V6, &rewrite);
	if (!rewrite)
		return ret;
	__u32 iw[4];
	__builtin_memcpy(iw, s->intercept6, 16);
	ctx->user_ip6[0] = iw[0];
	ctx->user_ip6[1] = iw[1];
	ctx->user_ip6[2] = iw[2];
	ctx->user_ip6[3] = iw[3];
	ctx->user_port = bpf_htons(rewrite);
	return 1;
}

/* sockops_ip6 copies an IPv6 address field of bpf_sock_ops (local_ip6,
 * remote_ip6) into w, one 4-byte load per word as the verifier wants. */
static __always_inline void sockops_ip6(__u32 *w, const __u32 *field)
{
	w[0] = *(volatile const __u32 *)&field[0];
	w[1] = *(volatile const __u32 *)&field[1];
	w[2] = *(volatile const __u32 *)&field[2];
	w[3] = *(volatile const __u32 *)&field[3];
}

/* steered_sockops reports whether an established socket's peer is the
 * intercept address and one of the agent's ports: the connect hooks
 * redirected it, so it has an origin; no other socket is looked up.
 * remote_port holds the port in network order in its upper half, so
 * bpf_ntohl gives it in host order. */
static __always_inline int steered_sockops(struct bpf_sock_ops *skops)
{
	struct settings *s = get_settings();
	__u16 port = bpf_ntohl(skops->remote_port);
	__u32 w[4];
	if (!s)
		return 0;
	if (skops->family == AF_INET)
		return steered4(s, skops->remote_ip4, port);
	if (skops->family != AF_INET6)
		return 0;
	sockops_ip6(w, skops->remote_ip6);
	return is_mapped4(w) ? steered4(s, w[3], port) : steered6(s, w, port);
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;
	struct origin *o;
	struct origin_slot *sl;
	struct peer_key k = {};

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		if (!steered_sockops(skops))
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		o = find_origin(cookie, &sl);
		if (!o)
			return 1;
		if (skops->family == AF_INET) {
			mapped4(k.addr, skops->local_ip4);
		} else if (skops->family == AF_INET6) {
			__u32 w[4];
			sockops_ip6(w, skops->local_ip6);
			__builtin_memcpy(k.addr, w, 16);
		} else {
			return 1;
		}
		k.port = (__u16)skops->local_port;
		if (bpf_map_update_elem(&sluice_peers, &k, o, BPF_ANY) < 0)
			map_error(MAP_ERR_PEERS);
		if (sl) {
			/* A claim older than ORIGIN_CLAIM_TICKS may be taken
			 * back while it is copied, and the copy then mix two
			 * origins: the taker swaps the cookie before it writes
			 * its origin, so a cookie still ours after the copy
			 * means a whole one. Else the proxy finds no origin and
			 * refuses the connection. */
			if (sl->cookie != cookie) {
				bpf_map_delete_elem(&sluice_peers, &k);
				return 1;
			}
			sl->claimed = 0; /* established: held until the close */
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != TCP_CLOSE_)
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		sl = find_slot(cookie);
		if (sl)
			sl->cookie = 0;
		else
			bpf_map_delete_elem(&sluice_origins, &cookie);
		return 1;
	}
	return 1;
}

/* write_origin4 and write_origin6 put an origin into the address a
 * getpeername or recvmsg returns to the workload (an IPv4 origin is
 * ::ffff:a.b.c.d in o->addr). */
static __always_inline void write_origin4(struct bpf_sock_addr *ctx, const struct origin *o)
{
	__u32 ip;
	__builtin_memcpy(&ip, o->addr + 12, 4);
	ctx->user_ip4 = ip;
	ctx->user_port = bpf_htons(o->port);
}

static __always_inline void write_origin6(struct bpf_sock_addr *ctx, const struct origin *o)
{
	__u32 w[4];
	__builtin_memcpy(w, o->addr, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = bpf_htons(o->port);
}

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	struct origin *o = find_origin(bpf_get_socket_cookie(ctx), 0);
	if (!o || o->family != AF_INET)
		return 1;
	write_origin4(ctx, o);
	return 1;
}

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
	struct origin *o = find_origin(bpf_get_socket_cookie(ctx), 0);
	if (!o)
		return 1;
	write_origin6(ctx, o);
	return 1;
}

#include "mark_guard.h"
#include "dns.h"
#include "egress.h"
