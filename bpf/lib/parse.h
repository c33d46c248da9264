/* parse.h: turns an skb into the tuple the verdict needs, and decides what
 * a malformed packet is. Decisions (fail closed, documented in docs/datapath.md):
 *  - ARP passes; IPv4 is parsed; anything else is dropped in an enforced
 *    direction (DROP_UNSUPPORTED_L3) and passes where nothing is enforced.
 *  - IPv4 with version != 4, IHL < 5, a total length shorter than its header
 *    or longer than the packet, or an L4 header cut short: DROP_INVALID,
 *    always (a packet we cannot parse is never evaluated as allowed).
 *  - IP options are skipped by IHL; they do not change the verdict.
 *  - Fragments (MF set or offset != 0) carry no reliable ports: dropped in an
 *    enforced direction (DROP_FRAG_NOSUPPORT), passed elsewhere.
 * Headers are read with bpf_skb_load_bytes so non-linear skbs parse too. */
#ifndef PALISADE_PARSE_H
#define PALISADE_PARSE_H

#include "common.h"
#include "drop_reasons.h"
#include <linux/tcp.h>
#include <linux/udp.h>

/* linux/icmp.h drags in libc socket headers; the 8 bytes we read: */
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 id;
	__be16 sequence;
};
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

#define PARSE_L3_ARP 1
#define PARSE_L3_IPV4 2
#define PARSE_L3_OTHER 3
#define PARSE_FRAGMENT 4

struct tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;      /* policy port: L4 dport, or ICMP type */
	__be16 ct_sport;   /* conntrack ports (ICMP echo: the id) */
	__be16 ct_dport;
	__u8 proto;
	__u8 tcp_closing;  /* FIN or RST */
	__u8 tcp_flags;    /* the TCP flags byte (FIN 0x01 SYN 0x02 RST 0x04 ACK 0x10) */
};

/* Returns PARSE_* (>0) or -DROP_INVALID. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct tuple *t)
{
	__be16 h_proto;
	struct iphdr ip;
	__u32 l4off, tot_len, ihl_len;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &h_proto, 2) < 0)
		return -DROP_INVALID;
	if (h_proto == bpf_htons(ETH_P_ARP))
		return PARSE_L3_ARP;
	if (h_proto != bpf_htons(ETH_P_IP))
		return PARSE_L3_OTHER;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -DROP_INVALID;
	ihl_len = (__u32)ip.ihl * 4;
	tot_len = bpf_ntohs(ip.tot_len);
	if (ip.version != 4 || ip.ihl < 5 || tot_len < ihl_len || tot_len > skb->len - ETH_HLEN)
		return -DROP_INVALID;

	t->saddr = ip.saddr;
	t->daddr = ip.daddr;
	t->proto = ip.protocol;
	t->sport = t->dport = t->ct_sport = t->ct_dport = 0;
	t->tcp_closing = 0;
	t->tcp_flags = 0;
	if (ip.frag_off & bpf_htons(0x3fff)) /* MF | offset */
		return PARSE_FRAGMENT;

	l4off = ETH_HLEN + ihl_len;
	switch (ip.protocol) {
	case IPPROTO_TCP: {
		struct tcphdr th;

		if (tot_len < ihl_len + sizeof(th) ||
		    bpf_skb_load_bytes(skb, l4off, &th, sizeof(th)) < 0 || th.doff < 5)
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

		if (tot_len < ihl_len + 8 || bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
			return -DROP_INVALID;
		t->sport = t->ct_sport = ports[0];
		t->dport = t->ct_dport = ports[1];
		break;
	}
	case IPPROTO_ICMP: {
		struct icmp_echo_hdr ih;

		if (tot_len < ihl_len + sizeof(ih) ||
		    bpf_skb_load_bytes(skb, l4off, &ih, sizeof(ih)) < 0)
			return -DROP_INVALID;
		t->dport = bpf_htons(ih.type);
		if (ih.type == ICMP_ECHO || ih.type == ICMP_ECHOREPLY)
			t->ct_sport = t->ct_dport = ih.id;
		break;
	}
	default:
		break;
	}
	return PARSE_L3_IPV4;
}

#endif
