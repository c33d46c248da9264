/* fqdn.h: addresses learned from DNS answers for toFQDNs rules, per endpoint.
 * palisade-dnsproxy is the only writer: for each address an allowed answer
 * carried, it installs {endpoint, address, protocol, port block} for every
 * toFQDNs rule of that endpoint whose selectors match the name, before the
 * answer reaches the pod, and removes the entry when the TTL runs out.
 *
 * The table only ever allows: it is consulted after the policy table, and
 * only when the policy table had no rule for the flow (an explicit deny
 * still wins). Keys are per endpoint, so one pod's lookups never open a
 * path for another. Each entry carries its expiry, checked here: an
 * address closes at its TTL even while palisade-dnsproxy is down (fail
 * closed), and the proxy removes it when it runs. The LPM layout mirrors
 * the policy key:
 *
 *   prefixlen 192   the address, any protocol and port (toFQDNs without toPorts)
 *   prefixlen 208   the address, one protocol, any port
 *   prefixlen 209..224  one protocol, a port block (ranges expand to blocks)
 */
#ifndef PALISADE_FQDN_H
#define PALISADE_FQDN_H

#include "common.h"

struct fqdn_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u8 family; /* ADDR_FAMILY_IPV4 / _IPV6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network order */
	__u8 proto;
	__u8 pad2;
	__be16 dport;
};

struct fqdn_entry {
	__u32 cookie;     /* the toFQDNs rule that allows it */
	__u32 flags;      /* reserved */
	__u64 expires_ns; /* bpf_ktime_get_ns() after which it allows nothing */
};

#define FQDN_PREFIX_ADDR 192
#define FQDN_PREFIX_FULL 224

/* palisade_fqdn_v1: written by palisade-dnsproxy only. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fqdn_key);
	__type(value, struct fqdn_entry);
} palisade_fqdn_v1 SEC(".maps");

/* The cookie of the toFQDNs rule that allows this new egress flow, or 0.
 * `daddr` is a tuple address (IPv4 in [0]). */
static __always_inline __u32 fqdn_allowed(__u32 ep_id, __u8 family, const __be32 *daddr, __u8 proto, __be16 dport)
{
	struct fqdn_key k = {
		.prefixlen = FQDN_PREFIX_FULL,
		.ep_id = ep_id,
		.family = family,
		.proto = proto,
		.dport = dport,
	};
	struct fqdn_entry *e;

	if (family == ADDR_FAMILY_IPV6)
		__builtin_memcpy(k.addr, daddr, 16);
	else
		__builtin_memcpy(k.addr, daddr, 4);
	e = bpf_map_lookup_elem(&palisade_fqdn_v1, &k);
	if (!e || e->expires_ns <= bpf_ktime_get_ns())
		return 0;
	return e->cookie;
}

#endif
