/* flow.h: flow events to userspace through a ring buffer, rate-limited per
 * flow so a flood cannot starve userspace: a flow's drops are reported at
 * most once a second, with the count suppressed in between. */
#ifndef PALISADE_FLOW_H
#define PALISADE_FLOW_H

#include "common.h"
#include "parse.h"
#include "drop_reasons.h"

#define FLOW_VERDICT_FORWARDED 0
#define FLOW_VERDICT_DROPPED 1
#define FLOW_VERDICT_AUDIT 2
#define FLOW_VERDICT_REDIRECTED 3 /* admitted and handed to a proxy (DNS) */

struct flow_event {
	__u64 ts_ns;         /* bpf_ktime_get_ns() */
	__u32 ep_id;         /* endpoint the verdict was for */
	__u32 peer_identity; /* identity of the remote side (0 if not looked up) */
	__be32 saddr[4];     /* IPv4: [0], the rest 0 */
	__be32 daddr[4];
	__be16 sport;        /* ICMP: type in dport */
	__be16 dport;
	__u8 proto;
	__u8 direction;      /* DIR_* */
	__u8 verdict;        /* FLOW_VERDICT_* */
	__u8 tcp_flags;      /* SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04 */
	__u32 reason;        /* REASON_FORWARDED or DROP_* code */
	__u32 cookie;        /* rule that decided, 0 if none */
	__u32 suppressed;    /* events of this flow not sent since the last one */
	__u32 ifindex;
	__u32 len;           /* packet length */
	__u8 family;         /* ADDR_FAMILY_* */
	__u8 pad[3];
};

/* Anchors struct flow_event in the object's BTF (it is only ever reserved
 * in the ring, never a map key or value), so the Rust type is generated. */
const volatile struct flow_event flow_event_abi = {};

/* Emission on/off, set as rodata before load (the verifier prunes it off). */
const volatile __u8 flows_enabled = 1;

/* palisade_flows_v2: ring buffer, read by palisade-ctrl. v2: 16-byte
 * addresses and the family. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} palisade_flows_v2 SEC(".maps");

struct flow_rl {
	__u64 last_ns;
	__u32 suppressed;
	__u32 pad;
};

/* A flow as the rate limit knows it: one endpoint, one direction of one
 * 5-tuple, either family. */
struct flow_rl_key {
	__u32 ep_id;
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 direction;
	__u8 pad;
};

/* palisade_flow_rl_v2: per-flow rate limit state for reported drops. v2:
 * keyed by flow_rl_key (both families). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_rl_key);
	__type(value, struct flow_rl);
} palisade_flow_rl_v2 SEC(".maps");

/* Counters of the flow path itself: [0] events lost (ring full), [1]
 * events suppressed by the rate limit. Per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} palisade_flow_stats_v1 SEC(".maps");

static __always_inline void flow_stat(__u32 idx)
{
	PERCPU_COUNT(palisade_flow_stats_v1, idx);
}

/* Returns the number suppressed since the last report, or -1 to stay quiet. */
static __always_inline int flow_rate_limit(__u32 ep_id, const struct tuple *t, __u8 dir)
{
	__u64 now = bpf_ktime_get_ns();
	struct flow_rl_key k = {
		.ep_id = ep_id,
		.sport = t->sport,
		.dport = t->dport,
		.proto = t->proto,
		.family = t->family,
		.direction = dir,
	};
	struct flow_rl *rl;
	struct flow_rl fresh = { .last_ns = now };
	__u32 n;

	__builtin_memcpy(k.saddr, t->saddr, 16);
	__builtin_memcpy(k.daddr, t->daddr, 16);
	rl = bpf_map_lookup_elem(&palisade_flow_rl_v2, &k);
	if (!rl) {
		bpf_map_update_elem(&palisade_flow_rl_v2, &k, &fresh, BPF_ANY);
		return 0;
	}
	if (now - rl->last_ns < 1000000000ULL) {
		rl->suppressed += 1;
		flow_stat(1);
		return -1;
	}
	n = rl->suppressed;
	rl->suppressed = 0;
	rl->last_ns = now;
	return n;
}

/* Reports the verdict on packet `t` of endpoint `ep_id`. */
static __always_inline void flow_emit(const struct __sk_buff *skb, __u32 ep_id, const struct tuple *t, __u8 dir,
				      __u8 verdict, __u32 reason, __u32 cookie, __u32 peer_identity)
{
	struct flow_event *e;
	__u32 suppressed = 0;

	if (!flows_enabled)
		return;
	if (verdict == FLOW_VERDICT_DROPPED || verdict == FLOW_VERDICT_AUDIT) {
		int n = flow_rate_limit(ep_id, t, dir);

		if (n < 0)
			return;
		suppressed = n;
	}
	e = bpf_ringbuf_reserve(&palisade_flows_v2, sizeof(*e), 0);
	if (!e) {
		flow_stat(0);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ep_id = ep_id;
	e->peer_identity = peer_identity;
	__builtin_memcpy(e->saddr, t->saddr, 16);
	__builtin_memcpy(e->daddr, t->daddr, 16);
	e->sport = t->sport;
	e->dport = t->dport;
	e->proto = t->proto;
	e->direction = dir;
	e->verdict = verdict;
	e->tcp_flags = t->tcp_flags;
	e->reason = reason;
	e->cookie = cookie;
	e->suppressed = suppressed;
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->family = t->family;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	bpf_ringbuf_submit(e, 0);
}

#endif
