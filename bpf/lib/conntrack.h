/* conntrack.h: per-endpoint connection tracking. Both directions of a flow
 * map to one entry per endpoint (local/remote orientation comes from the
 * hook, not from the packet), so replies and established packets cost one
 * lookup and never reach the policy table. Policy changes leave existing
 * entries alone: established flows are not cut. */
#ifndef PALISADE_CONNTRACK_H
#define PALISADE_CONNTRACK_H

#include "common.h"
#include "parse.h"

/* IPv4 and IPv6 flows are kept in two maps, as Cilium does: the IPv4 key
 * stays 20 bytes (what it hashes and compares per packet does not grow for
 * the family most traffic still uses), and the IPv4 map, pinned since v1,
 * survives the upgrade that brought IPv6 with its established flows. */
struct ct_key {
	__u32 ep_id;
	__be32 local_ip;
	__be32 remote_ip;
	__be16 local_port;  /* ICMP echo: the echo id on both sides */
	__be16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

struct ct6_key {
	__u32 ep_id;
	__be32 local_ip[4];
	__be32 remote_ip[4];
	__be16 local_port;  /* ICMPv6 echo: the echo id on both sides */
	__be16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

#define CT_F_CLOSING (1U << 0) /* TCP FIN or RST seen: short lifetime */
#define CT_F_REPLY_TO_PROXY (1U << 1) /* opened by a proxy's upstream connection
				       * (MARK_FROM_PROXY) or redirected to a
				       * proxy at ingress: packets the endpoint
				       * (or, on the uplink, the far side) sends
				       * back go to that proxy's socket */

struct ct_entry {
	__u64 created_ns;   /* bpf_ktime_get_ns() at creation */
	__u64 last_seen_ns; /* refreshed at most once a second */
	__u32 cookie;       /* rule that admitted the flow */
	__u8 origin_dir;    /* DIR_* of the packet that opened it */
	__u8 flags;         /* CT_F_* */
	__u16 proxy_port;   /* the flow is redirected to this local proxy port (0 = none) */
};

/* Lifetimes (ns), set as rodata before load. */
const volatile __u64 ct_lifetime_tcp_ns = 21600ULL * 1000000000ULL;
const volatile __u64 ct_lifetime_tcp_closing_ns = 10ULL * 1000000000ULL;
const volatile __u64 ct_lifetime_other_ns = 60ULL * 1000000000ULL;

/* palisade_ct_v1: LRU so a flood of new flows evicts the oldest instead of
 * failing. Written by the datapath only; palisade-ctrl reads it for status. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} palisade_ct_v1 SEC(".maps");

/* palisade_ct6_v1: the IPv6 flows, as palisade_ct_v1 (same size setting). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct6_key);
	__type(value, struct ct_entry);
} palisade_ct6_v1 SEC(".maps");

/* One flow's key, a struct ct_key (IPv4) or struct ct6_key (IPv6) on the
 * caller's stack (ct_key_fill).
 *
 * Each map has call sites of its own (ct_map_lookup, ct_map_update): the
 * verifier inlines a hash lookup, or calls the map's own function
 * directly, only at a call site that only ever sees one map. A map
 * pointer chosen at run time would make every lookup of both families an
 * indirect call through the generic helper. The empty asm ends the IPv6
 * branch differently from the IPv4 one, so the compiler does not merge
 * the two calls into one with a chosen map pointer. */
struct ct_ref {
	void *key;
	__u8 proto;
	__u8 v6;
};

static __always_inline struct ct_entry *ct_map_lookup(struct ct_ref ref)
{
	struct ct_entry *e;

	if (ref.v6) {
		e = bpf_map_lookup_elem(&palisade_ct6_v1, ref.key);
		asm volatile("" ::: "memory");
		return e;
	}
	return bpf_map_lookup_elem(&palisade_ct_v1, ref.key);
}

static __always_inline void ct_map_update(struct ct_ref ref, const struct ct_entry *e)
{
	if (ref.v6) {
		bpf_map_update_elem(&palisade_ct6_v1, ref.key, e, BPF_ANY);
		asm volatile("" ::: "memory");
		return;
	}
	bpf_map_update_elem(&palisade_ct_v1, ref.key, e, BPF_ANY);
}

/* Fills the key of the flow `t` belongs to, for endpoint `ep_id` seen in
 * direction `dir` (local = the endpoint's side), in k4 or k6 by family. */
static __always_inline struct ct_ref ct_key_fill(const struct tuple *t, __u32 ep_id, __u8 dir, struct ct_key *k4,
						  struct ct6_key *k6)
{
	const __be32 *local = dir == DIR_EGRESS ? t->saddr : t->daddr;
	const __be32 *remote = dir == DIR_EGRESS ? t->daddr : t->saddr;
	__be16 lport = dir == DIR_EGRESS ? t->ct_sport : t->ct_dport;
	__be16 rport = dir == DIR_EGRESS ? t->ct_dport : t->ct_sport;
	struct ct_ref r = { .proto = t->proto };

	if (t->family == ADDR_FAMILY_IPV6) {
		k6->ep_id = ep_id;
		__builtin_memcpy(k6->local_ip, local, 16);
		__builtin_memcpy(k6->remote_ip, remote, 16);
		k6->local_port = lport;
		k6->remote_port = rport;
		k6->proto = t->proto;
		k6->pad[0] = k6->pad[1] = k6->pad[2] = 0;
		r.v6 = 1;
		r.key = k6;
	} else {
		k4->ep_id = ep_id;
		k4->local_ip = local[0];
		k4->remote_ip = remote[0];
		k4->local_port = lport;
		k4->remote_port = rport;
		k4->proto = t->proto;
		k4->pad[0] = k4->pad[1] = k4->pad[2] = 0;
		r.key = k4;
	}
	return r;
}

static __always_inline __u64 ct_lifetime(const struct ct_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return ct_lifetime_other_ns;
	return (e->flags & CT_F_CLOSING) ? ct_lifetime_tcp_closing_ns : ct_lifetime_tcp_ns;
}

/* What a live entry says about the packet's flow. */
struct ct_state {
	__u16 proxy_port; /* redirected to this local proxy port (0 = none) */
	__u8 origin_dir;
	__u8 flags;
};

/* Returns 1 when the packet belongs to a live tracked flow, with what the
 * entry says in *st. A SYN (without ACK) on an entry that has seen FIN or
 * RST opens a new connection on an old tuple (a client reusing its port):
 * it is a new flow, judged by the current policy and given a fresh entry,
 * never admitted on the old connection's verdict. */
static __always_inline int ct_lookup_refresh(struct ct_ref ref, __u8 tcp_closing, __u8 tcp_flags,
					     struct ct_state *st)
{
	struct ct_entry *e = ct_map_lookup(ref);
	__u64 now;

	if (!e)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - e->last_seen_ns > ct_lifetime(e, ref.proto))
		return 0;
	if ((e->flags & CT_F_CLOSING) && ref.proto == IPPROTO_TCP && (tcp_flags & 0x12) == 0x02)
		return 0;
	if (tcp_closing && !(e->flags & CT_F_CLOSING))
		e->flags |= CT_F_CLOSING;
	if (now - e->last_seen_ns > 1000000000ULL)
		e->last_seen_ns = now;
	st->proxy_port = e->proxy_port;
	st->origin_dir = e->origin_dir;
	st->flags = e->flags;
	return 1;
}

static __always_inline void ct_create(struct ct_ref ref, __u8 dir, __u32 cookie,
				      __u8 tcp_closing, __u16 proxy_port, __u8 flags)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry e = {
		.created_ns = now,
		.last_seen_ns = now,
		.cookie = cookie,
		.origin_dir = dir,
		.flags = (tcp_closing ? CT_F_CLOSING : 0) | flags,
		.proxy_port = proxy_port,
	};

	ct_map_update(ref, &e);
}

/* Points an existing flow (or a new entry) at a proxy port: every later
 * packet matching it is handed to the proxy where it enters the node. */
static __always_inline void ct_set_proxy(struct ct_ref ref, __u8 dir, __u8 tcp_closing, __u16 proxy_port)
{
	struct ct_entry *e = ct_map_lookup(ref);

	if (e) {
		e->proxy_port = proxy_port;
		return;
	}
	ct_create(ref, dir, 0, tcp_closing, proxy_port, 0);
}

#endif

#ifndef PALISADE_CONNTRACK_RELATED
#define PALISADE_CONNTRACK_RELATED
/* Whether an ICMP or ICMPv6 error that endpoint `ep_id` sends or receives
 * in direction `dir` is about one of its live flows: the packet it quotes
 * (the inner header and the first 8 bytes of its L4 header) went the other
 * way, so its tuple seen from the other direction is the flow's conntrack
 * key. Such an error (Packet Too Big above all: path MTU discovery) is
 * part of the flow, as Linux conntrack calls it RELATED, and passes
 * without a rule for its ICMP type. A lookup only: the flow's timer is not
 * refreshed by errors. An error whose quote is cut short or names no live
 * flow is an ordinary ICMP packet, judged by policy. */
static __always_inline int icmp_error_related(struct __sk_buff *skb, const struct tuple *t, __u32 ep_id, __u8 dir)
{
	struct tuple in = {};
	struct ct_key k4;
	struct ct6_key k6;
	struct ct_entry *e;
	__u32 off = (__u32)t->l4off + 8;
	__u8 l4[8];

	if (off > 0xffff)
		return 0;
	if (t->family == ADDR_FAMILY_IPV6) {
		struct ip6_hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return 0;
		__builtin_memcpy(in.saddr, ip6.saddr, 16);
		__builtin_memcpy(in.daddr, ip6.daddr, 16);
		in.proto = ip6.nexthdr;
		off += IP6_HLEN;
	} else {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
			return 0;
		in.saddr[0] = ip.saddr;
		in.daddr[0] = ip.daddr;
		in.proto = ip.protocol;
		off += (__u32)ip.ihl * 4;
	}
	in.family = t->family;
	if (bpf_skb_load_bytes(skb, off, l4, sizeof(l4)) < 0)
		return 0;
	switch (in.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		__builtin_memcpy(&in.ct_sport, &l4[0], 2);
		__builtin_memcpy(&in.ct_dport, &l4[2], 2);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (l4[0] != ICMP_ECHO && l4[0] != ICMP_ECHOREPLY && l4[0] != ICMPV6_ECHO_REQUEST &&
		    l4[0] != ICMPV6_ECHO_REPLY)
			return 0;
		__builtin_memcpy(&in.ct_sport, &l4[4], 2);
		in.ct_dport = in.ct_sport;
		break;
	default:
		return 0;
	}
	e = ct_map_lookup(ct_key_fill(&in, ep_id, dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS, &k4, &k6));
	return e && bpf_ktime_get_ns() - e->last_seen_ns <= ct_lifetime(e, in.proto);
}
#endif
