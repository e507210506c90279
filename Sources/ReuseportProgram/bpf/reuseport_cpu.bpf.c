// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * bindkeeper's socket groups (`shards=N`): N listening sockets under one address and port, each
 * served by one HAProxy thread on one CPU. The kernel would pick a member by the flow's hash, so
 * a SYN received on CPU 0 would as often be queued for the thread on CPU 1; this program picks
 * the member of the CPU that received the SYN instead (CPU K serves member K mod N), so a
 * connection is accepted, read and answered where its packets arrive. A member that is gone
 * (closed, its slot empty) leaves the choice to the kernel's hash among those that remain.
 *
 * A group may have a second generation of N sockets in the same SO_REUSEPORT group, served by a
 * candidate (a canary): it takes `candidate_percent` of new connections, chosen by the flow's
 * hash so that a SYN and the ACK of its cookie land on the same generation. Connections queued on
 * a listener that closes (a candidate rolled back, a generation replaced) are moved to the served
 * generation (the migrate entry point, Linux 5.14), never to the candidate.
 *
 * A slot left empty (a served member closed by all its holders) leaves the choice to the kernel's
 * hash over every listener of the group, a candidate's included: only a group's release empties
 * the served slots, and whoever holds a member can replace this program anyway (the threat model).
 *
 * The socket array is the group's for its whole life: generation G's member K stays at G * N + K,
 * and a change of steering is a new program on the same array (a socket is in one array at most).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The group's size, the generation served, and the other generation's share of new connections
 * (0 to 100), set by the loader before the kernel verifies the program. */
volatile const __u32 member_count = 1;
volatile const __u32 served_generation = 0;
volatile const __u32 candidate_percent = 0;

/* Member K of generation G at key G * N + K, placed there by the broker once it listens. */
struct {
    __uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
    __uint(max_entries, 512);
    __type(key, __u32);
    __type(value, __u64);
} members SEC(".maps");

static __always_inline int select_member(struct sk_reuseport_md *md, int migrating)
{
    __u32 count = member_count;
    if (count == 0 || count > 256)
        return SK_PASS;
    __u32 generation = served_generation & 1;
    if (!migrating && md->hash % 100 < candidate_percent)
        generation ^= 1;
    __u32 key = generation * count + bpf_get_smp_processor_id() % count;
    /* On failure nothing was selected: SK_PASS lets the kernel hash over the group. */
    bpf_sk_select_reuseport(md, &members, &key, 0);
    return SK_PASS;
}

SEC("sk_reuseport")
int select_by_cpu(struct sk_reuseport_md *md)
{
    return select_member(md, 0);
}

SEC("sk_reuseport/migrate")
int select_or_migrate(struct sk_reuseport_md *md)
{
    return select_member(md, md->migrating_sk != 0);
}
