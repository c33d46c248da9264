/* proxy.h: transparent redirection of a flow to a local proxy socket
 * (palisade-dnsproxy) with bpf_sk_assign, from the endpoint's tc ingress.
 *
 * The packet keeps its headers: the proxy learns the original destination
 * from them (IP_RECVORIGDSTADDR for UDP, the accepted socket's local address
 * for TCP), answers from it with an IP_TRANSPARENT socket, and the pod never
 * notices. bpf_sk_assign only picks the socket; the packet must still be
 * routed locally, so it is marked with proxy_mark, which palisade-ctrl's
 * policy routing rule sends to a table whose only route is `local default`.
 *
 * The proxy listens on 127.0.0.1:<proxy port> (UDP and TCP, IP_TRANSPARENT).
 * A TCP packet of a connection the proxy already accepted goes to that
 * connection's socket (found by the packet's own tuple); anything else goes
 * to the listener. When no proxy socket exists (the proxy is down or
 * restarting) the packet is dropped: a DNS rule is never bypassed. */
#ifndef PALISADE_PROXY_H
#define PALISADE_PROXY_H

#include "common.h"
#include "drop_reasons.h"
#include "parse.h"

/* skb mark that routes a redirected packet locally; set before load. */
const volatile __u32 proxy_mark = 0x0a00;

#define PROXY_ADDR_BE bpf_htonl(0x7f000001) /* 127.0.0.1 */

/* Returns REASON_FORWARDED (assigned and marked) or -DROP_PROXY_UNAVAILABLE. */
static __always_inline int proxy_redirect(struct __sk_buff *skb, const struct tuple *t, __u16 proxy_port)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk = 0;
	long err;

	tup.ipv4.saddr = t->saddr;
	tup.ipv4.sport = t->sport;
	if (t->proto == IPPROTO_TCP) {
		tup.ipv4.daddr = t->daddr;
		tup.ipv4.dport = t->dport;
		sk = bpf_skc_lookup_tcp(skb, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
			bpf_sk_release(sk);
			sk = 0;
		}
		if (!sk) {
			tup.ipv4.daddr = PROXY_ADDR_BE;
			tup.ipv4.dport = bpf_htons(proxy_port);
			sk = bpf_skc_lookup_tcp(skb, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
		}
	} else if (t->proto == IPPROTO_UDP) {
		tup.ipv4.daddr = PROXY_ADDR_BE;
		tup.ipv4.dport = bpf_htons(proxy_port);
		sk = bpf_sk_lookup_udp(skb, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return -DROP_PROXY_UNAVAILABLE;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -DROP_PROXY_UNAVAILABLE;
	skb->mark = proxy_mark;
	return REASON_FORWARDED;
}

#endif
