// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * The lab's GLB director at kernel speed: at tc ingress of the director's interface, a client's
 * IPv4 packet for a VIP is encapsulated in GUE with GLB's private data and sent to the proxy the
 * rendezvous table picks, its further proxies as hops, exactly as `glb-lab director` (NFQUEUE, in
 * userspace) does: the same flow hash, the same ranking, the same bytes but for the outer UDP
 * checksum, which is zero here (allowed for UDP over IPv4, and what a hardware director sends).
 * LabDirectorTests binds the two by running both on the same flows and tables.
 *
 * It exists so that a benchmark can push a real bulk TCP flow through GUE: the client must send
 * MTU-sized frames (TSO and GSO off), as a NIC delivers them; a GSO packet is left to the stack.
 * IPv6 clients are left to the stack too (to `glb-lab director`, if it runs).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lab_director_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define GUE_PORT 19523

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ld_config);
} ld_config SEC(".maps");

/* The VIPs (network order): a packet for one of them is encapsulated. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u8);
} ld_vips SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ld_counters);
} ld_counters SEC(".maps");

/* Outer IPv4, UDP, GUE and GLB's private data, built here before it is stored in the packet. */
struct ld_header {
    struct iphdr ip;
    struct udphdr udp;
    __u8 gue_hlen;      /* version 0, control 0, header length in words (private data) */
    __u8 gue_protocol;  /* IPPROTO_IPIP: the inner packet is IPv4 */
    __u16 gue_flags;
    __u16 private_type; /* 0: GLB's */
    __u8 next_hop;
    __u8 hop_count;
    __u32 hops[LD_MAX_HOPS - 1];
};
_Static_assert(sizeof(struct ld_header) == 36 + 4 * (LD_MAX_HOPS - 1), "the wire's layout, no padding");

/* A per-CPU scratch copy: the hop list is indexed by a loop counter, which map values allow. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ld_header);
} ld_scratch SEC(".maps");

/* The client flow as RendezvousTable.flowHash sees it (host order). */
struct flow {
    __u32 source;
    __u32 destination;
    __u16 source_port;
    __u16 destination_port;
};

/* splitmix64's finaliser. */
static __always_inline __u64 mix(__u64 z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* FNV-1a over a word's bytes, least significant first. */
static __always_inline __u64 fnv_word(__u64 hash, __u64 word)
{
#pragma unroll
    for (int shift = 0; shift < 64; shift += 8)
        hash = (hash ^ ((word >> shift) & 0xff)) * 0x100000001b3ULL;
    return hash;
}

/* RendezvousTable.flowHash: an IPv4 address is the low 32 bits of its 128-bit form. */
static __always_inline __u64 flow_hash(const struct flow *flow)
{
    __u64 hash = 0xcbf29ce484222325ULL;
    hash = fnv_word(hash, 0);
    hash = fnv_word(hash, flow->source);
    hash = fnv_word(hash, 0);
    hash = fnv_word(hash, flow->destination);
    hash = fnv_word(hash, (__u64)flow->source_port << 16 | flow->destination_port);
    return mix(hash);
}

/* Whether proxy a ranks before proxy b for this flow: active ones first, then the higher weight. */
static __always_inline int ranks_before(const struct ld_config *config, __u32 a, __u32 b, __u64 hash)
{
    if (a >= LD_MAX_PROXIES || b >= LD_MAX_PROXIES)
        return 0;
    if (config->active[a] != config->active[b])
        return config->active[a] != 0;
    return mix(hash ^ mix(bpf_ntohl(config->proxies[a]))) > mix(hash ^ mix(bpf_ntohl(config->proxies[b])));
}

/* The ranking so far, between bpf_loop's rounds (one round per rank: verified once, however many). */
struct ranking {
    __u64 hash;
    __u32 taken; /* bit i: proxy i has its rank */
    __u32 found;
};

/* Round `rank`: the best proxy without a rank yet, as destination (rank 0) or as the next hop. */
static long rank_next(__u32 rank, void *data)
{
    struct ranking *ranking = data;
    __u32 zero = 0;
    const struct ld_config *config = bpf_map_lookup_elem(&ld_config, &zero);
    struct ld_header *header = bpf_map_lookup_elem(&ld_scratch, &zero);
    if (!config || !header)
        return 1;
    __u32 best = LD_MAX_PROXIES;
    for (__u32 i = 0; i < LD_MAX_PROXIES && i < config->proxy_count; i++) {
        if (ranking->taken & (1U << i))
            continue;
        if (best == LD_MAX_PROXIES || ranks_before(config, i, best, ranking->hash))
            best = i;
    }
    if (best >= LD_MAX_PROXIES)
        return 1;
    ranking->taken |= 1U << best;
    ranking->found++;
    if (rank == 0)
        header->ip.daddr = config->proxies[best];
    else if (rank - 1 < LD_MAX_HOPS - 1)
        header->hops[rank - 1] = config->proxies[best];
    return 0;
}

/* RendezvousTable.route: the proxies in rank order, the first as destination, the rest as hops.
 * Returns how many there are (0 for an empty table). */
static __always_inline __u32 route(const struct ld_config *config, __u64 hash)
{
    __u32 count = config->hops < config->proxy_count ? config->hops : config->proxy_count;
    if (count > LD_MAX_HOPS)
        count = LD_MAX_HOPS;
    struct ranking ranking = {.hash = hash, .taken = 0, .found = 0};
    bpf_loop(count, rank_next, &ranking, 0);
    return ranking.found == count ? count : 0;
}

static __always_inline __u16 ipv4_checksum(const struct iphdr *ip)
{
    const __u16 *words = (const __u16 *)ip;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < 10; i++)
        sum += words[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

/* The outer headers around an inner packet of inner_length bytes, the hops already in place. */
static __always_inline __u32 fill_header(struct ld_header *header, const struct ld_config *config, __u32 hop_count,
                                         __u64 hash, __u32 inner_length)
{
    __u32 length = sizeof(struct iphdr) + sizeof(struct udphdr) + 8 + 4 * hop_count;
    header->ip.version = 4;
    header->ip.ihl = 5;
    header->ip.tos = 0;
    header->ip.tot_len = bpf_htons(length + inner_length);
    header->ip.id = 0;
    header->ip.frag_off = bpf_htons(0x4000); /* DF, as glb-lab director sends */
    header->ip.ttl = 64;
    header->ip.protocol = IPPROTO_UDP;
    header->ip.check = 0;
    header->ip.saddr = config->self;
    header->ip.check = ipv4_checksum(&header->ip);
    header->udp.source = bpf_htons((__u16)hash | 0x8000);
    header->udp.dest = bpf_htons(GUE_PORT);
    header->udp.len = bpf_htons(length - sizeof(struct iphdr) + inner_length);
    header->udp.check = 0;
    header->gue_hlen = 1 + hop_count;
    header->gue_protocol = IPPROTO_IPIP;
    header->gue_flags = 0;
    header->private_type = 0;
    header->next_hop = 0;
    header->hop_count = hop_count;
    return length;
}

static __always_inline void count(__u32 field)
{
    __u32 zero = 0;
    struct ld_counters *counters = bpf_map_lookup_elem(&ld_counters, &zero);
    if (!counters)
        return;
    if (field == 0)
        counters->encapsulated++;
    else if (field == 1)
        counters->passed++;
    else if (field == 2)
        counters->segmented++;
    else
        counters->malformed++;
}

/* The client flow of an IPv4 packet for a VIP: 0, or -1 when it is not one (left to the stack),
 * -2 when it is one but malformed (its total length runs past the frame or below its header). */
static __always_inline int read_flow(struct __sk_buff *skb, struct flow *flow, __u32 *ip_length)
{
    struct iphdr ip;
    __u16 proto;
    if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0 || proto != bpf_htons(ETH_P_IP))
        return -1;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.version != 4)
        return -1;
    if (!bpf_map_lookup_elem(&ld_vips, &ip.daddr))
        return -1;
    __u32 length = bpf_ntohs(ip.tot_len);
    if (ip.ihl < 5 || length < 24 || length < ip.ihl * 4 || length > skb->len - ETH_HLEN)
        return -2;
    __u16 ports[2] = {0, 0};
    if (length >= ip.ihl * 4 + 4)
        bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, ports, sizeof(ports));
    flow->source = bpf_ntohl(ip.saddr);
    flow->destination = bpf_ntohl(ip.daddr);
    flow->source_port = bpf_ntohs(ports[0]);
    flow->destination_port = bpf_ntohs(ports[1]);
    *ip_length = length;
    return 0;
}

SEC("tc")
int glb_director(struct __sk_buff *skb)
{
    struct flow flow;
    __u32 ip_length = 0, zero = 0;
    int read = read_flow(skb, &flow, &ip_length);
    if (read == -1) {
        count(1);
        return TC_ACT_OK;
    }
    if (read < 0) {
        count(3);
        return TC_ACT_SHOT;
    }
    if (skb->gso_segs > 1) {
        count(2);
        return TC_ACT_OK;
    }
    struct ld_config *config = bpf_map_lookup_elem(&ld_config, &zero);
    struct ld_header *header = bpf_map_lookup_elem(&ld_scratch, &zero);
    if (!config || !header)
        return TC_ACT_OK;
    __u64 hash = flow_hash(&flow);
    __u32 proxies = route(config, hash);
    if (proxies == 0)
        return TC_ACT_SHOT;
    __u32 length = fill_header(header, config, (proxies - 1) & (LD_MAX_HOPS - 1), hash, ip_length);
    /* Ethernet padding behind a short packet is not the packet's: the NFQUEUE director never sees it. */
    if (skb->len > ETH_HLEN + ip_length && bpf_skb_change_tail(skb, ETH_HLEN + ip_length, 0) < 0)
        return TC_ACT_SHOT;
    if (length > sizeof(*header) ||
        bpf_skb_adjust_room(skb, length, BPF_ADJ_ROOM_MAC,
                            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) < 0)
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, ETH_HLEN, header, length, 0) < 0)
        return TC_ACT_SHOT;
    count(0);
    /* Out of the interface it came in on, the Ethernet header the neighbour's. */
    return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
}
