// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * bindkeeper's socket groups (`shards=N`): N listening sockets under one address and port, each
 * served by one HAProxy thread on one CPU. The kernel would pick a member by the flow's hash, so
 * a SYN received on CPU 0 would as often be queued for the thread on CPU 1; this program picks
 * the member of the CPU that received the SYN instead (CPU K serves member K mod N), so a
 * connection is accepted, read and answered where its packets arrive. A member that is gone
 * (closed, its slot empty) leaves the choice to the kernel's hash among those that remain.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The group's size, set by the loader before the kernel verifies the program. */
volatile const __u32 member_count = 1;

/* Member K's socket at key K, placed there by the broker once it listens. */
struct {
    __uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u64);
} members SEC(".maps");

SEC("sk_reuseport")
int select_by_cpu(struct sk_reuseport_md *md)
{
    __u32 count = member_count;
    if (count == 0)
        return SK_PASS;
    __u32 key = bpf_get_smp_processor_id() % count;
    /* On failure nothing was selected: SK_PASS lets the kernel hash over the group. */
    bpf_sk_select_reuseport(md, &members, &key, 0);
    return SK_PASS;
}
