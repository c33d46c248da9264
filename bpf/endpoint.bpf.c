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
 * entry. */
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

static __always_inline int verdict(struct __sk_buff *skb, __u8 dir, int host)
{
	struct endpoint_info *ep = endpoint_lookup(skb->ifindex);
	struct policy_verdict pv;
	struct tuple t;
	struct ct_key ck = {};
	__u32 set_id, gen, peer, fqdn_cookie;
	__u16 proxy_port = 0;
	__u8 fv;
	int rc;

	if (!ep)
		return -DROP_NO_ENDPOINT;

	rc = parse_packet(skb, &t);
	if (rc < 0)
		return rc;
	if (rc == PARSE_L3_ARP)
		return REASON_FORWARDED;
	if (rc == PARSE_L3_OTHER)
		return endpoint_enforced(ep, dir) ? -DROP_UNSUPPORTED_L3 : REASON_FORWARDED;
	if (host) {
		/* Only traffic the node itself sends or receives is the host's. */
		if (ipcache_identity_v4(dir == DIR_EGRESS ? t.saddr : t.daddr) != IDENTITY_HOST)
			return REASON_FORWARDED;
	} else if (dir == DIR_EGRESS && t.saddr != ep->ipv4) {
		ck.ep_id = ep->ep_id;
		flow_emit(&ck, skb->ifindex, skb->len, t.saddr, t.daddr, t.sport, t.dport, t.proto, dir,
			  FLOW_VERDICT_DROPPED, t.tcp_flags, DROP_SPOOFED_SOURCE, 0, 0);
		return -DROP_SPOOFED_SOURCE;
	}
	if (rc == PARSE_FRAGMENT)
		return endpoint_enforced(ep, dir) ? -DROP_FRAG_NOSUPPORT : REASON_FORWARDED;

	ck.ep_id = ep->ep_id;
	ck.proto = t.proto;
	if (dir == DIR_EGRESS) {
		ck.local_ip = t.saddr;
		ck.remote_ip = t.daddr;
		ck.local_port = t.ct_sport;
		ck.remote_port = t.ct_dport;
	} else {
		ck.local_ip = t.daddr;
		ck.remote_ip = t.saddr;
		ck.local_port = t.ct_dport;
		ck.remote_port = t.ct_sport;
	}
	if (ct_lookup_refresh(&ck, t.tcp_closing, &proxy_port)) {
		if (proxy_port && dir == DIR_EGRESS && !host)
			return proxy_redirect(skb, &t, proxy_port);
		return REASON_FORWARDED;
	}

	set_id = READ_ONCE_U32(ep->policy_set);
	gen = READ_ONCE_U32(ep->policy_gen);
	peer = ipcache_identity_v4(ck.remote_ip);
	pv = policy_decide(set_id, gen, endpoint_enforced(ep, dir), peer, dir, t.proto, t.dport);
	if (pv.reason == -DROP_POLICY && dir == DIR_EGRESS && (ep->flags & EP_F_FQDN)) {
		/* No rule for the peer's identity: an address a DNS answer
		 * taught this endpoint may still be allowed. Not cached: two
		 * addresses of one identity (world) differ here. */
		fqdn_cookie = fqdn_allowed(ep->ep_id, t.daddr, t.proto, t.dport);
		if (fqdn_cookie) {
			pv.reason = REASON_FORWARDED;
			pv.cookie = fqdn_cookie;
			pv.proxy_port = 0;
		}
	}
	if (pv.reason != REASON_FORWARDED) {
		if (endpoint_audit(ep, dir)) {
			/* Audit: pass and track the flow; report what would have broken. */
			ct_create(&ck, dir, pv.cookie, t.tcp_closing, 0);
			flow_emit(&ck, skb->ifindex, skb->len, t.saddr, t.daddr, t.sport, t.dport, t.proto, dir,
				  FLOW_VERDICT_AUDIT, t.tcp_flags, -pv.reason, pv.cookie, peer);
			return REASON_AUDIT;
		}
		flow_emit(&ck, skb->ifindex, skb->len, t.saddr, t.daddr, t.sport, t.dport, t.proto, dir,
			  FLOW_VERDICT_DROPPED, t.tcp_flags, -pv.reason, pv.cookie, peer);
		return pv.reason;
	}
	if (dir != DIR_EGRESS || host)
		pv.proxy_port = 0; /* bpf_sk_assign works at tc ingress only */
	if (pv.proxy_port) {
		rc = proxy_redirect(skb, &t, pv.proxy_port);
		if (rc < 0) {
			flow_emit(&ck, skb->ifindex, skb->len, t.saddr, t.daddr, t.sport, t.dport, t.proto, dir,
				  FLOW_VERDICT_DROPPED, t.tcp_flags, -rc, pv.cookie, peer);
			return rc;
		}
	}
	ct_create(&ck, dir, pv.cookie, t.tcp_closing, pv.proxy_port);
	fv = pv.proxy_port ? FLOW_VERDICT_REDIRECTED : FLOW_VERDICT_FORWARDED;
	flow_emit(&ck, skb->ifindex, skb->len, t.saddr, t.daddr, t.sport, t.dport, t.proto, dir, fv, t.tcp_flags,
		  REASON_FORWARDED, pv.cookie, peer);
	return REASON_FORWARDED;
}

static __always_inline int finish(struct __sk_buff *skb, __u8 dir, int reason)
{
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
	return finish(skb, DIR_INGRESS, verdict(skb, DIR_INGRESS, 1));
}

SEC("tcx/egress")
int tc_host_egress(struct __sk_buff *skb)
{
	return finish(skb, DIR_EGRESS, verdict(skb, DIR_EGRESS, 1));
}
