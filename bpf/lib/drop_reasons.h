/* drop_reasons.h: the one table of verdict reasons. Every counter, flow and
 * CLI line decodes reasons through the Rust mirror of this table
 * (palisade_bpf::Reason), which a test keeps in sync.
 *
 * Internal helpers return either a TC action (>= 0) or -DROP_*; drop codes
 * start at 130 (as Cilium's do) so they can never collide with a TC_ACT_*
 * value. The metrics map is indexed by (code - REASON_BASE), with index 0
 * meaning "forwarded". */
#ifndef PALISADE_DROP_REASONS_H
#define PALISADE_DROP_REASONS_H

#define REASON_BASE 128
#define REASON_FORWARDED 128            /* index 0: packet passed */
#define DROP_POLICY 133                 /* no allow rule in an enforced direction */
#define DROP_POLICY_DENY 134            /* an explicit deny rule matched */
#define DROP_INVALID 135                /* malformed: short or inconsistent headers */
#define DROP_FRAG_NOSUPPORT 136         /* IPv4 or IPv6 fragment in an enforced direction */
#define DROP_SPOOFED_SOURCE 137         /* source IP is not the endpoint's */
#define DROP_UNSUPPORTED_L3 138         /* not IPv4/IPv6/ARP in an enforced direction */
#define DROP_NO_ENDPOINT 139            /* program on an interface with no endpoint entry */
#define REASON_AUDIT 140                /* policy would drop; passed in audit mode (not a drop) */
#define DROP_PROXY_UNAVAILABLE 141      /* a rule redirects to a proxy that has no socket (down or restarting) */
#define DROP_IPV6_EXTHDR 142            /* IPv6 routing header with segments left, or a chain longer than we walk, in an enforced direction */
#define REASON_MAX 16                   /* size of the reason axis of the metrics map */

#endif
