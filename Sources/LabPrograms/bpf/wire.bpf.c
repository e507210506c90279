// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * The lab's wire into a proxy, as a NIC's receive path hands it frames: on the switch's port
 * from a sender, every frame to the proxy's link address is redirected (XDP_REDIRECT) into the
 * switch's port toward the proxy, so the proxy's veth receives XDP frames in pages with XDP's
 * headroom, as a NIC's ring holds them, not skbs it must copy into such pages before its own XDP
 * program may run. That copy (and the sender's skb) is then spent on the sender's CPU, where a
 * NIC's DMA would be. Everything else goes on to the bridge (XDP_PASS).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "lab_director_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ld_wire_target); /* the switch's port toward the proxy */
} wire_target SEC(".maps");

SEC("xdp")
int wire(struct xdp_md *ctx)
{
    struct ethhdr *eth = (void *)(long)ctx->data;
    if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
        return XDP_PASS;
    __u32 zero = 0;
    const struct ld_wire_target *target = bpf_map_lookup_elem(&wire_target, &zero);
    if (!target || !target->ifindex)
        return XDP_PASS;
    __u8 differs = 0;
    for (int index = 0; index < ETH_ALEN; index++)
        differs |= eth->h_dest[index] ^ target->mac[index];
    return differs ? XDP_PASS : bpf_redirect(target->ifindex, 0);
}
