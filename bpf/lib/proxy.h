/* proxy.h: transparent redirection of a flow to a local proxy socket
 * (palisade-dnsproxy, palisade-l7proxy) with bpf_sk_assign.
 *
 * The packet keeps its headers: the proxy learns the original destination
 * from them (IP_RECVORIGDSTADDR for UDP, the accepted socket's local address
 * for TCP), answers from it with an IP_TRANSPARENT socket, and the client
 * never notices. bpf_sk_assign only picks the socket; the packet must still
 * be routed locally, so it is marked with proxy_mark, which palisade-ctrl's
 * policy routing rule (fwmark proxy_mark/MARK_MAGIC_MASK) sends to a table
 * whose only route is `local default`.
 *
 * Marks are magic values in bits 8-11 (MARK_MAGIC_MASK), as Cilium's are:
 *   proxy_mark (0x0a00)  deliver locally, to the socket bpf_sk_assign chose
 *   MARK_FROM_PROXY      set by palisade-l7proxy (SO_MARK) on its upstream
 *                        connections: the datapath must not redirect them
 *                        again, and their replies belong to the proxy
 *   MARK_REINJECT        a packet on its way back to the tc ingress of the
 *                        interface it entered by, to be assigned to the
 *                        proxy there; the proxy port rides in bits 16-31
 * A pod cannot forge any of them: crossing a veth into another namespace
 * clears skb->mark.
 *
 * Three ways into a proxy:
 *  - proxy_redirect, at tc ingress (a pod's egress, or a re-injected
 *    packet): a TCP packet of a connection the proxy already accepted goes
 *    to that connection's socket (found by the packet's own tuple); anything
 *    else goes to the listener on 127.0.0.1:<port>.
 *  - proxy_reinject, at tc egress (a pod's ingress rules): bpf_sk_assign is
 *    tc-ingress only, so the packet is sent back to the ingress of the
 *    interface it arrived on (skb->ingress_ifindex: the source pod's veth or
 *    the uplink), where proxy_redirect runs. Reverse-path filters pass, as
 *    the packet re-enters where it came from.
 *  - proxy_reply: a packet from a server to one of the proxy's upstream
 *    connections (which use the client's address) goes to that socket, by
 *    tuple, never to a listener.
 * When no proxy socket exists (the proxy is down or restarting) the packet
 * is dropped: an L7 or DNS rule is never bypassed.
 *
 * TIME_WAIT. The proxy usually closes first, so the accepted socket of a
 * finished connection lingers in TIME_WAIT with the client's tuple. A
 * client reusing that source port (legitimately: it closed second, so it
 * holds no TIME_WAIT of its own) sends a SYN the lookup finds the
 * TIME_WAIT socket for. Handing that SYN to the listener does not work:
 * the kernel drops it, because the new request socket would duplicate the
 * TIME_WAIT tuple in the established hash, and the client waits a second
 * for its retransmission (found by netns-tests/tests/chaos.rs: 1-4 % of
 * HTTP connections once ~1000 had gone through the proxy). So the SYN is
 * handed to the TIME_WAIT socket itself, as a normal lookup would: the
 * kernel accepts a newer SYN there (RFC 1122 4.2.2.13), retires the
 * TIME_WAIT socket and looks for a listener of the original destination,
 * which only sk_lookup_proxy (below) can name: it finds the tuple this
 * program left in palisade_proxy_tw_v1 and the proxy's listener, which the
 * proxy registered in palisade_proxy_listeners_v1 by its port. Other
 * segments of the old connection go to the TIME_WAIT socket too, which
 * answers them as TCP says. */
#ifndef PALISADE_PROXY_H
#define PALISADE_PROXY_H

#include <linux/if_packet.h>
#include "common.h"
#include "drop_reasons.h"
#include "parse.h"

/* skb mark that routes a redirected packet locally; set before load. */
const volatile __u32 proxy_mark = 0x0a00;

#define MARK_MAGIC_MASK 0x0f00
#define MARK_FROM_PROXY 0x0b00
#define MARK_REINJECT 0x0c00

static __always_inline int mark_is(const struct __sk_buff *skb, __u32 magic)
{
	return (skb->mark & MARK_MAGIC_MASK) == magic;
}

#define PROXY_ADDR_BE bpf_htonl(0x7f000001) /* 127.0.0.1; IPv6: ::1 */

/* A SYN handed to a TIME_WAIT socket, by its tuple as the packet has it. */
struct proxy_tw_key {
	__be32 saddr[4]; /* IPv4: [0], the rest 0 */
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family;     /* ADDR_FAMILY_* */
	__u8 pad[3];
};

/* palisade_proxy_tw_v2: written here, read and deleted by sk_lookup_proxy;
 * an entry lives from a SYN to the kernel's listener lookup for it (LRU:
 * one whose lookup never came is evicted). Value: the proxy's port. v2:
 * both families. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct proxy_tw_key);
	__type(value, __u32);
} palisade_proxy_tw_v2 SEC(".maps");

/* palisade_proxy_listeners_v1: proxy port -> its listening socket, put by
 * the proxy that owns it (palisade-l7proxy, palisade-dnsproxy) when it
 * starts; the kernel removes a socket when it closes. A proxy that serves
 * IPv6 listens on ::1 as well and puts that socket under port | 1 << 16. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} palisade_proxy_listeners_v1 SEC(".maps");

#define PROXY_LISTENER_V6 (1U << 16)

/* Hands the packet to `sk` (a reference this releases) and marks it for
 * local delivery. Returns REASON_FORWARDED or -DROP_PROXY_UNAVAILABLE. */
static __always_inline int proxy_assign(struct __sk_buff *skb, struct bpf_sock *sk)
{
	long err;

	if (!sk)
		return -DROP_PROXY_UNAVAILABLE;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -DROP_PROXY_UNAVAILABLE;
	skb->mark = proxy_mark;
	return REASON_FORWARDED;
}

/* The socket lookup tuple of `t` (its own addresses and ports) and its size. */
static __always_inline __u32 proxy_tuple(const struct tuple *t, struct bpf_sock_tuple *tup)
{
	if (t->family == ADDR_FAMILY_IPV6) {
		__builtin_memcpy(tup->ipv6.saddr, t->saddr, 16);
		__builtin_memcpy(tup->ipv6.daddr, t->daddr, 16);
		tup->ipv6.sport = t->sport;
		tup->ipv6.dport = t->dport;
		return sizeof(tup->ipv6);
	}
	tup->ipv4.saddr = t->saddr[0];
	tup->ipv4.daddr = t->daddr[0];
	tup->ipv4.sport = t->sport;
	tup->ipv4.dport = t->dport;
	return sizeof(tup->ipv4);
}

/* Points the tuple's destination at the proxy's listener: 127.0.0.1 or ::1. */
static __always_inline void proxy_tuple_listener(const struct tuple *t, struct bpf_sock_tuple *tup, __u16 proxy_port)
{
	if (t->family == ADDR_FAMILY_IPV6) {
		tup->ipv6.daddr[0] = tup->ipv6.daddr[1] = tup->ipv6.daddr[2] = 0;
		tup->ipv6.daddr[3] = bpf_htonl(1);
		tup->ipv6.dport = bpf_htons(proxy_port);
		return;
	}
	tup->ipv4.daddr = PROXY_ADDR_BE;
	tup->ipv4.dport = bpf_htons(proxy_port);
}

/* Returns REASON_FORWARDED (assigned and marked) or -DROP_PROXY_UNAVAILABLE. */
static __always_inline int proxy_redirect(struct __sk_buff *skb, const struct tuple *t, __u16 proxy_port)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk = 0;
	__u32 tlen = proxy_tuple(t, &tup);

	if (t->proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state == BPF_TCP_TIME_WAIT) {
			if ((t->tcp_flags & 0x12) == 0x02) {
				struct proxy_tw_key k = {
					.sport = t->sport, .dport = t->dport, .family = t->family
				};
				__u32 port = proxy_port;

				__builtin_memcpy(k.saddr, t->saddr, 16);
				__builtin_memcpy(k.daddr, t->daddr, 16);
				bpf_map_update_elem(&palisade_proxy_tw_v2, &k, &port, BPF_ANY);
			}
			return proxy_assign(skb, sk);
		}
		if (sk && sk->state == BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			sk = 0;
		}
		if (!sk) {
			proxy_tuple_listener(t, &tup, proxy_port);
			sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		}
	} else if (t->proto == IPPROTO_UDP) {
		proxy_tuple_listener(t, &tup, proxy_port);
		sk = bpf_sk_lookup_udp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
	}
	return proxy_assign(skb, sk);
}

/* A packet from a server to a proxy upstream connection: to that socket. */
static __always_inline int proxy_reply(struct __sk_buff *skb, const struct tuple *t)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk;
	__u32 tlen;

	if (t->proto != IPPROTO_TCP)
		return -DROP_PROXY_UNAVAILABLE;
	tlen = proxy_tuple(t, &tup);
	sk = bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -DROP_PROXY_UNAVAILABLE;
	if (sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -DROP_PROXY_UNAVAILABLE;
	}
	return proxy_assign(skb, sk);
}

/* At tc egress: back to the ingress it came by, to be assigned there.
 * Returns TC_ACT_REDIRECT or -DROP_PROXY_UNAVAILABLE (the node's own
 * traffic, which entered by no interface). */
static __always_inline int proxy_reinject(struct __sk_buff *skb, __u16 proxy_port)
{
	__u32 ifindex = skb->ingress_ifindex;

	if (!ifindex || mark_is(skb, MARK_REINJECT))
		return -DROP_PROXY_UNAVAILABLE;
	skb->mark = MARK_REINJECT | ((__u32)proxy_port << 16);
	return (int)bpf_redirect(ifindex, BPF_F_INGRESS);
}

/* At tc ingress: a packet proxy_reinject sent back. Returns 1 and the
 * verdict in *rc when it is one. */
static __always_inline int proxy_reinjected(struct __sk_buff *skb, int *rc)
{
	struct tuple t = {};
	__u16 port;
	int rc_parse;

	if (!mark_is(skb, MARK_REINJECT))
		return 0;
	port = skb->mark >> 16;
	skb->mark = 0;
	/* Only an unfragmented IP packet was ever re-injected; anything
	 * else (and t is only filled for IP) is dropped. */
	rc_parse = parse_packet(skb, &t);
	if ((rc_parse != PARSE_L3_IPV4 && rc_parse != PARSE_L3_IPV6) || !port) {
		*rc = -DROP_INVALID;
		return 1;
	}
	/* The frame still carries the MAC of the hop it was forwarded to. */
	bpf_skb_change_type(skb, PACKET_HOST);
	*rc = proxy_redirect(skb, &t, port);
	return 1;
}

#endif
