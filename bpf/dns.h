/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DNS and QUIC on unconnected UDP sockets: cgroup/sendmsg4/6 send a
 * selected workload's datagram to port 53, whatever the resolver, to the
 * agent's DNS server (intercept address, settings.dns_port) and record
 * the resolver it asked in sluice_origins by socket cookie;
 * cgroup/recvmsg4/6 give a reply from the DNS server the source the
 * workload asked, from that record (as Cilium restores its service
 * addresses). A datagram to port 443 (QUIC) is refused with EPERM when
 * SET_REFUSE_QUIC is set, so clients fall back to TCP, where the proxy
 * sees them. Connected UDP and TCP to port 53 are steered by the connect
 * hooks (decide in sluice.c).
 *
 * The DNS server names the sender of a UDP query by its {ip, port} and
 * the query's DNS message id; the source address of an unconnected
 * socket is chosen by routing after sendmsg runs, so egress (egress.h)
 * copies the origin to sluice_dns_peers once the packet has its source
 * (dns_peer), for every datagram (a retransmit writes it again). The DNS
 * server takes (reads and deletes) the entry of each query it answers,
 * so an entry does not outlive its query: a process outside every
 * selected cgroup that later sends from the same {ip, port} finds none.
 * Connected UDP sockets to port 53 (steered by connect4/6) take the same
 * path: their origin is stored by cookie too, and egress names each
 * datagram the same way.
 *
 * The agent's own sockets (its upstream DNS forwarding) are never
 * steered: its cgroup is never selected, and agent_socket skips them.
 * The deny lists are left to egress (which drops the packet, EPERM) and
 * bypassCIDRs are honoured: such a resolver is reached directly.
 *
 * Included by sluice.c after the shared maps and helpers.
 */
#ifndef SLUICE_DNS_H
#define SLUICE_DNS_H

/* The origins of DNS queries by the workload side {ip, port} the DNS
 * server sees as the sender and the message id: written by egress for
 * every datagram to the DNS server, taken by the agent for each query it
 * answers (queries in flight on one socket have different ids; two
 * copies of one query in flight share an entry, and the second one
 * answered may find none). The LRU bounds what is never taken (a
 * datagram dropped before the DNS server reads it). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dns_key);
	__type(value, struct dns_origin);
} sluice_dns_peers SEC(".maps");

/* sendmsg_decide is what sendmsg4/6 do with a datagram to port (host
 * order) whose destination the CIDR tries call cidr: 0 refuses it
 * (EPERM), 1 lets it go, and *rewrite is set (after the origin was stored
 * by cookie) when it must go to the DNS server. No event for DNS: the DNS
 * server records every query. */
static __always_inline int sendmsg_decide(struct bpf_sock_addr *ctx, struct settings *s,
					  struct origin *o, __u8 cidr, int can_intercept,
					  int *rewrite)
{
	__u64 cookie;

	if (cidr == CIDR_DENY)
		return 1; /* egress drops it and counts it */
	if (o->port != DNS_PORT_ && o->port != QUIC_PORT_)
		return 1;
	if (agent_socket(ctx, s, o->cgroup_id))
		return 1;
	if (cidr == CIDR_BYPASS)
		return 1;
	fill_identity(ctx, o);
	if (o->port == QUIC_PORT_) {
		if (!(s->flags & SET_REFUSE_QUIC))
			return 1;
		emit(ctx, o, VERDICT_DENIED, REASON_QUIC);
		return 0;
	}
	if (!s->dns_port)
		return 1;
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
	*rewrite = 1;
	return 1;
}

SEC("cgroup/sendmsg4")
int sluice_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	struct origin o = {};
	int rewrite = 0;

	if (!s)
		return 1;
	o.cgroup_id = bpf_get_current_cgroup_id();
	if (unselected(s, o.cgroup_id))
		return 1;
	__u32 ip = ctx->user_ip4;
	o.port = bpf_ntohs((__u16)ctx->user_port);
	if (steered4(s, ip, o.port))
		return 1;
	mapped4(o.addr, ip);
	o.family = AF_INET;
	int ret = sendmsg_decide(ctx, s, &o, cidr4(ip), s->flags & SET_V4, &rewrite);
	if (rewrite) {
		ctx->user_ip4 = s->intercept4;
		ctx->user_port = bpf_htons(s->dns_port);
	}
	return ret;
}

SEC("cgroup/sendmsg6")
int sluice_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	struct origin o = {};
	int rewrite = 0, ret;
	__u32 w[4];

	if (!s)
		return 1;
	o.cgroup_id = bpf_get_current_cgroup_id();
	if (unselected(s, o.cgroup_id))
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	o.port = bpf_ntohs((__u16)ctx->user_port);
	__builtin_memcpy(o.addr, w, 16);

	if (is_mapped4(w)) {
		if (steered4(s, w[3], o.port))
			return 1;
		o.family = AF_INET;
		ret = sendmsg_decide(ctx, s, &o, cidr4(w[3]), s->flags & SET_V4, &rewrite);
		if (rewrite) {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0xffff);
			ctx->user_ip6[3] = s->intercept4;
			ctx->user_port = bpf_htons(s->dns_port);
		}
		return ret;
	}
	if (steered6(s, w, o.port))
		return 1;
	o.family = AF_INET6;
	ret = sendmsg_decide(ctx, s, &o, cidr6(o.addr), s->flags & SET_V6, &rewrite);
	if (rewrite) {
		__u32 iw[4];
		__builtin_memcpy(iw, s->intercept6, 16);
		ctx->user_ip6[0] = iw[0];
		ctx->user_ip6[1] = iw[1];
		ctx->user_ip6[2] = iw[2];
		ctx->user_ip6[3] = iw[3];
		ctx->user_port = bpf_htons(s->dns_port);
	}
	return ret;
}

/* dns_reply_origin returns the resolver a socket asked when a datagram
 * it receives comes from the DNS server; NULL otherwise. */
static __always_inline struct origin *dns_reply_origin(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&sluice_origins, &cookie);
	if (!o || o->port != DNS_PORT_)
		return 0;
	return o;
}

SEC("cgroup/recvmsg4")
int sluice_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	if (!s || !s->dns_port)
		return 1;
	if (!steered4(s, ctx->user_ip4, bpf_ntohs((__u16)ctx->user_port)))
		return 1;
	struct origin *o = dns_reply_origin(ctx);
	if (!o || o->family != AF_INET)
		return 1;
	write_origin4(ctx, o);
	return 1;
}

SEC("cgroup/recvmsg6")
int sluice_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct settings *s = get_settings();
	__u32 w[4];
	if (!s || !s->dns_port)
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (is_mapped4(w) ? !steered4(s, w[3], port) : !steered6(s, w, port))
		return 1;
	struct origin *o = dns_reply_origin(ctx);
	if (!o)
		return 1;
	write_origin6(ctx, o); /* IPv4 is ::ffff:a.b.c.d already */
	return 1;
}

/* DNS_HDR_LEN is the size of a DNS message header; a shorter datagram is
 * not a query, and names nobody. */
#define DNS_HDR_LEN 12

/* DNS_FLAG_QR is the QR bit in the third byte of a DNS message: set in a
 * response. */
#define DNS_FLAG_QR 0x80

/* dns_peer copies the origin of a query to the DNS server, stored by
 * sendmsg or connect under the socket's cookie, to sluice_dns_peers under
 * the datagram's source and DNS message id, with the time: src is 16
 * bytes (IPv4 as ::ffff:a.b.c.d), sport host order, udp the offset of the
 * UDP header. A response (QR set) names nobody: the DNS server ignores
 * it, so nothing would take its entry. */
static __always_inline void dns_peer(struct __sk_buff *skb, const __u8 *src, __u16 sport, __u32 udp)
{
	struct dns_key k = {};
	struct dns_origin v = {};
	__u8 h[3];
	if (skb->len < udp + 8 + DNS_HDR_LEN)
		return;
	if (bpf_skb_load_bytes(skb, udp + 8, h, sizeof(h)) < 0)
		return;
	if (h[2] & DNS_FLAG_QR)
		return;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct origin *o = bpf_map_lookup_elem(&sluice_origins, &cookie);
	if (!o)
		return;
	__builtin_memcpy(k.addr, src, 16);
	k.port = sport;
	k.id = (__u16)h[0] << 8 | h[1];
	v.o = *o;
	v.at = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&sluice_dns_peers, &k, &v, BPF_ANY) < 0)
		map_error(MAP_ERR_DNS_PEERS);
}

#endif /* SLUICE_DNS_H */
