/* metrics.h: per-CPU packet/byte counters by {reason, direction}. */
#ifndef PALISADE_METRICS_H
#define PALISADE_METRICS_H

#include "common.h"
#include "drop_reasons.h"

/* One counter pair per (reason index, direction); index = reason*2 + dir. */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* palisade_metrics_v1: key u32 index (reason*2 + direction), value
 * metrics_value, per CPU. Written only by the datapath; read by
 * palisade-ctrl (status, /metrics) which sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX * 2);
	__type(key, __u32);
	__type(value, struct metrics_value);
} palisade_metrics_v1 SEC(".maps");

static __always_inline void metrics_count(int reason, __u8 dir, __u32 bytes)
{
	__u32 idx = (__u32)(reason - REASON_BASE) * 2 + (dir & 1);
	struct metrics_value *v = bpf_map_lookup_elem(&palisade_metrics_v1, &idx);

	if (v) {
		v->packets += 1;
		v->bytes += bytes;
	}
}

#endif
