// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * The yardstick's floor: programs that decide nothing. `glb-lab program-cost` takes every
 * program's cost above these, so that what a test run costs anyway (the syscall, the copy of the
 * frame in and out, the skb or XDP buffer around it) is not counted as the program's.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}

SEC("xdp")
int empty_xdp(struct xdp_md *ctx)
{
    return XDP_PASS;
}
