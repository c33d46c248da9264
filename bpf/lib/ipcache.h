/* ipcache.h: IP -> security identity, in two levels. Host addresses
 * (endpoints, remote pods, FQDN-learned IPs) sit in an exact-match hash that
 * is looked up first and costs the same at 10 or 100k entries; only real CIDR
 * prefixes go to the LPM trie. An address in neither is WORLD (IPv4) or
 * WORLD_IPV6. */
#ifndef PALISADE_IPCACHE_H
#define PALISADE_IPCACHE_H

#include "common.h"

struct ipcache_host_key {
	__u8 family; /* ADDR_FAMILY_IPV4 / _IPV6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network order */
};

struct ipcache_lpm_key {
	__u32 prefixlen; /* 32 (family + pad) + address prefix length */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_entry {
	__u32 identity;
	__u32 node_id; /* 0 = this node; later: the node hosting the address */
};

/* palisade_ipcache_v1: host address -> identity. Writers: palisade-ctrl
 * (local endpoints), later dnsproxy (FQDN IPs) and ipcache-sync (remote). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ipcache_host_key);
	__type(value, struct ipcache_entry);
} palisade_ipcache_v1 SEC(".maps");

/* palisade_ipcache_lpm_v1: CIDR prefix -> identity. Writer: palisade-ctrl. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_lpm_key);
	__type(value, struct ipcache_entry);
} palisade_ipcache_lpm_v1 SEC(".maps");

/* The LPM key's prefix for a whole address: family + pad, then the address. */
#define IPCACHE_LPM_FULL_V4 (32 + 32)
#define IPCACHE_LPM_FULL_V6 (32 + 128)

/* The CIDR identity of an address, ignoring the host-address map: what a
 * pod's address is inside the policies' prefixes (in none: WORLD for IPv4,
 * WORLD_IPV6 for IPv6). `addr` is a tuple address (IPv4 in [0]). */
static __always_inline __u32 ipcache_cidr_identity(__u8 family, const __be32 *addr)
{
	struct ipcache_lpm_key lk = { .family = family };
	struct ipcache_entry *e;

	if (family == ADDR_FAMILY_IPV6) {
		lk.prefixlen = IPCACHE_LPM_FULL_V6;
		__builtin_memcpy(lk.addr, addr, 16);
	} else {
		lk.prefixlen = IPCACHE_LPM_FULL_V4;
		__builtin_memcpy(lk.addr, addr, 4);
	}
	e = bpf_map_lookup_elem(&palisade_ipcache_lpm_v1, &lk);
	if (e)
		return e->identity;
	return family == ADDR_FAMILY_IPV6 ? IDENTITY_WORLD_IPV6 : IDENTITY_WORLD;
}

/* The identity of an address: the exact host entry, else its CIDR's. */
static __always_inline __u32 ipcache_identity(__u8 family, const __be32 *addr)
{
	struct ipcache_host_key hk = { .family = family };
	struct ipcache_entry *e;

	if (family == ADDR_FAMILY_IPV6)
		__builtin_memcpy(hk.addr, addr, 16);
	else
		__builtin_memcpy(hk.addr, addr, 4);
	e = bpf_map_lookup_elem(&palisade_ipcache_v1, &hk);
	if (e)
		return e->identity;
	return ipcache_cidr_identity(family, addr);
}

#endif
