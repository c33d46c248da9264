/* endpoint.bpf.c: the programs on each endpoint's host-side veth.
 *   tc_from_endpoint  host veth ingress = packets the pod sends = its egress policy
 *   tc_to_endpoint    host veth egress  = packets the pod receives = its ingress policy
 * and on the node's host (uplink) interfaces, the host firewall:
 *   tc_host_ingress   uplink ingress = packets to the node = the host's ingress policy
 *   tc_host_egress    uplink egress  = packets from the node = the host's egress policy
 * Forwarded traffic (to or from pods) crosses the uplink too; it is not the
 * host's, so those programs pass it: the pods' own programs police it.
 * Per packet: one endpoint lookup, one conntrack lookup; on a new flow one
 * ipcache lookup (two on a hash miss) and one verdict-cache lookup, plus two
 * policy-trie lookups when the cache has no current verdict for the flow's
 * class (lib/policy.h). An egress flow the policy does not allow is looked
 * up once more in the endpoint's FQDN table (lib/fqdn.h) when it has
 * toFQDNs rules; a flow whose rule names a proxy (DNS rules) is handed to
 * that proxy's socket (lib/proxy.h), on every packet, via its conntrack
 * entry: at a pod's egress directly, at its ingress by sending the packet
 * back to the ingress of the interface it came in by (rules on the server's
 * side). The uplink's ingress looks forwarded TCP up in conntrack once, to
 * find the replies to the L7 proxy's upstream connections. */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/metrics.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/parse.h"
#include "lib/flow.h"
#include "lib/fqdn.h"
#include "lib/proxy.h"

char LICENSE[] SEC("license") = "GPL";

/* The node's programs, for a packet that is not the node's own (a pod's,
 * passing through). Only the L7 proxy's upstream connections to other
 * nodes and the world need anything: leaving, they are remembered; their
 * replies, arriving, go to the proxy's socket instead of the pod whose
 * address the connection uses. */
static __always_inline int host_forwarded(struct __sk_buff *skb, const struct endpoint_info *ep,
					  const struct tuple *t, __u8 dir)
{
	struct ct_key k4;
	struct ct6_key k6;
	struct ct_ref ck = {};
	struct ct_state st = {};

	if (t->proto != IPPROTO_TCP)
		return REASON_FORWARDED;
	if (dir == DIR_EGRESS && !mark_is(skb, MARK_FROM_PROXY))
		return REASON_FORWARDED;
	ck = ct_key_fill(t, ep->ep_id, dir, &k4, &k6);
	if (dir == DIR_EGRESS) {
		if (!ct_lookup_refresh(ck, t->tcp_closing, t->tcp_flags, &st))
			ct_create(ck, dir, 0, t->tcp_closing, 0, CT_F_REPLY_TO_PROXY);
		return REASON_FORWARDED;
	}
	if (!ct_lookup_refresh(ck, t->tcp_closing, t->tcp_flags, &st))
		return REASON_FORWARDED;
	if (st.flags & CT_F_REPLY_TO_PROXY)
		return proxy_reply(skb, t);
	if (st.proxy_port)
		return proxy_redirect(skb, t, st.proxy_port);
	return REASON_FORWARDED;
}

/* A new flow a pod's ingress rules send to a proxy. Its first packet is
 * re-injected (proxy_reinject); every later one must reach the proxy where
 * it enters the node, before routing: once the proxy holds a socket with
 * the flow's addresses, the stack's early demux would attach a forwarded
 * packet to it, and forwarding drops such a packet. So the flow's entry at
 * the entry point (the source pod's egress entry, or an uplink entry in the
 * orientation host_forwarded looks up) gets the proxy port. */
static __always_inline void proxy_at_entry(struct __sk_buff *skb, const struct tuple *t, __u16 proxy_port)
{
	struct endpoint_info *src = endpoint_lookup(skb->ingress_ifindex);
	struct ct_key k4;
	struct ct6_key k6;
	__u8 dir;

	if (!src)
		return;
	dir = (src->flags & EP_F_HOST) ? DIR_INGRESS : DIR_EGRESS;
	ct_set_proxy(ct_key_fill(t, src->ep_id, dir, &k4, &k6), dir, t->tcp_closing, proxy_port);
}

static __always_inline int verdict(struct __sk_buff *skb, __u8 dir, int host)
{
	struct endpoint_info *ep = endpoint_lookup(skb->ifindex);
	struct policy_verdict pv;
	struct ct_state st = {};
	struct tuple t = {};
	struct ct_key k4;
	struct ct6_key k6;
	struct ct_ref ck = {};
	const __be32 *remote = 0;
	__u32 set_id, gen, peer, fqdn_cookie;
	__u8 fv, ct_flags = 0;
	int rc, from_proxy;

	if (!ep)
		return -DROP_NO_ENDPOINT;

	rc = parse_packet(skb, &t);
	if (rc < 0)
		return rc;
	if (rc == PARSE_L3_ARP || rc == PARSE_LINK_CONTROL)
		return REASON_FORWARDED;
	if (rc == PARSE_L3_OTHER)
		return endpoint_enforced(ep, dir) ? -DROP_UNSUPPORTED_L3 : REASON_FORWARDED;
	if (host) {
		/* Only traffic the node itself sends or receives is the host's. */
		if (ipcache_identity(t.family, dir == DIR_EGRESS ? t.saddr : t.daddr) != IDENTITY_HOST)
			return host_forwarded(skb, ep, &t, dir);
	} else if (dir == DIR_EGRESS && !endpoint_owns(ep, t.family, t.saddr)) {
		flow_emit(skb, ep->ep_id, &t, dir, FLOW_VERDICT_DROPPED, DROP_SPOOFED_SOURCE, 0, 0);
		return -DROP_SPOOFED_SOURCE;
	}
	if (rc == PARSE_FRAGMENT)
		return endpoint_enforced(ep, dir) ? -DROP_FRAG_NOSUPPORT : REASON_FORWARDED;
	if (rc == PARSE_EXTHDR)
		return endpoint_enforced(ep, dir) ? -DROP_IPV6_EXTHDR : REASON_FORWARDED;
	if (t.icmp_err && icmp_error_related(skb, &t, ep->ep_id, dir))
		return REASON_FORWARDED;

	/* The L7 proxy's own upstream connection, to this endpoint: its
	 * L3/L4 policy applies (the source is the client's address), but the
	 * proxy has already applied the L7 rules, and the endpoint's replies
	 * belong to the proxy. */
	from_proxy = !host && dir == DIR_INGRESS && mark_is(skb, MARK_FROM_PROXY);

	ck = ct_key_fill(&t, ep->ep_id, dir, &k4, &k6);
	if (ct_lookup_refresh(ck, t.tcp_closing, t.tcp_flags, &st)) {
		if (host)
			return REASON_FORWARDED;
		if (dir == DIR_EGRESS) {
			if (st.flags & CT_F_REPLY_TO_PROXY)
				return proxy_reply(skb, &t);
			if (st.proxy_port)
				return proxy_redirect(skb, &t, st.proxy_port);
			return REASON_FORWARDED;
		}
		if (st.proxy_port && st.origin_dir == DIR_INGRESS && !from_proxy)
			return proxy_reinject(skb, st.proxy_port);
		return REASON_FORWARDED;
	}

	set_id = READ_ONCE_U32(ep->policy_set);
	gen = READ_ONCE_U32(ep->policy_gen);
	remote = dir == DIR_EGRESS ? t.daddr : t.saddr;
	peer = ipcache_identity(t.family, remote);
	pv = policy_decide(set_id, gen, endpoint_enforced(ep, dir), peer, dir, t.proto, t.dport);
	if (pv.reason == -DROP_POLICY && dir == DIR_EGRESS && (ep->flags & EP_F_FQDN)) {
		/* No rule for the peer's identity: an address a DNS answer
		 * taught this endpoint may still be allowed. Not cached: two
		 * addresses of one identity (world) differ here. */
		fqdn_cookie = fqdn_allowed(ep->ep_id, t.family, t.daddr, t.proto, t.dport);
		if (fqdn_cookie) {
			pv.reason = REASON_FORWARDED;
			pv.cookie = fqdn_cookie;
			pv.proxy_port = 0;
		}
	}
	if (pv.reason == -DROP_POLICY && (ep->flags & EP_F_IPBLOCK_PODS)) {
		/* No rule for the peer's identity: under
		 * --k8s-ipblock-selects-pods a NetworkPolicy ipBlock holds for
		 * a pod whose address is inside it, by the address's CIDR
		 * identity, and only through entries that say so (PODS). */
		__u32 cidr_id = ipcache_cidr_identity(t.family, remote);
		struct policy_verdict cv;

		if (cidr_id != peer) {
			cv = policy_decide(set_id, gen, endpoint_enforced(ep, dir), cidr_id, dir, t.proto, t.dport);
			if (cv.reason == REASON_FORWARDED && cv.pods)
				pv = cv;
		}
	}
	if (from_proxy)
		ct_flags = CT_F_REPLY_TO_PROXY;
	if (pv.reason != REASON_FORWARDED) {
		if (endpoint_audit(ep, dir)) {
			/* Audit: pass and track the flow; report what would have broken. */
			ct_create(ck, dir, pv.cookie, t.tcp_closing, 0, ct_flags);
			flow_emit(skb, ep->ep_id, &t, dir, FLOW_VERDICT_AUDIT, -pv.reason, pv.cookie, peer);
			return REASON_AUDIT;
		}
		flow_emit(skb, ep->ep_id, &t, dir, FLOW_VERDICT_DROPPED, -pv.reason, pv.cookie, peer);
		return pv.reason;
	}
	if (host || from_proxy)
		pv.proxy_port = 0; /* the host has no L7 rules; the proxy has checked its own */
	if (pv.proxy_port) {
		if (dir == DIR_EGRESS)
			rc = proxy_redirect(skb, &t, pv.proxy_port);
		else
			rc = skb->ingress_ifindex ? REASON_FORWARDED : -DROP_PROXY_UNAVAILABLE;
		if (rc < 0) {
			flow_emit(skb, ep->ep_id, &t, dir, FLOW_VERDICT_DROPPED, -rc, pv.cookie, peer);
			return rc;
		}
		if (dir == DIR_INGRESS)
			ct_flags = CT_F_REPLY_TO_PROXY;
	}
	ct_create(ck, dir, pv.cookie, t.tcp_closing, pv.proxy_port, ct_flags);
	fv = pv.proxy_port ? FLOW_VERDICT_REDIRECTED : FLOW_VERDICT_FORWARDED;
	flow_emit(skb, ep->ep_id, &t, dir, fv, REASON_FORWARDED, pv.cookie, peer);
	if (pv.proxy_port && dir == DIR_INGRESS) {
		proxy_at_entry(skb, &t, pv.proxy_port);
		return proxy_reinject(skb, pv.proxy_port);
	}
	return REASON_FORWARDED;
}

static __always_inline int finish(struct __sk_buff *skb, __u8 dir, int reason)
{
	if (reason == TC_ACT_REDIRECT) {
		metrics_count(REASON_FORWARDED, dir, skb->len);
		return TC_ACT_REDIRECT;
	}
	if (reason < 0) {
		metrics_count(-reason, dir, skb->len);
		return TC_ACT_SHOT;
	}
	metrics_count(reason == REASON_AUDIT ? REASON_AUDIT : REASON_FORWARDED, dir, skb->len);
	return TC_ACT_OK;
}

SEC("tcx/ingress")
int tc_from_endpoint(struct __sk_buff *skb)
{
	int rc;

	if (proxy_reinjected(skb, &rc))
		return rc < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	return finish(skb, DIR_EGRESS, verdict(skb, DIR_EGRESS, 0));
}

SEC("tcx/egress")
int tc_to_endpoint(struct __sk_buff *skb)
{
	return finish(skb, DIR_INGRESS, verdict(skb, DIR_INGRESS, 0));
}

SEC("tcx/ingress")
int tc_host_ingress(struct __sk_buff *skb)
{
	int rc;

	if (proxy_reinjected(skb, &rc))
		return rc < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	return finish(skb, DIR_INGRESS, verdict(skb, DIR_INGRESS, 1));
}

SEC("tcx/egress")
int tc_host_egress(struct __sk_buff *skb)
{
	return finish(skb, DIR_EGRESS, verdict(skb, DIR_EGRESS, 1));
}

/* The node netns's listener lookups (attached by palisade-ctrl, link pinned
 * as palisade_sk_lookup_link): a SYN that proxy_redirect handed to a
 * TIME_WAIT socket, which the kernel has just retired, goes to the proxy's
 * listener (lib/proxy.h). Every other lookup passes untouched. */
SEC("sk_lookup")
int sk_lookup_proxy(struct bpf_sk_lookup *ctx)
{
	struct proxy_tw_key k = {};
	struct bpf_sock *sk;
	__u32 *port, key;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	/* The verifier accepts context loads at a constant offset from the
	 * context only; the compiler would merge the two branches' last
	 * loads into one from a computed offset (a load at the end of one
	 * branch and the other's, "sunk" below them), which the empty asm
	 * at the end of the IPv6 branch keeps it from doing. */
	if (ctx->family == 2 /* AF_INET */) {
		k.family = ADDR_FAMILY_IPV4;
		k.saddr[0] = ctx->remote_ip4;
		k.daddr[0] = ctx->local_ip4;
	} else if (ctx->family == 10 /* AF_INET6 */) {
		k.family = ADDR_FAMILY_IPV6;
		k.saddr[0] = ctx->remote_ip6[0];
		k.saddr[1] = ctx->remote_ip6[1];
		k.saddr[2] = ctx->remote_ip6[2];
		k.saddr[3] = ctx->remote_ip6[3];
		k.daddr[0] = ctx->local_ip6[0];
		k.daddr[1] = ctx->local_ip6[1];
		k.daddr[2] = ctx->local_ip6[2];
		k.daddr[3] = ctx->local_ip6[3];
		asm volatile("" ::: "memory");
	} else {
		return SK_PASS;
	}
	k.sport = ctx->remote_port;
	k.dport = bpf_htons((__u16)ctx->local_port);
	port = bpf_map_lookup_elem(&palisade_proxy_tw_v2, &k);
	if (!port)
		return SK_PASS;
	key = *port | (k.family == ADDR_FAMILY_IPV6 ? PROXY_LISTENER_V6 : 0);
	sk = bpf_map_lookup_elem(&palisade_proxy_listeners_v1, &key);
	bpf_map_delete_elem(&palisade_proxy_tw_v2, &k);
	if (!sk)
		return SK_PASS;
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}
