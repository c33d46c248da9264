/* parse.h: turns an skb into the tuple the verdict needs, and decides what
 * a malformed packet is. Decisions (fail closed, documented in docs/datapath.md):
 *  - ARP passes; IPv4 and IPv6 are parsed; anything else is dropped in an
 *    enforced direction (DROP_UNSUPPORTED_L3) and passes where nothing is
 *    enforced.
 *  - IPv4 with version != 4, IHL < 5, a total length shorter than its header
 *    or longer than the packet, or an L4 header cut short: DROP_INVALID,
 *    always (a packet we cannot parse is never evaluated as allowed).
 *  - IPv6 with version != 6, a payload length of 0 (jumbogram) or longer
 *    than the packet, an extension header running past the payload, a
 *    hop-by-hop header anywhere but first, or an L4 header cut short:
 *    DROP_INVALID, always.
 *  - IP options are skipped by IHL; they do not change the verdict.
 *    IPv6 hop-by-hop, destination-options and authentication headers are
 *    skipped (counted per kind in palisade_ip6_exthdr_v1); the verdict is
 *    on the upper-layer protocol after them.
 *  - An IPv6 routing header with segments left > 0 (the destination is not
 *    the final one), or a chain of more than IPV6_MAX_EXTHDRS headers:
 *    PARSE_EXTHDR, dropped in an enforced direction (DROP_IPV6_EXTHDR).
 *  - Fragments (IPv4 MF set or offset != 0; an IPv6 fragment header with M
 *    set or offset != 0) carry no reliable ports: dropped in an enforced
 *    direction (DROP_FRAG_NOSUPPORT), passed elsewhere. An IPv6 atomic
 *    fragment (offset 0, M clear: RFC 6946) is a whole packet and parsed on.
 *  - ICMPv6 neighbour discovery (types 133-137) with hop limit 255 and MLD
 *    (130-132, 143) with hop limit 1: PARSE_LINK_CONTROL, which passes like
 *    ARP. RFC 4861 and 3810 make receivers drop such a packet that crossed
 *    a router, so one a pod sends anywhere else dies on the way; with any
 *    other hop limit they are ICMPv6 like the rest, judged by policy.
 *  - ICMP errors (3, 11, 12; ICMPv6 1-4) are marked (icmp_err): one about
 *    a live flow of the endpoint passes (conntrack.h, icmp_error_related).
 * Headers are read with bpf_skb_load_bytes so non-linear skbs parse too. */
#ifndef PALISADE_PARSE_H
#define PALISADE_PARSE_H

#include "common.h"
#include "drop_reasons.h"
#include <linux/tcp.h>
#include <linux/udp.h>

/* linux/icmp.h drags in libc socket headers; the 8 bytes we read (ICMPv6
 * has the same layout for echo): */
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 id;
	__be16 sequence;
};
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

/* The fixed IPv6 header (linux/ipv6.h pulls in more than we need). */
struct ip6_hdr {
	__u8 ver_tc;   /* version (4 bits), traffic class high bits */
	__u8 tc_flow[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__be32 saddr[4];
	__be32 daddr[4];
};
#define IP6_HLEN 40

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
/* Headers walked before giving up (PARSE_EXTHDR): real traffic carries one
 * or two. */
#define IPV6_MAX_EXTHDRS 6

#define PARSE_L3_ARP 1
#define PARSE_L3_IPV4 2
#define PARSE_L3_OTHER 3
#define PARSE_FRAGMENT 4
#define PARSE_L3_IPV6 5
#define PARSE_LINK_CONTROL 6 /* IPv6 NDP or MLD that cannot have been routed */
#define PARSE_EXTHDR 7       /* IPv6 routing header in use, or too long a chain */

/* Addresses are 16 bytes for both families; IPv4 uses [0], the rest 0. */
struct tuple {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;      /* policy port: L4 dport, or ICMP type */
	__be16 ct_sport;   /* conntrack ports (ICMP echo: the id) */
	__be16 ct_dport;
	__u8 proto;
	__u8 tcp_closing;  /* FIN or RST */
	__u8 tcp_flags;    /* the TCP flags byte (FIN 0x01 SYN 0x02 RST 0x04 ACK 0x10) */
	__u8 family;       /* ADDR_FAMILY_* (0 before parsing an IP header) */
	__u16 l4off;       /* where the L4 header starts */
	__u8 icmp_err;     /* an ICMP/ICMPv6 error message (it quotes a packet) */
	__u8 pad;
};

/* palisade_ip6_exthdr_v1: IPv6 extension headers seen, per CPU, by kind:
 * [0] hop-by-hop [1] routing [2] destination options [3] fragment
 * [4] authentication. palisade-ctrl exports them as metrics. */
#define IP6_EXT_COUNTERS 5
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IP6_EXT_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} palisade_ip6_exthdr_v1 SEC(".maps");

static __always_inline void exthdr_count(__u32 idx)
{
	PERCPU_COUNT(palisade_ip6_exthdr_v1, idx);
}

/* Reads the L4 ports (or ICMP type and echo id) at l4off, with l4len bytes
 * left in the IP payload. Returns 0 or -DROP_INVALID. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct tuple *t, __u32 l4off, __u32 l4len)
{
	t->l4off = l4off;
	switch (t->proto) {
	case IPPROTO_TCP: {
		struct tcphdr th;

		if (l4len < sizeof(th) || bpf_skb_load_bytes(skb, l4off, &th, sizeof(th)) < 0 || th.doff < 5)
			return -DROP_INVALID;
		t->sport = t->ct_sport = th.source;
		t->dport = t->ct_dport = th.dest;
		t->tcp_closing = th.fin || th.rst;
		t->tcp_flags = (th.fin ? 0x01 : 0) | (th.syn ? 0x02 : 0) | (th.rst ? 0x04 : 0) | (th.psh ? 0x08 : 0) |
			       (th.ack ? 0x10 : 0);
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];

		if (l4len < 8 || bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
			return -DROP_INVALID;
		t->sport = t->ct_sport = ports[0];
		t->dport = t->ct_dport = ports[1];
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_echo_hdr ih;
		__u8 req = t->proto == IPPROTO_ICMP ? ICMP_ECHO : ICMPV6_ECHO_REQUEST;
		__u8 rep = t->proto == IPPROTO_ICMP ? ICMP_ECHOREPLY : ICMPV6_ECHO_REPLY;

		if (l4len < sizeof(ih) || bpf_skb_load_bytes(skb, l4off, &ih, sizeof(ih)) < 0)
			return -DROP_INVALID;
		t->dport = bpf_htons(ih.type);
		if (ih.type == req || ih.type == rep)
			t->ct_sport = t->ct_dport = ih.id;
		/* Errors quote the packet they are about (icmp_error_related):
		 * ICMP 3, 11, 12; ICMPv6 1-4. */
		if (t->proto == IPPROTO_ICMP ? (ih.type == 3 || ih.type == 11 || ih.type == 12)
					     : (ih.type >= 1 && ih.type <= 4))
			t->icmp_err = 1;
		break;
	}
	default:
		break;
	}
	return 0;
}

static __always_inline void tuple_reset(struct tuple *t, __u8 family, __u8 proto)
{
	t->family = family;
	t->proto = proto;
	t->sport = t->dport = t->ct_sport = t->ct_dport = 0;
	t->tcp_closing = 0;
	t->tcp_flags = 0;
	t->icmp_err = 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct tuple *t)
{
	struct iphdr ip;
	__u32 tot_len, ihl_len;
	int rc;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -DROP_INVALID;
	ihl_len = (__u32)ip.ihl * 4;
	tot_len = bpf_ntohs(ip.tot_len);
	if (ip.version != 4 || ip.ihl < 5 || tot_len < ihl_len || tot_len > skb->len - ETH_HLEN)
		return -DROP_INVALID;

	t->saddr[0] = ip.saddr;
	t->daddr[0] = ip.daddr;
	t->saddr[1] = t->saddr[2] = t->saddr[3] = 0;
	t->daddr[1] = t->daddr[2] = t->daddr[3] = 0;
	tuple_reset(t, ADDR_FAMILY_IPV4, ip.protocol);
	if (ip.frag_off & bpf_htons(0x3fff)) /* MF | offset */
		return PARSE_FRAGMENT;
	rc = parse_l4(skb, t, ETH_HLEN + ihl_len, tot_len - ihl_len);
	return rc < 0 ? rc : PARSE_L3_IPV4;
}

static __always_inline int ipv6_is_exthdr(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST || nh == NEXTHDR_AUTH ||
	       nh == NEXTHDR_FRAGMENT;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct tuple *t)
{
	struct ip6_hdr ip6;
	__u32 off = ETH_HLEN + IP6_HLEN, end, i;
	__u8 nh, routed = 0;
	int rc;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
		return -DROP_INVALID;
	end = off + bpf_ntohs(ip6.payload_len);
	if ((ip6.ver_tc >> 4) != 6 || ip6.payload_len == 0 || end > skb->len)
		return -DROP_INVALID;
	__builtin_memcpy(t->saddr, ip6.saddr, 16);
	__builtin_memcpy(t->daddr, ip6.daddr, 16);
	nh = ip6.nexthdr;

	for (i = 0; i < IPV6_MAX_EXTHDRS; i++) {
		__u8 h[8];
		__u32 len = 0;

		if (!ipv6_is_exthdr(nh))
			break;
		if (off + 8 > end || bpf_skb_load_bytes(skb, off, h, 8) < 0)
			return -DROP_INVALID;
		switch (nh) {
		case NEXTHDR_HOP:
			if (i != 0) /* RFC 8200 4.1: only right after the IPv6 header */
				return -DROP_INVALID;
			exthdr_count(0);
			len = ((__u32)h[1] + 1) * 8;
			break;
		case NEXTHDR_ROUTING:
			exthdr_count(1);
			if (h[3] != 0) /* segments left: not the final destination */
				routed = 1;
			len = ((__u32)h[1] + 1) * 8;
			break;
		case NEXTHDR_DEST:
			exthdr_count(2);
			len = ((__u32)h[1] + 1) * 8;
			break;
		case NEXTHDR_AUTH:
			exthdr_count(4);
			len = ((__u32)h[1] + 2) * 4;
			break;
		default: /* NEXTHDR_FRAGMENT: 8 bytes, offset and M in h[2..3] */
			exthdr_count(3);
			if (((__u32)h[2] << 8 | h[3]) & 0xfff9) {
				tuple_reset(t, ADDR_FAMILY_IPV6, h[0]);
				return PARSE_FRAGMENT;
			}
			len = 8;
			break;
		}
		nh = h[0];
		off += len;
		if (off > end)
			return -DROP_INVALID;
	}
	tuple_reset(t, ADDR_FAMILY_IPV6, nh);
	if (routed || ipv6_is_exthdr(nh))
		return PARSE_EXTHDR;
	rc = parse_l4(skb, t, off, end - off);
	if (rc < 0)
		return rc;
	if (nh == IPPROTO_ICMPV6) {
		__u8 type = bpf_ntohs(t->dport);

		if ((type >= 133 && type <= 137 && ip6.hop_limit == 255) ||
		    (((type >= 130 && type <= 132) || type == 143) && ip6.hop_limit == 1))
			return PARSE_LINK_CONTROL;
	}
	return PARSE_L3_IPV6;
}

/* Returns PARSE_* (>0) or -DROP_INVALID. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct tuple *t)
{
	__be16 h_proto;

	t->family = 0;
	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &h_proto, 2) < 0)
		return -DROP_INVALID;
	if (h_proto == bpf_htons(ETH_P_ARP))
		return PARSE_L3_ARP;
	if (h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, t);
	if (h_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, t);
	return PARSE_L3_OTHER;
}

/* Whether two tuple addresses are equal (IPv4 compares [0]; the rest is 0). */
static __always_inline int addr_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

#endif
