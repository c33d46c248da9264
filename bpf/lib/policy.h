/* policy.h: the per-endpoint policy table and the verdict for a new flow. */
#ifndef PALISADE_POLICY_H
#define PALISADE_POLICY_H

#include "common.h"
#include "drop_reasons.h"

/* Policy sets. Entries are not stored per endpoint but per *policy set*:
 * the exact set of entries compiled for an endpoint. Endpoints whose
 * policies compile to the same entries (every pod of a deployment, or every
 * pod one CNP selects) point at one set, so one policy over 1000 such pods
 * is written once, not 1000 times, and a change moves each endpoint to a
 * new set with one endpoint-table write. A shared set is never changed:
 * palisade-ctrl writes the new set, switches the endpoints, then deletes
 * the old one, and set ids are never reused. A set with a single user is
 * changed in place (one rule added to 10 000 is one write), new entries
 * before removals, and its generation is bumped (see the verdict cache).
 *
 * Policy key, looked up in an LPM trie. The bytes are ordered from the most
 * to the least significant for matching: set, peer identity, direction,
 * protocol, destination port. The prefix always covers set, identity and
 * direction (72 bits); what it leaves out is wildcarded:
 *
 *   prefixlen  72  any protocol, any port      (L3-only rule, protocol ANY)
 *   prefixlen  80  one protocol, any port      (toPorts with port 0/absent)
 *   prefixlen  96  one protocol, one port
 *   prefixlen 81..95  one protocol, a port block (ranges expand to blocks)
 *
 * The peer identity cannot be wildcarded by prefix (it sits before the
 * port), so "any peer" rules are stored under identity 0 and a new flow does
 * exactly two lookups: one with the peer's identity, one with 0. An explicit
 * deny found by either lookup wins over any allow; otherwise either allow
 * admits the flow. The trie makes each lookup cost a function of the key
 * length, not of the number of rules. dport is big-endian so that port
 * prefixes are numeric ranges. For ICMP the "port" is the ICMP type. */
struct policy_key {
	__u32 prefixlen;
	__u32 set_id;
	__u32 identity;
	__u8 direction;
	__u8 proto;
	__be16 dport;
};

#define POLICY_F_DENY (1U << 0)
/* An allow that also holds for pod addresses inside a CIDR identity: a
 * Kubernetes NetworkPolicy ipBlock under --k8s-ipblock-selects-pods (a pod
 * is otherwise only ever its own identity, as in Cilium). */
#define POLICY_F_PODS (1U << 1)

struct policy_entry {
	__u32 cookie;     /* which rule installed it: (policy index << 16 | rule) */
	__u16 proxy_port; /* egress: redirect to this local proxy port (proxy.h), 0 = none */
	__u8 flags;       /* POLICY_F_* */
	__u8 pad;
};

/* palisade_policy_v2: {set, identity, direction, proto, port} -> entry.
 * v2: keyed by policy set, not by endpoint. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
} palisade_policy_v2 SEC(".maps");

/* What a set says about one flow class, before enforcement is applied: an
 * allow, a deny, or no entry. */
#define POLICY_MATCH_NONE 0
#define POLICY_MATCH_ALLOW 1
#define POLICY_MATCH_DENY 2

struct policy_verdict {
	int reason;       /* REASON_FORWARDED or -DROP_* */
	__u32 cookie;     /* rule that decided, 0 when none */
	__u16 proxy_port; /* allowed, through this local proxy (0 = none) */
	__u8 pods;        /* allowed by a POLICY_F_PODS entry */
};

struct policy_match {
	__u32 cookie;
	__u16 proxy_port;
	__u8 outcome; /* POLICY_MATCH_* */
	__u8 flags;   /* POLICY_F_PODS of the allow that matched */
};

static __always_inline struct policy_match
policy_lookup(__u32 set_id, __u32 peer, __u8 dir, __u8 proto, __be16 dport)
{
	struct policy_key k = {
		.prefixlen = 96,
		.set_id = set_id,
		.identity = peer,
		.direction = dir,
		.proto = proto,
		.dport = dport,
	};
	struct policy_match m = {};
	struct policy_entry *by_id, *by_any;

	by_id = bpf_map_lookup_elem(&palisade_policy_v2, &k);
	k.identity = IDENTITY_ANY;
	by_any = bpf_map_lookup_elem(&palisade_policy_v2, &k);

	if (by_id && (by_id->flags & POLICY_F_DENY)) {
		m.outcome = POLICY_MATCH_DENY;
		m.cookie = by_id->cookie;
	} else if (by_any && (by_any->flags & POLICY_F_DENY)) {
		m.outcome = POLICY_MATCH_DENY;
		m.cookie = by_any->cookie;
	} else if (by_id) {
		m.outcome = POLICY_MATCH_ALLOW;
		m.cookie = by_id->cookie;
		m.proxy_port = by_id->proxy_port;
		m.flags = by_id->flags & POLICY_F_PODS;
	} else if (by_any) {
		m.outcome = POLICY_MATCH_ALLOW;
		m.cookie = by_any->cookie;
		m.proxy_port = by_any->proxy_port;
		m.flags = by_any->flags & POLICY_F_PODS;
	}
	return m;
}

/* The verdict cache. The trie is the source of truth, but a trie lookup
 * costs more as the trie grows (measured: 181 ns for a denied new flow with
 * no other rules, 521 ns with 100k), and the goal is a per-packet cost that
 * does not grow with the rules. New flows mostly repeat a few classes (the
 * same peer identity to the same port), so what a set says about a class
 * is cached in an LRU hash keyed by set, generation and class. A set's
 * content only changes in place together with its generation: palisade-ctrl
 * writes the entries, bumps the generation in the endpoint entry, deletes
 * entries, bumps again. The datapath reads set and generation before it
 * walks the trie, so a match computed from a half-applied change is cached
 * under a generation nobody reads after the last bump. Endpoints sharing a
 * set share its cache entries. Enforcement is not part of the match: it is
 * applied per endpoint after the lookup (an endpoint can be enforced in one
 * direction and not the other while sharing a set). */
struct policy_cache_key {
	__u32 set_id;
	__u32 gen;
	__u32 identity;
	__u8 direction;
	__u8 proto;
	__be16 dport;
};

/* palisade_policy_cache_v3: written by the datapath only; palisade-ctrl
 * clears it at start (set ids start above every id it could hold). v3: keyed
 * by set and generation, holds the match without enforcement. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct policy_cache_key);
	__type(value, struct policy_match);
} palisade_policy_cache_v3 SEC(".maps");

static __always_inline struct policy_verdict
policy_decide(__u32 set_id, __u32 gen, int enforced, __u32 peer, __u8 dir, __u8 proto, __be16 dport)
{
	struct policy_cache_key ck = {
		.set_id = set_id,
		.gen = gen,
		.identity = peer,
		.direction = dir,
		.proto = proto,
		.dport = dport,
	};
	struct policy_match *c = bpf_map_lookup_elem(&palisade_policy_cache_v3, &ck);
	struct policy_match m;
	struct policy_verdict v = { .reason = REASON_FORWARDED, .cookie = 0, .proxy_port = 0, .pods = 0 };

	if (c) {
		m = *c;
	} else {
		m = policy_lookup(set_id, peer, dir, proto, dport);
		bpf_map_update_elem(&palisade_policy_cache_v3, &ck, &m, BPF_ANY);
	}
	v.cookie = m.cookie;
	if (m.outcome == POLICY_MATCH_DENY)
		v.reason = -DROP_POLICY_DENY;
	else if (m.outcome == POLICY_MATCH_ALLOW) {
		v.proxy_port = m.proxy_port;
		v.pods = !!(m.flags & POLICY_F_PODS);
	}
	else if (enforced)
		v.reason = -DROP_POLICY;
	return v;
}

#endif
