/* conntrack.h: per-endpoint connection tracking. Both directions of a flow
 * map to one entry per endpoint (local/remote orientation comes from the
 * hook, not from the packet), so replies and established packets cost one
 * lookup and never reach the policy table. Policy changes leave existing
 * entries alone: established flows are not cut. */
#ifndef PALISADE_CONNTRACK_H
#define PALISADE_CONNTRACK_H

#include "common.h"

struct ct_key {
	__u32 ep_id;
	__be32 local_ip;
	__be32 remote_ip;
	__be16 local_port;  /* ICMP echo: the echo id on both sides */
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
static __always_inline int ct_lookup_refresh(const struct ct_key *key, __u8 tcp_closing, __u8 tcp_flags,
					     struct ct_state *st)
{
	struct ct_entry *e = bpf_map_lookup_elem(&palisade_ct_v1, key);
	__u64 now;

	if (!e)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - e->last_seen_ns > ct_lifetime(e, key->proto))
		return 0;
	if ((e->flags & CT_F_CLOSING) && key->proto == IPPROTO_TCP && (tcp_flags & 0x12) == 0x02)
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

static __always_inline void ct_create(const struct ct_key *key, __u8 dir, __u32 cookie,
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

	bpf_map_update_elem(&palisade_ct_v1, key, &e, BPF_ANY);
}

/* Points an existing flow (or a new entry) at a proxy port: every later
 * packet matching it is handed to the proxy where it enters the node. */
static __always_inline void ct_set_proxy(const struct ct_key *key, __u8 dir, __u8 tcp_closing, __u16 proxy_port)
{
	struct ct_entry *e = bpf_map_lookup_elem(&palisade_ct_v1, key);

	if (e) {
		e->proxy_port = proxy_port;
		return;
	}
	ct_create(key, dir, 0, tcp_closing, proxy_port, 0);
}

#endif
