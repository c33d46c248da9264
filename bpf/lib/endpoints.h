/* endpoints.h: the endpoint table, keyed by the host-side veth ifindex. */
#ifndef PALISADE_ENDPOINTS_H
#define PALISADE_ENDPOINTS_H

#include "common.h"

#define EP_F_INGRESS_ENFORCED (1U << 0)
#define EP_F_EGRESS_ENFORCED (1U << 1)
#define EP_F_HOST (1U << 2) /* the node itself, on a host (uplink) interface */
#define EP_F_AUDIT_INGRESS (1U << 3) /* policy drops pass and are reported as AUDIT */
#define EP_F_AUDIT_EGRESS (1U << 4)
#define EP_F_FQDN (1U << 5) /* has toFQDNs rules: consult palisade_fqdn_v1 (fqdn.h) */
#define EP_F_IPBLOCK_PODS (1U << 6) /* has POLICY_F_PODS entries: a pod peer may match by its CIDR identity */

struct endpoint_key {
	__u32 ifindex; /* host-side veth */
};

struct endpoint_info {
	__u32 ep_id;    /* node-local endpoint id (conntrack, FQDN table, flows) */
	__u32 identity; /* numeric security identity of the endpoint's labels */
	__be32 ipv4;    /* the endpoint's IPv4 address (0: none); other sources are spoofed */
	__u32 flags;    /* EP_F_* */
	__u32 policy_set; /* the policy set its entries are in (policy.h); 0 is
			   * the empty set. palisade-ctrl switches an endpoint
			   * to another set with one write of this value. */
	__u32 policy_gen; /* the set's generation: bumped when a set with one
			   * user is changed in place (policy.h) */
	__be32 ipv6[4];   /* the endpoint's IPv6 address (all 0: none) */
};

/* palisade_endpoints_v3: ifindex -> endpoint_info. Written by palisade-ctrl
 * before the endpoint's programs are attached; removed after detach. v2: the
 * policy set; v3: the IPv6 address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
} palisade_endpoints_v3 SEC(".maps");

static __always_inline struct endpoint_info *endpoint_lookup(__u32 ifindex)
{
	struct endpoint_key key = { .ifindex = ifindex };

	return bpf_map_lookup_elem(&palisade_endpoints_v3, &key);
}

/* Whether `saddr` (a tuple address of `family`) is the endpoint's own. */
static __always_inline int endpoint_owns(const struct endpoint_info *ep, __u8 family, const __be32 *saddr)
{
	if (family == ADDR_FAMILY_IPV6) {
		/* An endpoint without IPv6 owns no IPv6 address. */
		if (!(ep->ipv6[0] | ep->ipv6[1] | ep->ipv6[2] | ep->ipv6[3]))
			return 0;
		return saddr[0] == ep->ipv6[0] && saddr[1] == ep->ipv6[1] && saddr[2] == ep->ipv6[2] &&
		       saddr[3] == ep->ipv6[3];
	}
	return ep->ipv4 && saddr[0] == ep->ipv4;
}

static __always_inline int endpoint_audit(const struct endpoint_info *ep, __u8 dir)
{
	return ep->flags & (dir == DIR_INGRESS ? EP_F_AUDIT_INGRESS : EP_F_AUDIT_EGRESS);
}

static __always_inline int endpoint_enforced(const struct endpoint_info *ep, __u8 dir)
{
	return ep->flags & (dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED);
}

#endif
