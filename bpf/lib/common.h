/* common.h: includes, reserved identities, directions and small helpers
 * shared by every Palisade BPF program. */
#ifndef PALISADE_COMMON_H
#define PALISADE_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Reserved identities keep Cilium's numbers so operators can read them. */
#define IDENTITY_ANY 0 /* wildcard in policy keys only */
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_UNMANAGED 3
#define IDENTITY_HEALTH 4
#define IDENTITY_INIT 5
#define IDENTITY_REMOTE_NODE 6
#define IDENTITY_KUBE_APISERVER 7
/* An IPv6 address outside every prefix: Cilium's reserved:world-ipv6. An
 * IPv4 one stays IDENTITY_WORLD (as in a single-stack Cilium cluster), so
 * a rule for 0.0.0.0/0 never admits IPv6 and IPv4 flows read as before;
 * the entity `world` is both. */
#define IDENTITY_WORLD_IPV6 10

/* Traffic direction as seen by the endpoint (Cilium's numbering). */
#define DIR_INGRESS 0 /* to the endpoint: host-side veth egress */
#define DIR_EGRESS 1  /* from the endpoint: host-side veth ingress */

#define ADDR_FAMILY_IPV4 4
#define ADDR_FAMILY_IPV6 6

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Adds one to slot `idx` of a per-CPU array of __u64 counters. */
#define PERCPU_COUNT(map, idx)                                   \
	do {                                                     \
		__u32 __k = (idx);                               \
		__u64 *__v = bpf_map_lookup_elem(&(map), &__k); \
		if (__v)                                         \
			*__v += 1;                               \
	} while (0)

/* A single untorn read of a field another CPU (or userspace) may rewrite. */
#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))

#endif
