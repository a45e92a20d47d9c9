/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The packet deny: cgroup_skb/egress holds every outgoing IPv4 and IPv6
 * packet of a selected cgroup to the deny CIDR tries the connect hooks
 * use, so a raw socket (SOCK_RAW, IP_HDRINCL) or an unconnected UDP
 * sendto cannot reach a denied destination either. A dropped packet fails
 * the send with EPERM, is counted per CPU in sluice_egress_drops
 * (Agent.EgressDrops) and, at most once per EGRESS_EVENT_NS per CPU, is
 * an event (REASON_DENY_CIDR_PACKET).
 *
 * It also names the sender of each UDP datagram to the agent's DNS server
 * by its source {ip, port} and DNS message id (dns_peer in dns.h), once
 * the packet has its source address.
 *
 * Packets that do not pass through the IP output path (AF_PACKET) are not
 * seen here.
 *
 * Included by sluice.c after the shared maps and helpers.
 */
#ifndef SLUICE_EGRESS_H
#define SLUICE_EGRESS_H

/* At most one packet event per CPU per 100ms: a flood of raw packets
 * must not flood the ring buffer the connect events share. */
#define EGRESS_EVENT_NS 100000000ULL

/* Packets dropped because their destination is denied, one counter per
 * CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sluice_egress_drops SEC(".maps");

/* When this CPU last emitted a packet event (bpf_ktime_get_ns). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sluice_egress_last SEC(".maps");

/* l4_dport reads the destination port of a TCP or UDP header at off, 0
 * when there is none. */
static __always_inline __u16 l4_dport(struct __sk_buff *skb, __u32 off, __u8 proto)
{
	__u16 port;
	if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
		return 0;
	if (bpf_skb_load_bytes(skb, off + 2, &port, sizeof(port)) < 0)
		return 0;
	return bpf_ntohs(port);
}

/* l4_ports reads the source and destination ports (host order) of the
 * TCP or UDP header at off; 0 when there is none. */
static __always_inline void l4_ports(struct __sk_buff *skb, __u32 off, __u16 *sport, __u16 *dport)
{
	__u16 p[2];
	if (bpf_skb_load_bytes(skb, off, p, sizeof(p)) < 0)
		return;
	*sport = bpf_ntohs(p[0]);
	*dport = bpf_ntohs(p[1]);
}

/* egress_event counts the drop and, rate-limited, records it. The event
 * names the socket's cgroup and uid, not a process: the packet may leave
 * from softirq context. */
static __always_inline void egress_drop(struct __sk_buff *skb, struct origin *o, __u8 proto)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&sluice_egress_drops, &zero);
	if (n)
		*n += 1;
	__u64 *last = bpf_map_lookup_elem(&sluice_egress_last, &zero);
	__u64 now = bpf_ktime_get_ns();
	if (!last || (*last && now - *last < EGRESS_EVENT_NS))
		return;
	*last = now;
	o->cgroup_id = bpf_skb_cgroup_id(skb);
	o->uid = bpf_get_socket_uid(skb);
	emit_event(o, VERDICT_DENIED, REASON_DENY_CIDR_PACKET, proto);
}

SEC("cgroup_skb/egress")
int sluice_egress(struct __sk_buff *skb)
{
	struct settings *s = get_settings();
	struct origin o = {};
	__u8 proto;

	if (!s)
		return 1;
	if (s->flags & SET_USE_SELECTION) {
		__u64 cg = bpf_skb_cgroup_id(skb);
		if (!bpf_map_lookup_elem(&sluice_selected, &cg))
			return 1;
	}
	if (skb->protocol == bpf_htons(ETH_P_IP_)) {
		__u8 h[20];
		__u32 daddr;
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) < 0)
			return 1; /* not a whole IPv4 header: not a packet to route */
		__builtin_memcpy(&daddr, h + 16, 4);
		proto = h[9];
		if (proto == IPPROTO_UDP_ && s->dns_port && (s->flags & SET_V4) &&
		    daddr == s->intercept4 && (((__u16)h[6] << 8 | h[7]) & 0x1fff) == 0) {
			__u16 sport = 0, dport = 0;
			__u32 udp = (h[0] & 0xf) * 4;
			l4_ports(skb, udp, &sport, &dport);
			if (dport == s->dns_port) {
				__u32 saddr;
				__builtin_memcpy(&saddr, h + 12, 4);
				mapped4(o.addr, saddr);
				dns_peer(skb, o.addr, sport, udp);
				return 1;
			}
		}
		if (cidr4(daddr) != CIDR_DENY)
			return 1;
		/* Only the first fragment has the ports. */
		if ((((__u16)h[6] << 8 | h[7]) & 0x1fff) == 0)
			o.port = l4_dport(skb, (h[0] & 0xf) * 4, proto);
		/* A redirected connection to an intercept address inside a
		 * denied range (see decide4's "already steered"). */
		if ((s->flags & SET_V4) && daddr == s->intercept4 &&
		    proto == IPPROTO_TCP_ && o.port == s->proxy_port)
			return 1;
		mapped4(o.addr, daddr);
		o.family = AF_INET;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6_)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) < 0)
			return 1;
		proto = h[6]; /* the next header; ports only without extension headers */
		if (proto == IPPROTO_UDP_ && s->dns_port) {
			__u16 sport = 0, dport = 0;
			__u32 w[4];
			__builtin_memcpy(w, h + 24, 16);
			l4_ports(skb, 40, &sport, &dport);
			if (dport == s->dns_port &&
			    (is_mapped4(w) ? steered4(s, w[3], dport) : steered6(s, w, dport))) {
				dns_peer(skb, h + 8, sport, 40);
				return 1;
			}
		}
		if (cidr6(h + 24) != CIDR_DENY)
			return 1;
		o.port = l4_dport(skb, 40, proto);
		if ((s->flags & SET_V6) && proto == IPPROTO_TCP_ && o.port == s->proxy_port) {
			__u32 iw[4], w[4];
			__builtin_memcpy(iw, s->intercept6, 16);
			__builtin_memcpy(w, h + 24, 16);
			if (iw[0] == w[0] && iw[1] == w[1] && iw[2] == w[2] && iw[3] == w[3])
				return 1;
		}
		__builtin_memcpy(o.addr, h + 24, 16);
		o.family = AF_INET6;
	} else {
		return 1;
	}
	egress_drop(skb, &o, proto);
	return 0;
}

#endif /* SLUICE_EGRESS_H */
