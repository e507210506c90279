// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * second-chance's decision in front of the NFQUEUE rule: at tc ingress, and before an skb exists
 * in XDP where the driver runs it natively.
 *
 * The same decision as SecondChanceCore's Decider (glb-redirect's order inside the trust
 * boundary), for what can be decided here exactly as the daemon would: inner IPv4 and IPv6 TCP.
 * Everything else, and anything uncertain, leaves unchanged (TC_ACT_OK) and reaches the NFQUEUE
 * rule, where the daemon decides it. The differential test (FastPathParityTests) runs both
 * decisions on the same packets.
 *
 *   malformed GUE, an outsider, too many hops   -> dropped, counted
 *   a peer on an interface its route back does
 *   not leave by (strict reverse path)         -> dropped, counted (netfilter judges where the
 *                                                 daemon cannot: policy routing)
 *   SYN for a listener the responder serves     -> answered here with the kernel's cookie
 *   SYN                                         -> local
 *   a socket in any state but LISTEN            -> local
 *   LISTEN and a cookie the kernel accepts      -> local
 *   no hops left                                -> local
 *   next hop: this host                         -> local
 *   next hop: an allowed proxy                  -> rewritten and sent to it (bpf_fib_lookup)
 *   next hop: anything else                     -> dropped, counted
 *   local: an inner destination this host owns, a source that is not martian, or dropped;
 *          decapsulated here and delivered on the interface it arrived on.
 *
 * One decision for both entry points, in named steps (process_outer, process_glb,
 * process_inner, classify) that conclude a verdict; each entry point acts on it in one switch.
 * XDP decides what it can exactly as tc would (drops; local packets, decapsulated in place so
 * that the inner flow meets GRO and the stack once; with FP_F_XDP_FORWARD, forwards and the
 * responder's answers sent back out where they arrived) and passes the rest on unchanged and
 * uncounted (what goes up, what it cannot send): tc then decides it, as it does without XDP.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fast_path_abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Two slots of the configuration and the index of the one in force: the daemon writes the other
 * slot whole, then switches the index (one aligned word), so a packet reads one configuration
 * from its first field to its last, never half of an update. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, struct fp_config);
} fp_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} fp_config_slot SEC(".maps");

/* --allow-source and --allow-hop. */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_PREFIXES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip4_prefix);
    __type(value, __u8);
} fp_sources SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_PREFIXES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip4_prefix);
    __type(value, __u8);
} fp_hops SEC(".maps");

/* The interfaces the routes back to the peers leave by (fast_path_abi.h, fp_reverse_path). */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_ROUTES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip4_prefix);
    __type(value, struct fp_reverse_path);
} fp_reverse4 SEC(".maps");

/* This host's addresses, from the daemon's rtnetlink watcher: each one exactly (a hash, for the
 * look-ups every packet makes), and its local routes (ranges, as AnyIP's `local 198.19.0.0/24`
 * makes) in a trie, consulted only when fp_local_ranges says it holds any. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, FP_MAX_ADDRESSES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, __u32);
    __type(value, __u8);
} fp_hosts4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, FP_MAX_ADDRESSES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct in6_addr);
    __type(value, __u8);
} fp_hosts6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct fp_local_ranges);
} fp_local_ranges SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_ADDRESSES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip4_prefix);
    __type(value, __u8);
} fp_local4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_ADDRESSES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip6_prefix);
    __type(value, __u8);
} fp_local6 SEC(".maps");

/* The listeners the SYN-cookie responder serves (the daemon's listener monitor decides), and
 * their counts. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, FP_MAX_LISTENERS);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_listener_key);
    __type(value, struct fp_listener);
} fp_listeners SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, FP_MAX_LISTENERS);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_listener_key);
    __type(value, struct fp_listener_counts);
} fp_listen_count SEC(".maps");

/* Shared by the CPUs, so the pass interval is the listener's whichever CPU its SYNs arrive on (a
 * per-CPU value read on one CPU needs bpf_map_lookup_percpu_elem, Linux 5.19). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, FP_MAX_LISTENERS);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_listener_key);
    __type(value, struct fp_listener_pass);
} fp_listen_pass SEC(".maps");

/* How a SYN-ACK reaches a client: the main table's routes, with their MSS (FP_MAX_ROUTES). */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_ROUTES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip4_prefix);
    __type(value, struct fp_reply_route);
} fp_reply4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, FP_MAX_ROUTES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct fp_ip6_prefix);
    __type(value, struct fp_reply_route);
} fp_reply6 SEC(".maps");

#define SCRATCH 96 /* the longest reply frame: Ethernet, IPv6, TCP with 20 bytes of options */

/* The XDP responder's scratch, one per CPU (XDP runs in softirq, one packet at a time on a CPU;
 * only a BPF_PROG_TEST_RUN of the program, which a softirq may interrupt, could see it
 * overwritten): its stack has no room left for it. Nothing in it outlives a packet. */
struct fp_scratch_bytes {
    __u8 bytes[SCRATCH];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct fp_scratch_bytes);
} fp_scratch SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct fp_counter_block);
} fp_counters SEC(".maps");

/* GUE's header (draft-ietf-intarea-gue, variant 0): version and control flag, hlen (the words
 * of optional fields and private data after it), the inner protocol, flags. */
struct gue_header {
    __u8 version_control_hlen;
    __u8 protocol;
    __be16 flags;
};

/* GLB's private data (glb-director's glb_gue_hdr): a type, the index of the next hop and the
 * count of hops, whose IPv4 addresses follow. */
struct glb_private {
    __be16 type;
    __u8 next_hop;
    __u8 hop_count;
};

/* What every GUE packet from a director carries after its Ethernet header, hops following: each
 * member at its natural alignment, so none needs packing (and none is read a byte at a time). */
struct outer_headers {
    struct iphdr ip; /* no options: a packet with them goes up */
    struct udphdr udp;
    struct gue_header gue;
    struct glb_private glb;
};
_Static_assert(sizeof(struct outer_headers) == 36, "GLB's outer headers: IPv4, UDP, GUE, private data");

#define ETH_LENGTH sizeof(struct ethhdr)
#define OUTER_IP_LENGTH sizeof(struct iphdr)
#define UDP_OFFSET (ETH_LENGTH + OUTER_IP_LENGTH)
#define HOPS_OFFSET (ETH_LENGTH + sizeof(struct outer_headers))
#define GUE_VERSION_MASK 0xc0
#define GUE_CONTROL 0x20
/* hlen is 5 bits: at most 31 words of private data, so 30 hops. */
#define MAX_HLEN 31
/* The most of a frame a decision reads in place: the outer headers with 30 hops, an inner IPv6
 * header and TCP's fixed header (options are copied out, bpf_skb_load_bytes). */
#define HEADERS_MAX (HOPS_OFFSET + MAX_HLEN * 4 + 40 + 20)
_Static_assert(HEADERS_MAX <= 0xff, "an offset within the headers fits a byte's mask");

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* The configuration in force (fp_config_slot); NULL only if the maps could not be read. */
static __always_inline const struct fp_config *current_config(void)
{
    __u32 zero = 0;
    const __u32 *slot = bpf_map_lookup_elem(&fp_config_slot, &zero);
    if (!slot)
        return NULL;
    __u32 index = *slot & 1;
    return bpf_map_lookup_elem(&fp_config, &index);
}

static __always_inline void count(enum fp_counter slot)
{
    __u32 zero = 0;
    struct fp_counter_block *block = bpf_map_lookup_elem(&fp_counters, &zero);
    if (block && slot < FP_COUNTER_COUNT)
        block->slots[slot] += 1;
}

/* A decided packet: the total and its reason, in one look-up. */
static __always_inline void count_decided(enum fp_counter reason)
{
    __u32 zero = 0;
    struct fp_counter_block *block = bpf_map_lookup_elem(&fp_counters, &zero);
    if (!block)
        return;
    block->slots[FP_TOTAL] += 1;
    if (reason < FP_COUNTER_COUNT)
        block->slots[reason] += 1;
}

static __always_inline int up(enum fp_counter reason)
{
    count(reason);
    return TC_ACT_OK;
}

static __always_inline int drop(enum fp_counter reason)
{
    count_decided(reason);
    return TC_ACT_SHOT;
}

static __always_inline __u16 fold(__u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

/* The folded ones' complement sum of an IPv4 header without options: 0xffff where its checksum is
 * right. Ten words added here cost less than a helper call; the sum does not depend on the byte
 * order the words are read in (RFC 1071), so it is stored back as read. */
static __always_inline __u16 ip4_header_sum(const struct iphdr *ip)
{
    const __u16 *words = (const __u16 *)ip;
    __u32 sum = 0;
#pragma unroll
    for (int index = 0; index < (int)sizeof(struct iphdr) / 2; index++)
        sum += words[index];
    return fold(sum);
}

static __always_inline int in_prefixes(void *trie, __u32 address)
{
    struct fp_ip4_prefix key = { .prefix_length = 32, .address = address };
    return bpf_map_lookup_elem(trie, &key) != NULL;
}

/* Whether fp_local4 (ipv6: fp_local6) holds a local route. */
static __always_inline int local_ranges(int ipv6)
{
    __u32 zero = 0;
    const struct fp_local_ranges *ranges = bpf_map_lookup_elem(&fp_local_ranges, &zero);
    return ranges && (ipv6 ? ranges->ipv6 : ranges->ipv4);
}

/* fp_hosts4's flags for an address, 0 where it has none. */
static __always_inline __u8 host4(__u32 address)
{
    const __u8 *flags = bpf_map_lookup_elem(&fp_hosts4, &address);
    return flags ? *flags : 0;
}

/* FP_LOCAL_OWN or FP_LOCAL_DELIVERABLE for an address of this host's, else 0, given its fp_hosts4
 * flags: the address itself, else a local route that holds it. An address is never also a
 * range's (a range's /32 is the address, more specific), so the order is the trie's own. */
static __always_inline __u8 local4_of(__u32 address, __u8 flags)
{
    __u8 kind = flags & (FP_LOCAL_OWN | FP_LOCAL_DELIVERABLE);
    if (kind || !local_ranges(0))
        return kind;
    struct fp_ip4_prefix key = { .prefix_length = 32, .address = address };
    const __u8 *range = bpf_map_lookup_elem(&fp_local4, &key);
    return range ? *range : 0;
}

static __always_inline __u8 local4(__u32 address)
{
    return local4_of(address, host4(address));
}

static __always_inline __u8 local6(const struct in6_addr *address)
{
    struct in6_addr exact;
    __builtin_memcpy(&exact, address, 16);
    const __u8 *kind = bpf_map_lookup_elem(&fp_hosts6, &exact);
    if (kind)
        return *kind;
    if (!local_ranges(1))
        return 0;
    /* Filled in field by field: an initializer with a non-zero field makes clang keep a copy in
     * .rodata, a data section without variables whose BTF Linux 5.10 refuses (and with
     * it the global function below: it would be verified as a static one, past the limit). */
    struct fp_ip6_prefix key;
    key.prefix_length = 128;
    __builtin_memcpy(key.address, address, 16);
    kind = bpf_map_lookup_elem(&fp_local6, &key);
    return kind ? *kind : 0;
}

/* LocalAddresses.owns: this host's own, not merely routed into the sockets' namespace. */
static __always_inline int owns4(__u32 address)
{
    return local4(address) == FP_LOCAL_OWN;
}

static __always_inline int owns6(const struct in6_addr *address)
{
    return local6(address) == FP_LOCAL_OWN;
}

/* ReversePaths.check: 0 when the route back to `source` leaves by `ifindex`, FP_REFUSED_REVERSE_PATH
 * when it does not (or there is none), FP_UP_REVERSE_PATH_UNCHECKED when netfilter must judge. */
static __always_inline enum fp_counter reverse_path(__u32 source, __u32 ifindex)
{
    struct fp_ip4_prefix key = { .prefix_length = 32, .address = source };
    const struct fp_reverse_path *way = bpf_map_lookup_elem(&fp_reverse4, &key);
    if (!way || way->ifindex[0] == FP_REVERSE_UNCHECKED)
        return FP_UP_REVERSE_PATH_UNCHECKED;
    for (int slot = 0; slot < FP_REVERSE_WAYS; slot++)
        if (way->ifindex[slot] == ifindex && ifindex != 0)
            return 0;
    return FP_REFUSED_REVERSE_PATH;
}

/* LocalAddresses.isMartianSource: loopback, "this network", multicast, reserved, ours, or a
 * subnet's directed broadcast address. */
static __always_inline int martian4(__u32 address)
{
    __u32 first = bpf_ntohl(address) >> 24;
    if (first == 0 || first == 127 || first >= 224)
        return 1;
    __u8 flags = host4(address);
    return (flags & FP_LOCAL_BROADCAST) || local4_of(address, flags) == FP_LOCAL_OWN;
}

/* ::/96 and ::ffff:0:0/96 (never a source on the wire), multicast, or ours. */
static __always_inline int martian6(const struct in6_addr *address)
{
    const __u32 *words = address->in6_u.u6_addr32;
    if (words[0] == 0 && words[1] == 0 && (words[2] == 0 || words[2] == bpf_htonl(0xffff)))
        return 1;
    return address->in6_u.u6_addr8[0] == 0xff || owns6(address);
}

/* PeerPolicy.isForbiddenHop: 0/8, 127/8, 224/4 and 240/4, whatever --allow-hop says; and a
 * broadcast address of this host's (`flags`: the hop's fp_hosts4 flags). */
static __always_inline int forbidden_hop(__u32 hop, __u8 flags)
{
    __u32 first = bpf_ntohl(hop) >> 24;
    return first == 0 || first == 127 || first >= 224 || (flags & FP_LOCAL_BROADCAST);
}

/* Decider.localRefusal, or 0 when the packet may be delivered here. */
static __always_inline enum fp_counter local_refusal(void *inner, void *end, int ipv6)
{
    if (ipv6) {
        struct ipv6hdr *ip6 = inner;
        if ((void *)(ip6 + 1) > end)
            return FP_REFUSED_NOT_LOCAL_DESTINATION;
        const __u32 *destination = ip6->daddr.in6_u.u6_addr32;
        /* ::1 and fe80::/10 are this host's, but nothing from the network may reach them. */
        if (destination[0] == 0 && destination[1] == 0 && destination[2] == 0 && destination[3] == bpf_htonl(1))
            return FP_REFUSED_NOT_LOCAL_DESTINATION;
        if ((bpf_ntohl(destination[0]) >> 22) == 0x3fa)
            return FP_REFUSED_NOT_LOCAL_DESTINATION;
        if (!local6(&ip6->daddr))
            return FP_REFUSED_NOT_LOCAL_DESTINATION;
        return martian6(&ip6->saddr) ? FP_REFUSED_MARTIAN_SOURCE : 0;
    }
    struct iphdr *ip4 = inner;
    if ((void *)(ip4 + 1) > end)
        return FP_REFUSED_NOT_LOCAL_DESTINATION;
    if ((bpf_ntohl(ip4->daddr) >> 24) == 127 || !local4(ip4->daddr))
        return FP_REFUSED_NOT_LOCAL_DESTINATION;
    return martian4(ip4->saddr) ? FP_REFUSED_MARTIAN_SOURCE : 0;
}

/* What a step concluded; each entry point acts on it in one switch. */
enum verdict_kind {
    V_CONTINUE, /* nothing concluded yet: the next step decides */
    V_NOT_GUE,  /* not for this program: on unchanged, uncounted */
    V_UP,       /* to the queue unchanged, counted under `reason` */
    V_DROP,     /* dropped, counted under `reason` */
    V_LOCAL,    /* decapsulated and delivered here, counted under `reason` */
    V_FORWARD,  /* rewritten and sent to the next hop (`packet.hop`) */
    V_RESPOND,  /* a SYN the responder may answer; unanswered, a local SYN */
    V_TC,       /* XDP only: what tc must judge (see second_chance_xdp); on unchanged, uncounted */
};

struct verdict {
    enum verdict_kind kind;
    enum fp_counter reason;
};

static __always_inline struct verdict conclude(enum verdict_kind kind, enum fp_counter reason)
{
    struct verdict verdict = { .kind = kind, .reason = reason };
    return verdict;
}

/* The packet as the steps read it: its bounds and what each step found, for the next. */
struct packet {
    void *data;
    void *end;
    const struct fp_config *config;
    __u32 ifindex;      /* the interface it arrived on */
    __u32 frame_length; /* the whole frame, as the device received it */
    __u8 foreign;       /* not addressed to this host's link address (ip_rcv drops it) */
    __u8 segmented;     /* many packets in one (GSO), or a tag the device took off */
    /* process_glb */
    __u8 ipv6;
    __u8 hop_count;
    __u8 next_hop;
    __u32 hlen;
    __u32 datagram;
    /* process_inner */
    void *inner;
    struct tcphdr *tcp;
    __u32 inner_offset;
    struct bpf_sock_tuple tuple;
    /* classify */
    __u32 hop;
    __u8 inner_verified; /* XDP: 0 not yet, 1 the inner segment's checksum is right, 2 wrong */
};

/* The socket look-up's tuple size, a constant on each branch (the verifier bounds the look-up's
 * read by it). */
static __always_inline __u32 tuple_size(const struct packet *packet)
{
    return packet->ipv6 ? sizeof(packet->tuple.ipv6) : sizeof(packet->tuple.ipv4);
}

/* The outer headers' bytes between the Ethernet header and the inner packet. */
static __always_inline __u32 outer_length(const struct packet *packet)
{
    return OUTER_IP_LENGTH + sizeof(struct udphdr) + sizeof(struct gue_header) + (packet->hlen & MAX_HLEN) * 4;
}

/*
 * Takes the outer IPv4, UDP, GUE and private headers off and hands the inner packet to the stack
 * on the interface the GUE packet arrived on, as cls_redirect does: the inner packet meets
 * PREROUTING, rp_filter and INPUT on that interface, as one decapsulated by the daemon does.
 */
static __always_inline int deliver(struct __sk_buff *skb, const struct packet *packet, enum fp_counter reason)
{
    /* No checksum flag: a CHECKSUM_UNNECESSARY mark for the outer UDP datagram goes, and the
     * stack verifies the inner segment itself. */
    if (bpf_skb_adjust_room(skb, -(__s32)outer_length(packet), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
        return up(FP_UP_FAILED);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_SHOT; /* cannot happen: the MAC header stays */
    if (packet->ipv6)
        eth->h_proto = bpf_htons(ETH_P_IPV6);
    count_decided(reason);
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/* The route to the next hop from the outer headers as they arrived, by the FIB of the interface
 * the packet arrived on: BPF_FIB_LKUP_RET_SUCCESS with the neighbour's and the device's MACs, or
 * why not. bpf_fib_lookup answers only where the arrival interface forwards (FWD_DISABLED
 * otherwise, BPF_FIB_LOOKUP_OUTPUT or not). */
static __always_inline long route_to_hop(void *ctx, const struct packet *packet, const struct outer_headers *outer,
                                         struct bpf_fib_lookup *route)
{
    __builtin_memset(route, 0, sizeof(*route));
    route->family = 2; /* AF_INET */
    route->l4_protocol = IPPROTO_UDP;
    route->sport = outer->udp.source;
    route->dport = outer->udp.dest;
    route->tot_len = bpf_ntohs(outer->ip.tot_len);
    route->tos = outer->ip.tos;
    route->ipv4_src = packet->config->self_ip4;
    route->ipv4_dst = packet->hop;
    route->ifindex = packet->ifindex;
    return bpf_fib_lookup(ctx, route, sizeof(*route), 0);
}

/* What a forward changed in the outer headers, for the UDP checksum's update. */
struct forward_change {
    __u32 old_source, old_destination;
    __u16 old_word, new_word; /* next_hop, then hop_count */
};

/*
 * GUEForwarding.rewrite, for both entry points: next_hop + 1, outer source --self, outer
 * destination the hop, the IP checksum recomputed, the route's MACs. The TTL stays: the hop sees
 * the packet the raw socket would have sent. The UDP checksum is the caller's (the helpers differ).
 */
static __always_inline struct forward_change rewrite_outer(struct ethhdr *eth, struct outer_headers *outer,
                                                           const struct packet *packet,
                                                           const struct bpf_fib_lookup *route)
{
    struct forward_change change = {
        .old_source = outer->ip.saddr,
        .old_destination = outer->ip.daddr,
        .old_word = *(__u16 *)&outer->glb.next_hop,
    };
    outer->glb.next_hop = packet->next_hop + 1;
    change.new_word = *(__u16 *)&outer->glb.next_hop;
    outer->ip.saddr = packet->config->self_ip4;
    outer->ip.daddr = packet->hop;
    outer->ip.check = 0;
    outer->ip.check = ~ip4_header_sum(&outer->ip);
    __builtin_memcpy(eth->h_dest, route->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, route->smac, ETH_ALEN);
    return change;
}

/*
 * tc: the packet rewritten (a UDP checksum updated, zero stays zero) and redirected to the
 * route's device. Without a route or a neighbour the packet goes up, and the daemon's raw socket
 * sends it.
 */
static __always_inline int forward(struct __sk_buff *skb, const struct packet *packet)
{
    if (packet->config->flags & FP_F_SELF_GONE)
        return up(FP_UP_SELF_GONE);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct outer_headers *outer = data + ETH_LENGTH;
    if ((void *)(outer + 1) > end)
        return up(FP_UP_FAILED);
    struct bpf_fib_lookup route;
    if (route_to_hop(skb, packet, outer, &route) != BPF_FIB_LKUP_RET_SUCCESS)
        return up(FP_UP_NO_ROUTE);
    int udp_checksum = outer->udp.check != 0;
    struct forward_change change = rewrite_outer(eth, outer, packet, &route);
    if (udp_checksum) {
        /* The helpers keep a checksum the device is to finish (CHECKSUM_PARTIAL) right too: the
         * next_hop word is the datagram's, the addresses are the pseudo-header's, changed in one
         * update (size 0: `to` is the difference). */
        __u32 offset = UDP_OFFSET + __builtin_offsetof(struct udphdr, check);
        __u64 flags = BPF_F_MARK_MANGLED_0;
        __u64 addresses = (__u64)(__u32)~change.old_source + packet->config->self_ip4 +
                          (__u32)~change.old_destination + packet->hop;
        addresses = (addresses & 0xffffffff) + (addresses >> 32);
        addresses = (addresses & 0xffffffff) + (addresses >> 32);
        if (bpf_l4_csum_replace(skb, offset, change.old_word, change.new_word, flags | 2) ||
            bpf_l4_csum_replace(skb, offset, 0, (__u32)addresses, flags | BPF_F_PSEUDO_HDR))
            return TC_ACT_SHOT; /* cannot happen: the offset is inside the linear head */
    }
    count_decided(FP_FORWARDED);
    return bpf_redirect(route.ifindex, 0);
}

/*
 * The SYN-cookie responder (SynCookieResponder and SynCookieReply in the daemon): a SYN for a
 * listener the monitor serves is answered from here with the kernel's own cookie, and the SYN
 * never reaches the stack or the queue.
 */

/* The listener's TCP_MAXSEG (tcp_sock.rx_opt.user_mss) and, for listener_probe, its SYN queue
 * (icsk_accept_queue.qlen: its request sockets), read through BTF: libbpf relocates the offsets
 * to the running kernel's. */
struct tcp_options_received___proxyside {
    __u16 user_mss;
} __attribute__((preserve_access_index));

struct atomic___proxyside {
    int counter;
} __attribute__((preserve_access_index));

struct request_sock_queue___proxyside {
    struct atomic___proxyside qlen;
} __attribute__((preserve_access_index));

struct inet_connection_sock___proxyside {
    struct request_sock_queue___proxyside icsk_accept_queue;
} __attribute__((preserve_access_index));

struct tcp_sock___proxyside {
    struct inet_connection_sock___proxyside inet_conn;
    struct tcp_options_received___proxyside rx_opt;
} __attribute__((preserve_access_index));

/* What SynOptions.parse reads of a SYN's options. */
struct syn_options {
    __u32 timestamp;
    __u16 mss;
    __u8 window_scale;
    __u8 has_window_scale;
    __u8 sack;
    __u8 has_timestamp;
};

#define OPTIONS_MAX 40

/* A SYN's option bytes, copied out of the packet (zero past `length`). */
struct syn_option_bytes {
    __u8 bytes[64];
    __u32 length;
};

/* parse_syn_options' answer, one word: what struct syn_options holds, or that the bytes could
 * not be read. */
#define SYN_OPTIONS_MSS 0xffffull              /* bits 0-15 */
#define SYN_OPTIONS_SCALE_SHIFT 16             /* bits 16-19 */
#define SYN_OPTIONS_HAS_SCALE (1ull << 20)
#define SYN_OPTIONS_SACK (1ull << 21)
#define SYN_OPTIONS_HAS_TIMESTAMP (1ull << 22)
#define SYN_OPTIONS_UNREADABLE (1ull << 23)
#define SYN_OPTIONS_TIMESTAMP_SHIFT 32         /* bits 32-63: TSval */

/* tcp_parse_options' walk over bytes already copied; malformed options end it. */
static __always_inline __u64 walk_syn_options(const struct syn_option_bytes *copy)
{
    __u64 found = 0;
    __u32 length = copy->length > OPTIONS_MAX ? OPTIONS_MAX : copy->length;
    __u32 index = 0;
    for (int step = 0; step < OPTIONS_MAX && index < length; step++) {
        /* Below 40 by the loop's test, and said so to the verifier: every read is at most 9
         * bytes on, inside the 64. */
        __u32 at = index & 0x3f;
        if (at >= OPTIONS_MAX)
            break;
        const __u8 *option = copy->bytes + at;
        __u8 kind = option[0];
        if (kind == 0)
            break;
        if (kind == 1) {
            index++;
            continue;
        }
        if (index + 1 >= length)
            break;
        __u8 size = option[1];
        if (size < 2 || index + size > length)
            break;
        if (kind == 2 && size == 4) {
            __u16 mss = (__u16)option[2] << 8 | option[3];
            if (mss)
                found = (found & ~SYN_OPTIONS_MSS) | mss;
        } else if (kind == 3 && size == 3) {
            __u64 scale = option[2] > 14 ? 14 : option[2];
            found = (found & ~(0xfull << SYN_OPTIONS_SCALE_SHIFT)) | scale << SYN_OPTIONS_SCALE_SHIFT |
                    SYN_OPTIONS_HAS_SCALE;
        } else if (kind == 4 && size == 2) {
            found |= SYN_OPTIONS_SACK;
        } else if (kind == 8 && size == 10) {
            __u64 stamp = (__u32)option[2] << 24 | (__u32)option[3] << 16 | (__u32)option[4] << 8 | option[5];
            found = (found & 0xffffffffull) | stamp << SYN_OPTIONS_TIMESTAMP_SHIFT | SYN_OPTIONS_HAS_TIMESTAMP;
        }
        index += size;
    }
    return found;
}

/*
 * The options of the SYN whose TCP header starts at `tcp_offset`, `length` bytes of them, as
 * parse_syn_options' word. A global function: the verifier checks it once, on its own, rather
 * than once for every path of the caller that reaches it; and as one takes only the context and
 * scalars before Linux 5.12, it reads the bytes itself and answers in one word.
 */
__attribute__((noinline)) __u64 parse_syn_options(struct __sk_buff *skb, __u32 tcp_offset, __u32 length)
{
    if (!skb || length > OPTIONS_MAX)
        return SYN_OPTIONS_UNREADABLE;
    struct syn_option_bytes copy = { .length = length };
    /* Options come in words: none, or at least 4 bytes. The helper takes no empty copy, and the
     * verifier must see that from the length register itself: hidden from the compiler (which
     * would fold the arithmetic away), the length is rebuilt as 4 + a masked multiple of 4. */
    if (length >= 4) {
        __u32 load_length = length;
        asm volatile("" : "+r"(load_length));
        load_length = ((load_length - 4) & 0x3c) + 4;
        if (bpf_skb_load_bytes(skb, tcp_offset + 20, copy.bytes, load_length))
            return SYN_OPTIONS_UNREADABLE;
    }
    return walk_syn_options(&copy);
}

/* walk_syn_options, verified on its own (Linux 5.12 takes a global function's pointer to memory):
 * XDP's copy, byte by byte, leaves the verifier a state for each length, which it would otherwise
 * carry through every path of the walk. */
__attribute__((noinline)) __u64 walk_copied_options(const struct syn_option_bytes *copy)
{
    if (!copy)
        return SYN_OPTIONS_UNREADABLE;
    return walk_syn_options(copy);
}

/* parse_syn_options for XDP, whose frame is one buffer: the bytes copied out one by one, each
 * checked against the frame's end. */
__attribute__((noinline)) __u64 parse_syn_options_xdp(struct xdp_md *ctx, __u32 tcp_offset, __u32 length)
{
    if (!ctx || length > OPTIONS_MAX || tcp_offset > HEADERS_MAX)
        return SYN_OPTIONS_UNREADABLE;
    __u8 *options = (__u8 *)(long)ctx->data + (tcp_offset & 0xff) + 20; /* masked: see load_bytes */
    __u8 *end = (__u8 *)(long)ctx->data_end;
    struct syn_option_bytes copy = { .length = length };
    for (__u32 index = 0; index < OPTIONS_MAX; index++) {
        if (index >= length)
            break;
        if (options + index + 1 > end)
            return SYN_OPTIONS_UNREADABLE;
        copy.bytes[index] = options[index];
    }
    return walk_copied_options(&copy);
}

static __always_inline void put16(__u8 *at, __u16 value)
{
    at[0] = value >> 8;
    at[1] = value;
}

static __always_inline void put32(__u8 *at, __u32 value)
{
    at[0] = value >> 24;
    at[1] = value >> 16;
    at[2] = value >> 8;
    at[3] = value;
}

/* The reply: what SynCookieReply.write makes of the SYN, in `frame` after the Ethernet header. */
struct reply_plan {
    __u32 cookie;
    __u32 client_isn;
    __u32 timestamp_value;
    __u32 timestamp_echo;
    __u16 mss;
    __u16 window;
    __u16 client_port, listener_port; /* network order */
    __u8 our_window_scale;
    __u8 has_timestamp;
    __u8 has_window_scale;
    __u8 sack;
};

/* Writes the TCP header (checksum left zero) at `tcp`; returns its length. */
static __always_inline __u32 write_synack(__u8 *tcp, const struct reply_plan *plan)
{
    __u32 length = 24 + (plan->has_timestamp ? 12 : 0) + (plan->has_window_scale ? 4 : 0);
    *(__u16 *)tcp = plan->listener_port;
    *(__u16 *)(tcp + 2) = plan->client_port;
    put32(tcp + 4, plan->cookie);
    put32(tcp + 8, plan->client_isn + 1);
    tcp[12] = (length / 4) << 4;
    tcp[13] = TCP_FLAG_SYN | TCP_FLAG_ACK;
    put16(tcp + 14, plan->window);
    /* tcp_options_write's order: MSS, SACK-permitted in the timestamp's padding, window scale. */
    put32(tcp + 20, 0x02040000 | plan->mss);
    if (plan->has_timestamp) {
        put32(tcp + 24, plan->sack ? 0x0402080a : 0x0101080a);
        put32(tcp + 28, plan->timestamp_value);
        put32(tcp + 32, plan->timestamp_echo);
        if (plan->has_window_scale)
            put32(tcp + 36, 0x01030300 | plan->our_window_scale);
    }
    return length;
}

/* The TCP checksum over the pseudo-header (the addresses as written at `addresses`) and the segment. */
static __always_inline __u16 tcp_checksum(__u8 *addresses, __u32 address_bytes, __u8 *tcp, __u32 length)
{
    __be32 word = bpf_htonl(IPPROTO_TCP << 16 | length);
    __s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)addresses, address_bytes, 0);
    sum = bpf_csum_diff(NULL, 0, &word, 4, (__u32)sum);
    sum = bpf_csum_diff(NULL, 0, (__be32 *)tcp, length, (__u32)sum);
    return ~fold((__u32)sum);
}

/*
 * Copies `length` bytes (a constant at every call) at `offset` of the frame to `to`: 0 when they
 * are not there. tc reads through the helper, since they may lie past the linear head; XDP's
 * frame is one buffer, read in place.
 */
static __always_inline int load_bytes(void *ctx, int xdp, const struct packet *packet, __u32 offset, void *to,
                                      __u32 length)
{
    if (!xdp)
        return bpf_skb_load_bytes(ctx, offset, to, length) == 0;
    if (offset > HEADERS_MAX)
        return 0;
    /* Masked as well: the bound must travel with the value the pointer is made from (Linux 6.1's
     * verifier does not carry a bound checked on one copy of a spilled value to another). */
    __u8 *from = (__u8 *)packet->data + (offset & 0xff);
    if (from + length > (__u8 *)packet->end)
        return 0;
    __builtin_memcpy(to, from, length);
    return 1;
}

/*
 * SynIntegrity.isAnswerable: what ip_rcv and tcp_v4_rcv/tcp_v6_rcv check of a SYN before a
 * listener sees it, for a SYN with no data: its TCP header ends where the IP packet does (a doff
 * past that end, or data, and the kernel decides), the IPv4 header checksum and the TCP checksum
 * are right (XDP verified the latter before it classified the packet: decide). 0 when the
 * responder must leave the SYN to the kernel (which drops a damaged one). `scratch` is overwritten.
 */
static __always_inline int answerable_syn(void *ctx, int xdp, const struct packet *packet, __u8 *scratch,
                                          __u32 tcp_length)
{
    __u32 ip_length = packet->ipv6 ? 40 : 20, packet_length;
    if (packet->ipv6) {
        struct ipv6hdr *ip6 = packet->inner;
        if ((void *)(ip6 + 1) > packet->end)
            return 0;
        packet_length = 40 + bpf_ntohs(ip6->payload_len);
    } else {
        struct iphdr *ip4 = packet->inner;
        if ((void *)(ip4 + 1) > packet->end)
            return 0;
        packet_length = bpf_ntohs(ip4->tot_len);
    }
    if (packet_length != ip_length + tcp_length || tcp_length < 20 || tcp_length > 60)
        return 0;
    /* The pseudo-header's addresses from a copy of the IP header on the stack (the verifier
     * bounds a stack read by the buffer alone, whichever family the branch was). */
    __s64 sum;
    if (packet->ipv6) {
        if (!load_bytes(ctx, xdp, packet, packet->inner_offset, scratch, 40))
            return 0;
        sum = bpf_csum_diff(NULL, 0, (__be32 *)(scratch + 8), 32, 0);
    } else {
        if (!load_bytes(ctx, xdp, packet, packet->inner_offset, scratch, 20))
            return 0;
        if (fold((__u32)bpf_csum_diff(NULL, 0, (__be32 *)scratch, 20, 0)) != 0xffff)
            return 0;
        sum = bpf_csum_diff(NULL, 0, (__be32 *)(scratch + 12), 8, 0);
    }
    if (xdp)
        return 1;
    __be32 word = bpf_htonl(IPPROTO_TCP << 16 | tcp_length);
    sum = bpf_csum_diff(NULL, 0, &word, 4, (__u32)sum);
    /* A length the verifier sees bounded and a multiple of 4, as the options' copy. */
    __u32 load_length = tcp_length;
    asm volatile("" : "+r"(load_length));
    load_length = ((load_length - 20) & 0x3c) + 20;
    if (bpf_skb_load_bytes(ctx, packet->inner_offset + ip_length, scratch, load_length))
        return 0;
    sum = bpf_csum_diff(NULL, 0, (__be32 *)scratch, load_length, (__u32)sum);
    return fold((__u32)sum) == 0xffff;
}

/* The listener as fp_listeners names it: its own bound address and port. */
static __always_inline void listener_key(struct bpf_sock *socket, struct fp_listener_key *key)
{
    key->port = bpf_htons((__u16)socket->src_port);
    __u32 *address = (__u32 *)key->address;
    if (socket->family == 10 /* AF_INET6 */) {
        key->family = 6;
        address[0] = socket->src_ip6[0];
        address[1] = socket->src_ip6[1];
        address[2] = socket->src_ip6[2];
        address[3] = socket->src_ip6[3];
    } else {
        key->family = 4;
        address[0] = socket->src_ip4;
    }
}

/* The counts of a listener the responder serves; NULL for any other. */
static __always_inline struct fp_listener_counts *served_counts(struct bpf_sock *socket)
{
    struct fp_listener_key key = {};
    listener_key(socket, &key);
    if (!bpf_map_lookup_elem(&fp_listeners, &key))
        return NULL;
    return bpf_map_lookup_elem(&fp_listen_count, &key);
}

enum answer {
    NOT_ANSWERED, /* the SYN goes on as any SYN: to the kernel (or dropped, if not deliverable) */
    ANSWERED,
    TO_TC, /* XDP only: an answer XDP cannot send, tc's to plan again (nothing of it was spent) */
};

static __always_inline void count_listener(struct fp_listener_counts *counts, enum fp_listener_count slot)
{
    if (counts && slot < FP_L_COUNT)
        counts->count[slot] += 1;
}

/* The SYN's options as the reply reads them (SynCookieReply): 0 when they cannot be read, and
 * the kernel answers. */
static __always_inline int read_syn_options(void *ctx, int xdp, __u32 tcp_offset, __u32 tcp_length,
                                            struct syn_options *options)
{
    __u32 options_length = (tcp_length - 20) & 0x3f;
    if (options_length > OPTIONS_MAX)
        return 0;
    __u64 parsed = xdp ? parse_syn_options_xdp(ctx, tcp_offset, options_length)
                       : parse_syn_options(ctx, tcp_offset, options_length);
    if (parsed & SYN_OPTIONS_UNREADABLE)
        return 0;
    options->timestamp = parsed >> SYN_OPTIONS_TIMESTAMP_SHIFT;
    options->mss = parsed & SYN_OPTIONS_MSS;
    options->window_scale = (parsed >> SYN_OPTIONS_SCALE_SHIFT) & 0xf;
    options->has_window_scale = !!(parsed & SYN_OPTIONS_HAS_SCALE);
    options->sack = !!(parsed & SYN_OPTIONS_SACK);
    options->has_timestamp = !!(parsed & SYN_OPTIONS_HAS_TIMESTAMP);
    return 1;
}

/* The route back to the client (the SYN's source) in the main table, as the daemon keeps it: its
 * advmss is the MSS offered. NULL without one: the kernel's SYN-ACK would find none either. */
static __always_inline struct fp_reply_route *reply_route(void *inner, void *end, int ipv6)
{
    struct fp_reply_route *route;
    if (ipv6) {
        struct ipv6hdr *ip6 = inner;
        if ((void *)(ip6 + 1) > end)
            return NULL;
        struct fp_ip6_prefix destination; /* field by field: see local6 */
        destination.prefix_length = 128;
        __builtin_memcpy(destination.address, &ip6->saddr, 16);
        route = bpf_map_lookup_elem(&fp_reply6, &destination);
    } else {
        struct iphdr *ip4 = inner;
        if ((void *)(ip4 + 1) > end)
            return NULL;
        struct fp_ip4_prefix destination = { .prefix_length = 32, .address = ip4->saddr };
        route = bpf_map_lookup_elem(&fp_reply4, &destination);
    }
    return route && route->mss ? route : NULL;
}

/*
 * The cookie the kernel gives this SYN, from its addresses, ports, ISN and MSS option alone (the
 * cookie depends on nothing else): a copy of the IP header, then a 24-byte TCP header with that
 * one option, in `scratch`. Negative when it gives none.
 */
static __always_inline long make_cookie(void *ctx, int xdp, const struct packet *packet, struct bpf_sock *socket,
                                        __u8 *scratch, __u16 client_mss)
{
    int ipv6 = packet->ipv6;
    __u32 tcp_offset = packet->inner_offset + (ipv6 ? 40 : 20);
    if (ipv6 ? !load_bytes(ctx, xdp, packet, packet->inner_offset, scratch, 40)
             : !load_bytes(ctx, xdp, packet, packet->inner_offset, scratch, 20))
        return -1;
    if (!ipv6)
        scratch[0] = 0x45;
    if (!load_bytes(ctx, xdp, packet, tcp_offset, scratch + 40, 20))
        return -1;
    scratch[40 + 12] = (24 / 4) << 4;
    if (client_mss)
        put32(scratch + 40 + 20, 0x02040000 | client_mss);
    else
        put32(scratch + 40 + 20, 0x01010101); /* no MSS option: the kernel assumes 536 */
    /* The copy sits where the IP header of this family does (IPv4 at 20 of 40 bytes). */
    return ipv6 ? bpf_tcp_gen_syncookie(socket, scratch, 40, (struct tcphdr *)(scratch + 40), 24)
                : bpf_tcp_gen_syncookie(socket, scratch, 20, (struct tcphdr *)(scratch + 40), 24);
}

/* The reply's options and window: SynCookieReply.offer (without a timestamp the kernel can decode,
 * the MSS alone) and TCPWindow.synAckWindow. */
static __always_inline void plan_options(const struct fp_config *config, const struct syn_options *options,
                                         __u64 now, __u32 receive_buffer, struct reply_plan *plan)
{
    if ((config->tcp_options & FP_TCP_TIMESTAMPS_ENCODABLE) && options->has_timestamp) {
        plan->has_timestamp = 1;
        plan->sack = options->sack && (config->tcp_options & FP_TCP_SACK);
        plan->has_window_scale = options->has_window_scale && (config->tcp_options & FP_TCP_WINDOW_SCALING);
        /* CookieTimestamp.value: milliseconds with the options in the low 6 bits, never ahead. */
        __u64 now_ms = now / 1000000;
        __u64 stamp = (now_ms >> 6) << 6 | (plan->has_window_scale ? options->window_scale : 0xf) |
                      (plan->sack ? 1 << 4 : 0);
        if (stamp > now_ms)
            stamp -= 1 << 6;
        plan->timestamp_value = (__u32)stamp;
        plan->timestamp_echo = options->timestamp;
    }
    /* The listener's full space in whole segments, at most 65535. */
    __u32 space = receive_buffer / 2;
    __u32 segment = plan->mss - (plan->has_timestamp ? 12 : 0);
    if (segment > 0 && segment < 65536 && space > segment)
        space -= space % segment;
    plan->window = space > 65535 ? 65535 : space;
}

/*
 * Whether a listener's SYN goes to the kernel all the same: the kernel accepts a cookie ACK within
 * two minutes of a cookie of its own (with tcp_syncookies=2 too), so one SYN per listener and
 * interval goes to it, answered there (the cookie helper refreshes that mark as well). Two CPUs
 * reading the same old time may both let a SYN through: one more for the kernel, never one fewer.
 */
static __always_inline int passed_to_kernel(struct fp_listener_key *key, const struct fp_config *config, __u64 now,
                                            struct fp_listener_counts *counts)
{
    struct fp_listener_pass *pass = bpf_map_lookup_elem(&fp_listen_pass, key);
    if (!pass || (pass->last_passed_ns != 0 && now - pass->last_passed_ns < config->pass_interval_ns))
        return 0;
    pass->last_passed_ns = now;
    count_listener(counts, FP_L_SYNS_PASSED);
    return 1;
}

/*
 * Everything the SYN-ACK needs, for a SYN to a served listener whose cookie the kernel gives now:
 * 0 when the kernel answers (the socket is no listener, the listener is not served or its accept
 * queue is full, the SYN is one the kernel would drop or has data, its interval's SYN, unreadable
 * options, no route back, no cookie; in XDP, a route back by another interface than the SYN's,
 * `*egress` then saying so: tc's to answer, known before the kernel is asked for a cookie, since
 * every cookie it gives counts in its TCPReqQFullDoCookies, and tc asks again). `*counts` is the
 * listener's, where it has one.
 */
static __always_inline int plan_reply(void *ctx, int xdp, struct packet *packet, struct bpf_sock *socket,
                                      __u8 *scratch, struct reply_plan *plan,
                                      struct fp_listener_counts **counts, __u32 *egress)
{
    const struct fp_config *config = packet->config;
    struct tcphdr *tcp = packet->tcp;
    int ipv6 = packet->ipv6;
    /* A request socket (the kernel answered this SYN before and waits for its ACK), a connection
     * or TIME_WAIT: the kernel's to answer. */
    if (socket->state != BPF_TCP_LISTEN)
        return 0;
    struct fp_listener_key key = {};
    listener_key(socket, &key);
    struct fp_listener *listener = bpf_map_lookup_elem(&fp_listeners, &key);
    if (!listener || (listener->flags & FP_L_ACCEPT_QUEUE_FULL))
        return 0;
    *counts = bpf_map_lookup_elem(&fp_listen_count, &key);
    __u32 tcp_length = tcp->doff * 4;
    if (!answerable_syn(ctx, xdp, packet, scratch, tcp_length))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    if (passed_to_kernel(&key, config, now, *counts))
        return 0;
    __u32 tcp_offset = packet->inner_offset + (ipv6 ? 40 : 20);
    struct syn_options options = {};
    if (!read_syn_options(ctx, xdp, tcp_offset, tcp_length, &options))
        return 0;
    struct fp_reply_route *route = reply_route(packet->inner, packet->end, ipv6);
    if (!route)
        return 0;
    *egress = route->ifindex;
    if (xdp && route->ifindex != packet->ifindex)
        return 0;
    plan->mss = route->mss;
    struct tcp_sock___proxyside *tp = (void *)bpf_skc_to_tcp_sock(socket);
    __u16 user_mss = tp ? tp->rx_opt.user_mss : 0; /* the listener's TCP_MAXSEG */
    if (user_mss && user_mss < plan->mss)
        plan->mss = user_mss;
    long generated = make_cookie(ctx, xdp, packet, socket, scratch, options.mss);
    if (generated < 0) {
        if (generated != -2 /* ENOENT: the kernel would give no cookie now */)
            count(FP_COOKIE_REPLY_FAILED);
        return 0;
    }
    plan->cookie = (__u32)generated;
    plan->client_isn = bpf_ntohl(tcp->seq);
    plan->client_port = tcp->source;
    plan->listener_port = tcp->dest;
    plan->our_window_scale = listener->window_scale;
    plan_options(config, &options, now, listener->receive_buffer, plan);
    return 1;
}

/*
 * The SYN-ACK frame for `plan` in `scratch`, addressed back to the SYN's source from its
 * destination: its length, 0 if it does not fit. The Ethernet addresses stay zero: the neighbour
 * subsystem fills them in (bpf_redirect_neigh).
 */
static __always_inline __u32 write_synack_frame(__u8 *scratch, void *inner, void *end, int ipv6,
                                                const struct fp_config *config, const struct reply_plan *plan)
{
    __builtin_memset(scratch, 0, SCRATCH);
    __u8 *ip = scratch + ETH_LENGTH;
    __u32 frame_length;
    if (ipv6) {
        struct ipv6hdr *ip6 = inner;
        if ((void *)(ip6 + 1) > end)
            return 0;
        *(__u16 *)(scratch + 12) = bpf_htons(ETH_P_IPV6);
        __u32 length = write_synack(ip + 40, plan);
        if (length > 40)
            return 0;
        put32(ip, 0x60000000);
        put16(ip + 4, length);
        ip[6] = IPPROTO_TCP;
        ip[7] = config->reply_hop_limit;
        __builtin_memcpy(ip + 8, &ip6->daddr, 16);
        __builtin_memcpy(ip + 24, &ip6->saddr, 16);
        __u16 checksum = tcp_checksum(ip + 8, 32, ip + 40, length);
        __builtin_memcpy(ip + 40 + 16, &checksum, 2);
        frame_length = ETH_LENGTH + 40 + length;
    } else {
        struct iphdr *ip4 = inner;
        if ((void *)(ip4 + 1) > end)
            return 0;
        *(__u16 *)(scratch + 12) = bpf_htons(ETH_P_IP);
        __u32 length = write_synack(ip + 20, plan);
        if (length > 40)
            return 0;
        put32(ip, 0x45000000 | (20 + length));
        put32(ip + 4, 0x00004000); /* identification 0, don't fragment: the kernel's SYN-ACK */
        ip[8] = config->reply_ttl;
        ip[9] = IPPROTO_TCP;
        __builtin_memcpy(ip + 12, &ip4->daddr, 4);
        __builtin_memcpy(ip + 16, &ip4->saddr, 4);
        __u16 header = ~fold((__u32)bpf_csum_diff(NULL, 0, (__be32 *)ip, 20, 0));
        __builtin_memcpy(ip + 10, &header, 2);
        __u16 checksum = tcp_checksum(ip + 12, 8, ip + 20, length);
        __builtin_memcpy(ip + 20 + 16, &checksum, 2);
        frame_length = ETH_LENGTH + 20 + length;
    }
    return frame_length > SCRATCH ? 0 : frame_length;
}

/* A SYN-ACK sent, counted alike by both entry points. */
static __always_inline void count_answer(struct fp_listener_counts *counts)
{
    count_decided(FP_COOKIES_SENT);
    count_listener(counts, FP_L_COOKIES_SENT);
}

/*
 * Everything the SYN-ACK for a served listener needs (plan_reply), in `*plan`: 0 when the SYN is
 * not answered. Which listeners are served is the monitor's decision (its policy and counts);
 * whether a cookie may be given is the kernel's, through bpf_tcp_gen_syncookie: it answers -ENOENT
 * unless the SYN queue is full (or tcp_syncookies=2), refuses when the accept queue is full,
 * clamps the cookie's MSS to the listener's TCP_MAXSEG, and refreshes the listener's overflow
 * mark, so the kernel accepts the cookie's ACK. Nothing in the packet is changed.
 */
static __always_inline int prepare_answer(void *ctx, int xdp, struct packet *packet, __u8 *scratch,
                                          struct reply_plan *plan, struct fp_listener_counts **counts, __u32 *egress)
{
    /* The reply's source is the SYN's destination: only an address this host owns, or routes into
     * the sockets' namespace (--netns), where its listener is. */
    if (local_refusal(packet->inner, packet->end, packet->ipv6))
        return 0;
    struct bpf_sock *socket = bpf_skc_lookup_tcp(ctx, &packet->tuple, tuple_size(packet), BPF_F_CURRENT_NETNS, 0);
    if (!socket)
        return 0;
    int planned = plan_reply(ctx, xdp, packet, socket, scratch, plan, counts, egress);
    bpf_sk_release(socket);
    return planned;
}

/*
 * tc: answers a SYN for a served listener: `*verdict` is the tc action when ANSWERED. Nothing is
 * changed in the packet until everything the reply needs is known, so a SYN not answered goes on
 * untouched.
 */
static __always_inline enum answer respond(struct __sk_buff *skb, struct packet *packet, int *verdict)
{
    __u8 scratch[SCRATCH] __attribute__((aligned(8))) = {};
    struct reply_plan plan = {};
    struct fp_listener_counts *counts = NULL;
    __u32 egress = 0;
    if (!prepare_answer(skb, 0, packet, scratch, &plan, &counts, &egress))
        return NOT_ANSWERED;

    /* From here the SYN becomes its SYN-ACK. */
    __u32 frame_length = write_synack_frame(scratch, packet->inner, packet->end, packet->ipv6, packet->config, &plan);
    if (!frame_length) {
        count(FP_COOKIE_REPLY_FAILED);
        return NOT_ANSWERED;
    }
    __s32 outer = outer_length(packet);
    /* An IPv6 SYN came in IPv4: the frame becomes IPv6 (skb->protocol included) before it is
     * written over. */
    if (bpf_skb_adjust_room(skb, -outer, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO) ||
        (packet->ipv6 && bpf_skb_change_proto(skb, bpf_htons(ETH_P_IPV6), 0)) ||
        bpf_skb_change_tail(skb, frame_length, 0) ||
        bpf_skb_store_bytes(skb, 0, scratch, frame_length, BPF_F_RECOMPUTE_CSUM)) {
        /* Cannot happen for a SYN that arrived whole; it is lost, and counted. */
        count(FP_COOKIE_REPLY_FAILED);
        *verdict = TC_ACT_SHOT;
        return ANSWERED;
    }
    count_answer(counts);
    /* Out of the route's interface, with the neighbour (the client's, or its gateway's) the
     * kernel resolves as for its own SYN-ACK: bpf_redirect_neigh looks the route up itself,
     * as this host's output, so forwarding need not be on. */
    *verdict = bpf_redirect_neigh(egress, NULL, 0, 0);
    return ANSWERED;
}

/*
 * The outer headers (Ethernet, IPv4 without options, UDP to the GUE port), as far as the entry
 * point has made them readable: what ip_rcv checks before any netfilter hook (the queue never
 * sees a packet it drops, so neither is one decided here; padding after the datagram goes up
 * too, since ip_rcv trims it), fragments (they meet the defragmenter before the queue), and
 * whether the packet is addressed to this host.
 */
static __always_inline struct verdict process_outer(struct packet *packet)
{
    struct ethhdr *eth = packet->data;
    struct outer_headers *outer = packet->data + ETH_LENGTH;
    if ((void *)&outer->gue > packet->end)
        return conclude(V_NOT_GUE, 0);
    if (eth->h_proto != bpf_htons(ETH_P_IP) || outer->ip.protocol != IPPROTO_UDP || outer->ip.ihl != 5 ||
        outer->udp.dest != packet->config->gue_port)
        return conclude(V_NOT_GUE, 0);
    if (packet->config->layout != FP_LAYOUT)
        return conclude(V_UP, FP_UP_UNCONFIGURED);
    __u32 total = bpf_ntohs(outer->ip.tot_len);
    if (packet->foreign || outer->ip.version != 4 || total + ETH_LENGTH != packet->frame_length)
        return conclude(V_UP, FP_UP_OUTER_UNCHECKED);
    if (ip4_header_sum(&outer->ip) != 0xffff)
        return conclude(V_UP, FP_UP_OUTER_UNCHECKED);
    if ((outer->ip.frag_off & bpf_htons(0x3fff)) || packet->segmented)
        return conclude(V_UP, FP_UP_OUTER_OPTIONS);
    if (!owns4(outer->ip.daddr))
        return conclude(V_UP, FP_UP_NOT_ADDRESSED_HERE);
    return conclude(V_CONTINUE, 0);
}

/*
 * GUEPacket.parse, check by check, then the trust boundary's first checks (Decider.parse): a
 * peer, heard where its route back leads, with no more hops than --max-hops. Lengths are the
 * datagram's; every access is also checked against the packet's end.
 */
static __always_inline struct verdict process_glb(struct packet *packet)
{
    struct outer_headers *outer = packet->data + ETH_LENGTH;
    if ((void *)(outer + 1) > packet->end)
        return conclude(V_UP, FP_UP_OUTER_UNCHECKED); /* too short for GLB's GUE: the queue says why */
    __u32 total = bpf_ntohs(outer->ip.tot_len);
    __u32 udp_length = bpf_ntohs(outer->udp.len);
    if (udp_length < sizeof(struct udphdr) || OUTER_IP_LENGTH + udp_length > total)
        return conclude(V_DROP, FP_DROP_UDP_TRUNCATED);
    if (OUTER_IP_LENGTH + udp_length != total)
        return conclude(V_UP, FP_UP_OUTER_UNCHECKED); /* bytes after the datagram: the queue sees them too */
    __u32 datagram = udp_length - sizeof(struct udphdr);
    if (datagram < sizeof(struct gue_header))
        return conclude(V_DROP, FP_DROP_GUE_TRUNCATED);
    __u8 first = outer->gue.version_control_hlen;
    if (first & GUE_VERSION_MASK)
        return conclude(V_DROP, FP_DROP_GUE_VERSION);
    if (first & GUE_CONTROL)
        return conclude(V_DROP, FP_DROP_GUE_CONTROL); /* GLB sends none; a GRE-in-UDP probe reads as one */
    __u32 hlen = first & MAX_HLEN;
    if (outer->gue.flags)
        return conclude(V_DROP, FP_DROP_GUE_FLAGS);
    if (hlen < 1)
        return conclude(V_DROP, FP_DROP_GUE_HLEN);
    if (datagram - sizeof(struct gue_header) < hlen * 4)
        return conclude(V_DROP, FP_DROP_GUE_TRUNCATED);
    if (hlen != (__u32)outer->glb.hop_count + 1)
        return conclude(V_DROP, FP_DROP_GUE_HLEN);
    if (outer->glb.type)
        return conclude(V_DROP, FP_DROP_GUE_PRIVATE_TYPE);
    if (outer->gue.protocol != IPPROTO_IPIP && outer->gue.protocol != IPPROTO_IPV6)
        return conclude(V_DROP, FP_DROP_INNER_PROTOCOL);
    if (!in_prefixes(&fp_sources, outer->ip.saddr))
        return conclude(V_DROP, FP_REFUSED_UNTRUSTED_SOURCE);
    enum fp_counter way = reverse_path(outer->ip.saddr, packet->ifindex);
    if (way == FP_REFUSED_REVERSE_PATH)
        return conclude(V_DROP, way);
    if (way)
        return conclude(V_UP, way);
    if (outer->glb.hop_count > packet->config->max_hops)
        return conclude(V_DROP, FP_REFUSED_TOO_MANY_HOPS);
    packet->ipv6 = outer->gue.protocol == IPPROTO_IPV6;
    packet->hop_count = outer->glb.hop_count;
    packet->next_hop = outer->glb.next_hop;
    packet->hlen = hlen;
    packet->datagram = datagram;
    return conclude(V_CONTINUE, 0);
}

/* InnerPacket.classify for inner IPv4: TCP is decided here, the rest goes up. */
static __always_inline struct verdict process_inner4(struct packet *packet, __u32 available)
{
    struct iphdr *ip4 = packet->inner;
    if (available < sizeof(*ip4))
        return conclude(V_DROP, FP_DROP_INNER_TRUNCATED);
    if ((void *)(ip4 + 1) > packet->end)
        return conclude(V_UP, FP_UP_FAILED);
    if (ip4->version != 4)
        return conclude(V_DROP, FP_DROP_INNER_VERSION);
    __u32 ihl = ip4->ihl * 4, length = bpf_ntohs(ip4->tot_len);
    if (ihl < sizeof(*ip4) || length < ihl || length > available)
        return conclude(V_DROP, FP_DROP_INNER_TRUNCATED);
    __u16 fragment = bpf_ntohs(ip4->frag_off) & 0x3fff;
    __u8 protocol = ip4->protocol;
    if (fragment & 0x1fff) {
        if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_ICMP)
            return conclude(V_UP, FP_UP_INNER_FRAGMENT);
        return conclude(V_DROP, FP_DROP_INNER_TRANSPORT);
    }
    if (protocol == IPPROTO_UDP || protocol == IPPROTO_ICMP)
        return conclude(V_UP, FP_UP_INNER_NOT_TCP);
    if (protocol != IPPROTO_TCP)
        return conclude(V_DROP, FP_DROP_INNER_TRANSPORT);
    if (length - ihl < sizeof(struct tcphdr))
        return conclude(V_DROP, FP_DROP_INNER_TRUNCATED);
    if (ihl != sizeof(*ip4))
        return conclude(V_UP, FP_UP_INNER_NOT_TCP); /* inner IPv4 options */
    if (fragment)
        return conclude(V_UP, FP_UP_INNER_FRAGMENT); /* a first fragment */
    struct tcphdr *tcp = (void *)(ip4 + 1);
    if ((void *)(tcp + 1) > packet->end)
        return conclude(V_UP, FP_UP_FAILED);
    packet->tcp = tcp;
    packet->tuple.ipv4.saddr = ip4->saddr;
    packet->tuple.ipv4.daddr = ip4->daddr;
    packet->tuple.ipv4.sport = tcp->source;
    packet->tuple.ipv4.dport = tcp->dest;
    return conclude(V_CONTINUE, 0);
}

/* InnerPacket.classify for inner IPv6. */
static __always_inline struct verdict process_inner6(struct packet *packet, __u32 available)
{
    struct ipv6hdr *ip6 = packet->inner;
    if (available < sizeof(*ip6))
        return conclude(V_DROP, FP_DROP_INNER_TRUNCATED);
    if ((void *)(ip6 + 1) > packet->end)
        return conclude(V_UP, FP_UP_FAILED);
    if (ip6->version != 6)
        return conclude(V_DROP, FP_DROP_INNER_VERSION);
    __u32 payload = bpf_ntohs(ip6->payload_len);
    if (sizeof(*ip6) + payload > available)
        return conclude(V_DROP, FP_DROP_INNER_TRUNCATED);
    __u8 next = ip6->nexthdr;
    /* Extension headers (hop-by-hop, routing, fragment, destination options), UDP, ICMPv6. */
    if (next == 0 || next == 43 || next == 44 || next == 60 || next == IPPROTO_UDP || next == 58)
        return conclude(V_UP, FP_UP_INNER_NOT_TCP);
    if (next != IPPROTO_TCP)
        return conclude(V_DROP, FP_DROP_INNER_TRANSPORT);
    if (payload < sizeof(struct tcphdr))
        return conclude(V_DROP, FP_DROP_INNER_TRUNCATED);
    struct tcphdr *tcp = (void *)(ip6 + 1);
    if ((void *)(tcp + 1) > packet->end)
        return conclude(V_UP, FP_UP_FAILED);
    packet->tcp = tcp;
    __builtin_memcpy(packet->tuple.ipv6.saddr, &ip6->saddr, 16);
    __builtin_memcpy(packet->tuple.ipv6.daddr, &ip6->daddr, 16);
    packet->tuple.ipv6.sport = tcp->source;
    packet->tuple.ipv6.dport = tcp->dest;
    return conclude(V_CONTINUE, 0);
}

static __always_inline struct verdict process_inner(struct packet *packet)
{
    packet->inner_offset = HOPS_OFFSET + (packet->hop_count & MAX_HLEN) * 4;
    packet->inner = packet->data + packet->inner_offset;
    __u32 available = packet->datagram - sizeof(struct gue_header) - packet->hlen * 4;
    return packet->ipv6 ? process_inner6(packet, available) : process_inner4(packet, available);
}

/* The longest inner segment XDP verifies (any that fits an MTU of 2000); a longer one goes to tc. */
#define CHECKSUMMED_MAX 2048
/* bpf_csum_diff sums at most 512 bytes a call. */
#define CHECKSUM_CHUNK 512

/* Adds the next `piece` bytes (a constant multiple of 4) at *cursor to *sum, if `remaining` has
 * that bit; 0 when they would run past the frame. The cursor moves after the branch, by a step
 * computed anew from `remaining` (hidden from the compiler, which would fold it into the branch):
 * both ways then leave the same state, one variable offset, and the verifier walks the pieces
 * once, not each combination of them. */
static __always_inline int sum_piece(__u8 **cursor, void *end, __u32 remaining, __u32 piece, __u32 *sum)
{
    if (remaining & piece) {
        if (*cursor + piece > (__u8 *)end)
            return 0;
        *sum = bpf_csum_diff(NULL, 0, (__be32 *)*cursor, piece, *sum);
    }
    __u32 bits = remaining;
    asm volatile("" : "+r"(bits));
    *cursor += bits & piece;
    return 1;
}

/* Adds the words of `length`'s low bits (pieces of 256 down to 4 bytes, as its bits say) at
 * *cursor to *sum; 0 when they would run past the frame. */
static __always_inline int sum_pieces(__u8 **cursor, void *end, __u32 length, __u32 *sum)
{
#pragma unroll
    for (__u32 piece = 256; piece >= 4; piece >>= 1)
        if (!sum_piece(cursor, end, length, piece, sum))
            return 0;
    return 1;
}

/*
 * The inner TCP segment's checksum, over the pseudo-header and the segment to the end of its IP
 * packet, as tcp_v4_rcv and tcp_v6_rcv verify it, summed in place by bpf_csum_diff (no copy): whole
 * chunks of CHECKSUM_CHUNK, then the rest in pieces of constant size (256, 128, ... 4 bytes, each
 * checked against the frame's end), then the last 1 to 3 bytes zero-padded to a word. An XDP
 * program without frags sees its whole frame linear. Called, not inlined, so that the caller goes
 * on from one answer.
 */
static __attribute__((noinline)) int inner_checksum_valid(struct xdp_md *ctx, const struct packet *packet)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 offset = packet->inner_offset, length, sum;
    if (offset > 256)
        return 0;
    __u8 *ip = data + offset, *cursor;
    if (packet->ipv6) {
        if (ip + sizeof(struct ipv6hdr) > (__u8 *)end)
            return 0;
        sum = bpf_csum_diff(NULL, 0, (__be32 *)(ip + 8), 32, 0); /* both addresses */
        length = (__u32)ip[4] << 8 | ip[5];
        cursor = ip + sizeof(struct ipv6hdr);
    } else {
        if (ip + sizeof(struct iphdr) > (__u8 *)end)
            return 0;
        sum = bpf_csum_diff(NULL, 0, (__be32 *)(ip + 12), 8, 0);
        length = ((__u32)ip[2] << 8 | ip[3]) - sizeof(struct iphdr); /* no options: they went up */
        cursor = ip + sizeof(struct iphdr);
    }
    if (length == 0 || length >= CHECKSUMMED_MAX)
        return 0;
    __be32 word = bpf_htonl(IPPROTO_TCP << 16 | length);
    sum = bpf_csum_diff(NULL, 0, &word, 4, sum);
    for (int index = 0; index < CHECKSUMMED_MAX / CHECKSUM_CHUNK; index++) {
        if (!sum_piece(&cursor, end, length >= (index + 1) * CHECKSUM_CHUNK ? CHECKSUM_CHUNK : 0, CHECKSUM_CHUNK,
                       &sum))
            return 0;
    }
    if (!sum_pieces(&cursor, end, length, &sum))
        return 0;
    __u32 tail = length & 3;
    if (tail) {
        /* The word that ends where the segment ends: its first 4 - tail bytes are summed already,
         * so they are shifted out, and the last bytes become the first of a zero-padded word. */
        __u8 *last = cursor + tail - 4;
        if (last + 4 > (__u8 *)end)
            return 0;
        __u32 word = (__u32)last[0] << 24 | (__u32)last[1] << 16 | (__u32)last[2] << 8 | last[3];
        __be32 padded = bpf_htonl(word << (8 * (4 - tail)));
        sum = bpf_csum_diff(NULL, 0, &padded, 4, sum);
    }
    return fold(sum) == 0xffff;
}

/* Taken here: for an inner destination this host owns from a source that is not martian. */
/* inner_checksum_valid, once per packet: a cookie ACK's is verified before it is counted, and
 * again before it is delivered. */
static __always_inline int inner_verified(void *ctx, struct packet *packet)
{
    if (!packet->inner_verified)
        packet->inner_verified = inner_checksum_valid(ctx, packet) ? 1 : 2;
    return packet->inner_verified == 1;
}

static __always_inline struct verdict deliverable(const struct packet *packet, enum fp_counter reason)
{
    enum fp_counter refusal = local_refusal(packet->inner, packet->end, packet->ipv6);
    return refusal ? conclude(V_DROP, refusal) : conclude(V_LOCAL, reason);
}

/* A socket of this host's for the flow: a connection, a request socket or TIME_WAIT is local,
 * as is an ACK a listener accepts as its cookie; V_CONTINUE otherwise. */
static __always_inline struct verdict owning_socket(void *ctx, struct packet *packet, int xdp)
{
    struct tcphdr *tcp = packet->tcp;
    struct bpf_sock *socket =
        bpf_skc_lookup_tcp(ctx, &packet->tuple, tuple_size(packet), BPF_F_CURRENT_NETNS, 0);
    if (!socket)
        return conclude(V_CONTINUE, 0);
    if (socket->state != BPF_TCP_LISTEN) {
        /* Connected, a request socket (NEW_SYN_RECV) or TIME_WAIT: sock_diag's "connected". */
        bpf_sk_release(socket);
        return deliverable(packet, FP_LOCAL_ESTABLISHED);
    }
    if (tcp->ack && !tcp->syn && !tcp->fin && !tcp->rst && (packet->config->flags & FP_F_CHECK_COOKIES)) {
        /* 0: a cookie this listener accepts; -EACCES: compared, not one; anything else: the
         * listener takes no cookies now (no overflow in two minutes, tcp_syncookies=0). */
        long checked = bpf_tcp_check_syncookie(socket, packet->inner,
                                               packet->ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr), tcp,
                                               sizeof(*tcp));
        /* An ACK compared and found no cookie is counted, and mostly forwarded: tc, which
         * forwards, checks (and counts) it, once. */
        /* And XDP takes a cookie ACK only with its checksum verified (second_chance_xdp), before
         * anything is counted: one it cannot verify is tc's to check and count. */
        if (xdp && (checked == -13 || (checked == 0 && !inner_verified(ctx, packet)))) {
            bpf_sk_release(socket);
            return conclude(V_TC, 0);
        }
        struct fp_listener_counts *counts = NULL;
        if (checked == 0 || checked == -13 /* EACCES */) {
            count(FP_COOKIE_CHECKS);
            if (packet->config->flags & FP_F_RESPONDER)
                counts = served_counts(socket);
        }
        if (checked == 0) {
            count_listener(counts, FP_L_COOKIE_ACKS_VALID);
            bpf_sk_release(socket);
            return deliverable(packet, FP_LOCAL_SYN_COOKIE);
        }
        if (checked == -13) {
            count(FP_COOKIE_ACKS_INVALID);
            count_listener(counts, FP_L_COOKIE_ACKS_INVALID);
        }
    }
    bpf_sk_release(socket);
    return conclude(V_CONTINUE, 0);
}

/* Decider.ownerVerdict: this host's flow, or the next hop's. */
static __always_inline struct verdict classify(void *ctx, struct packet *packet, int xdp)
{
    const struct fp_config *config = packet->config;
    struct tcphdr *tcp = packet->tcp;
    if (tcp->syn) {
        if ((config->flags & FP_F_RESPONDER) && !tcp->ack && !tcp->fin && !tcp->rst)
            return (config->flags & FP_F_LOOKUPS_UP) ? conclude(V_UP, FP_UP_LOOKUP_ELSEWHERE)
                                                     : conclude(V_RESPOND, FP_LOCAL_SYN);
        return deliverable(packet, FP_LOCAL_SYN);
    }
    if (config->flags & FP_F_LOOKUPS_UP)
        return conclude(V_UP, FP_UP_LOOKUP_ELSEWHERE);
    struct verdict owned = owning_socket(ctx, packet, xdp);
    if (owned.kind != V_CONTINUE)
        return owned;
    if (packet->next_hop >= packet->hop_count)
        return deliverable(packet, FP_LOCAL_LAST_RESORT);
    __be32 *hops = packet->data + HOPS_OFFSET;
    __u32 index = packet->next_hop & MAX_HLEN;
    if ((void *)(hops + index + 1) > packet->end)
        return conclude(V_UP, FP_UP_FAILED);
    __u32 hop = hops[index];
    __u8 flags = host4(hop);
    if (forbidden_hop(hop, flags))
        return conclude(V_DROP, FP_REFUSED_UNTRUSTED_HOP);
    /* Never to ourselves, under any of our addresses, as glb-redirect. */
    struct outer_headers *outer = packet->data + ETH_LENGTH;
    if ((void *)(outer + 1) > packet->end)
        return conclude(V_UP, FP_UP_FAILED);
    if (hop == config->self_ip4 || hop == outer->ip.daddr || local4_of(hop, flags) == FP_LOCAL_OWN)
        return deliverable(packet, FP_LOCAL_FORWARDED_TO_SELF);
    if (!in_prefixes(&fp_hops, hop))
        return conclude(V_DROP, FP_REFUSED_UNTRUSTED_HOP);
    packet->hop = hop;
    return conclude(V_FORWARD, FP_FORWARDED);
}

/* Everything after the outer headers: the GLB header, the inner packet, its owner. */
static __always_inline struct verdict decide(void *ctx, struct packet *packet, int xdp)
{
    struct verdict verdict = process_glb(packet);
    if (verdict.kind != V_CONTINUE)
        return verdict;
    verdict = process_inner(packet);
    if (verdict.kind != V_CONTINUE)
        return verdict;
    return classify(ctx, packet, xdp);
}

/* tc: makes the headers a decision reads linear, so that they can be read and rewritten in place;
 * V_CONTINUE when they are. The payload stays where the device put it (a NIC's pages, often):
 * copying it out would cost more than the decision, and nothing reads it. */
static __always_inline struct verdict tc_outer(struct __sk_buff *skb, struct packet *packet)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    /* Everything that is not UDP over IPv4 leaves at once. */
    if (data + UDP_OFFSET + sizeof(struct udphdr) > end) {
        if (skb->len < UDP_OFFSET + sizeof(struct udphdr) || bpf_skb_pull_data(skb, UDP_OFFSET + 8))
            return conclude(V_NOT_GUE, 0);
        data = (void *)(long)skb->data;
        end = (void *)(long)skb->data_end;
        if (data + UDP_OFFSET + sizeof(struct udphdr) > end)
            return conclude(V_NOT_GUE, 0);
    }
    struct iphdr *ip = data + ETH_LENGTH;
    if (ip->ihl != 5 && ((struct ethhdr *)data)->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP) {
        /* The UDP header is elsewhere: read its port to know whether this is GUE at all. */
        __u16 port = 0;
        if (bpf_skb_load_bytes(skb, ETH_LENGTH + (ip->ihl & 0xf) * 4 + 2, &port, sizeof(port)) == 0 &&
            port == packet->config->gue_port)
            return conclude(V_UP, FP_UP_OUTER_OPTIONS);
        return conclude(V_NOT_GUE, 0);
    }
    packet->data = data;
    packet->end = end;
    packet->frame_length = skb->len;
    packet->foreign = skb->pkt_type != PACKET_HOST;
    /* A GSO packet is many: gso_size marks one whose segments are not yet counted too (a virtio
     * or tap frame, gso_segs 0). A tag the device took off belongs to a VLAN interface, not to
     * the one this program delivers on. */
    packet->segmented = skb->gso_segs > 1 || skb->gso_size || skb->vlan_present;
    struct verdict verdict = process_outer(packet);
    if (verdict.kind != V_CONTINUE)
        return verdict;
    __u32 wanted = skb->len < HEADERS_MAX ? skb->len : HEADERS_MAX;
    if (data + wanted > end) {
        if (bpf_skb_pull_data(skb, wanted))
            return conclude(V_UP, FP_UP_OUTER_OPTIONS);
        packet->data = (void *)(long)skb->data;
        packet->end = (void *)(long)skb->data_end;
    }
    return conclude(V_CONTINUE, 0);
}

SEC("tc")
int second_chance_fast_path(struct __sk_buff *skb)
{
    struct packet packet = { .ifindex = skb->ifindex }; /* at tc ingress: the arrival interface */
    packet.config = current_config();
    if (!packet.config)
        return TC_ACT_OK;
    struct verdict verdict = tc_outer(skb, &packet);
    if (verdict.kind == V_CONTINUE)
        verdict = decide(skb, &packet, 0);
    if (verdict.kind == V_RESPOND) {
        int action = TC_ACT_OK;
        if (respond(skb, &packet, &action) == ANSWERED)
            return action;
        verdict = deliverable(&packet, FP_LOCAL_SYN);
    }
    switch (verdict.kind) {
    case V_UP:
        return up(verdict.reason);
    case V_DROP:
        return drop(verdict.reason);
    case V_LOCAL:
        return deliver(skb, &packet, verdict.reason);
    case V_FORWARD:
        return forward(skb, &packet);
    default:
        return TC_ACT_OK;
    }
}

/*
 * XDP: takes the outer headers off a local packet in place (the Ethernet header moved up to the
 * inner packet, its EtherType the inner family's) and passes it on: the stack builds its skb
 * from the inner packet, which meets GRO and then PREROUTING, rp_filter and INPUT on the
 * interface it arrived on, as the tc program's and the daemon's decapsulations do.
 */
static __always_inline int xdp_deliver(struct xdp_md *ctx, const struct packet *packet, enum fp_counter reason)
{
    struct ethhdr *eth = (void *)(long)ctx->data;
    if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
        return XDP_PASS; /* cannot happen: process_outer read it */
    struct ethhdr header = *eth;
    if (packet->ipv6)
        header.h_proto = bpf_htons(ETH_P_IPV6);
    /* Nothing is changed until the head has moved: a failure leaves the packet to tc whole. */
    if (bpf_xdp_adjust_head(ctx, (int)outer_length(packet)))
        return XDP_PASS;
    eth = (void *)(long)ctx->data;
    if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
        return XDP_DROP; /* cannot happen: the inner packet's headers were read */
    *eth = header;
    count_decided(reason);
    return XDP_PASS;
}

/* inet_proto_csum_replace4 on a checksum the packet carries whole (XDP sees no CHECKSUM_PARTIAL):
 * RFC 1624's update, a zero result written as 0xffff, as BPF_F_MARK_MANGLED_0 has tc write it. Both
 * arrive at the one representation in 1..0xffff of the same sum, so the bytes are tc's. */
static __always_inline __u16 checksum_replaced(__u16 check, __u32 from, __u32 to)
{
    __u16 updated = ~fold((__u64)(__u16)~check + (__u32)~from + to);
    return updated ? updated : 0xffff;
}

/*
 * Whether the outer UDP checksum is right, from headers alone. Called once the inner segment's
 * checksum is verified (xdp_forward), so that segment's sum is the negation of
 * its pseudo-header's: the datagram's sum is the UDP, GUE and GLB headers' and the inner IP
 * header's, less the inner pseudo-header's share that is not the addresses (which cancel). On a
 * veth a checksum the sender's stack left for the device to finish (CHECKSUM_PARTIAL) is not
 * right here, and goes to tc, whose helpers update it. The inner packet must end the datagram.
 */
static __attribute__((noinline)) int outer_checksum_valid(struct xdp_md *ctx, const struct packet *packet)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 headers = sizeof(struct udphdr) + sizeof(struct gue_header) + (packet->hlen & MAX_HLEN) * 4;
    __u8 *outer = data + ETH_LENGTH, *inner = data + ETH_LENGTH + OUTER_IP_LENGTH + headers;
    __u8 *cursor = outer + OUTER_IP_LENGTH;
    if (inner + sizeof(struct ipv6hdr) > (__u8 *)end || cursor + sizeof(struct udphdr) > (__u8 *)end)
        return 0;
    __u32 udp_length = (__u32)cursor[4] << 8 | cursor[5], segment, sum;
    if (packet->ipv6) {
        segment = (__u32)inner[4] << 8 | inner[5];
        if (sizeof(struct ipv6hdr) + segment + headers != udp_length)
            return 0;
        sum = bpf_csum_diff(NULL, 0, (__be32 *)inner, 8, 0);
    } else {
        __u32 total = (__u32)inner[2] << 8 | inner[3];
        if (total + headers != udp_length || total < sizeof(struct iphdr))
            return 0;
        segment = total - sizeof(struct iphdr);
        sum = bpf_csum_diff(NULL, 0, (__be32 *)inner, 12, 0);
    }
    __be32 inner_word = bpf_htonl(IPPROTO_TCP << 16 | segment), outer_word = bpf_htonl(IPPROTO_UDP << 16 | udp_length);
    sum = bpf_csum_diff(&inner_word, 4, &outer_word, 4, sum);
    sum = bpf_csum_diff(NULL, 0, (__be32 *)(outer + 12), 8, sum); /* the outer addresses */
    if (!sum_pieces(&cursor, end, headers, &sum)) /* at most 136 bytes: no piece of 256 */
        return 0;
    return fold(sum) == 0xffff;
}

/* Whether the frame was sent to `mac` (XDP sees frames to any address where the device is in
 * promiscuous mode; tc sees them marked PACKET_OTHERHOST). */
static __always_inline int addressed_to(const struct ethhdr *eth, const __u8 *mac)
{
    __u8 differs = 0;
    for (int index = 0; index < ETH_ALEN; index++)
        differs |= eth->h_dest[index] ^ mac[index];
    return !differs;
}

/*
 * XDP: a forward whose route leaves by the interface it arrived on, where the daemon lets XDP
 * send (FP_F_XDP_FORWARD: a driver whose XDP_TX reaches the wire; a veth's is lost unless its
 * peer runs an XDP program, which this side cannot see), rewritten in place as tc would and sent back out
 * (XDP_TX). Any other forward, one whose UDP checksum XDP cannot update as tc would, or one
 * without route or neighbour goes on to tc unchanged and uncounted.
 */
static __always_inline int xdp_forward(struct xdp_md *ctx, const struct packet *packet)
{
    if ((packet->config->flags & (FP_F_SELF_GONE | FP_F_XDP_FORWARD)) != FP_F_XDP_FORWARD)
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct outer_headers *outer = data + ETH_LENGTH;
    if ((void *)(outer + 1) > end)
        return XDP_PASS;
    __u16 check = outer->udp.check;
    if (check && (!inner_checksum_valid(ctx, packet) || !outer_checksum_valid(ctx, packet)))
        return XDP_PASS;
    struct bpf_fib_lookup route;
    if (route_to_hop(ctx, packet, outer, &route) != BPF_FIB_LKUP_RET_SUCCESS || route.ifindex != packet->ifindex)
        return XDP_PASS;
    /* The route's source MAC is the arrival interface's own: a frame to another host's (a device
     * in promiscuous mode) is one tc sends up and the stack drops, never one to send on. */
    if (!addressed_to(eth, route.smac))
        return XDP_PASS;
    struct forward_change change = rewrite_outer(eth, outer, packet, &route);
    if (check) {
        check = checksum_replaced(check, change.old_word, change.new_word);
        check = checksum_replaced(check, change.old_source, packet->config->self_ip4);
        outer->udp.check = checksum_replaced(check, change.old_destination, packet->hop);
    }
    count_decided(FP_FORWARDED);
    return XDP_TX;
}

/* The route back to a SYN's source from its destination, as this host's own output by `egress`:
 * BPF_FIB_LKUP_RET_SUCCESS with the neighbour's and the device's MACs, or why not (FWD_DISABLED
 * where the interface does not forward, as for route_to_hop). */
static __always_inline long route_back(struct xdp_md *ctx, const struct packet *packet, __u32 egress,
                                       struct bpf_fib_lookup *route)
{
    __builtin_memset(route, 0, sizeof(*route));
    route->l4_protocol = IPPROTO_TCP;
    route->sport = packet->tcp->dest;
    route->dport = packet->tcp->source;
    route->ifindex = egress;
    if (packet->ipv6) {
        struct ipv6hdr *ip6 = packet->inner;
        if ((void *)(ip6 + 1) > packet->end)
            return -1;
        route->family = 10; /* AF_INET6 */
        __builtin_memcpy(route->ipv6_src, &ip6->daddr, 16);
        __builtin_memcpy(route->ipv6_dst, &ip6->saddr, 16);
    } else {
        struct iphdr *ip4 = packet->inner;
        if ((void *)(ip4 + 1) > packet->end)
            return -1;
        route->family = 2; /* AF_INET */
        route->ipv4_src = ip4->daddr;
        route->ipv4_dst = ip4->saddr;
    }
    return bpf_fib_lookup(ctx, route, sizeof(*route), BPF_FIB_LOOKUP_OUTPUT);
}

/*
 * XDP: a SYN for a served listener becomes its SYN-ACK in place (the bytes tc's respond writes,
 * the route's MACs) and goes back out of the interface it arrived on (XDP_TX), where the daemon
 * lets XDP send (FP_F_XDP_FORWARD) and the route back leaves by that interface, its neighbour
 * known. Any other answer is tc's (TO_TC: the packet on unchanged), which plans it again: a plan
 * spends nothing of the listener's pass interval. `*action` is the XDP action when ANSWERED.
 */
static __always_inline enum answer xdp_respond(struct xdp_md *ctx, struct packet *packet, int *action)
{
    if (!(packet->config->flags & FP_F_XDP_FORWARD))
        return TO_TC;
    /* Whether XDP can send the answer at all, before a plan (which may spend the listener's
     * interval, and asks the kernel for a cookie): the route back leaves by the arrival interface,
     * its neighbour known, and the frame was addressed to that interface, not to another host's
     * link address (a device in promiscuous mode: tc sees it as such). The route is looked up in
     * the scratch, its MACs kept. The scratch is the CPU's fp_scratch, not the stack: the XDP
     * program's 512 bytes of stack are spent, its calls' included. */
    __u32 zero = 0;
    __u8 *scratch = bpf_map_lookup_elem(&fp_scratch, &zero);
    if (!scratch)
        return TO_TC;
    _Static_assert(sizeof(struct bpf_fib_lookup) <= SCRATCH, "the route fits the scratch");
    struct bpf_fib_lookup *route = (void *)scratch;
    if (route_back(ctx, packet, packet->ifindex, route) != BPF_FIB_LKUP_RET_SUCCESS ||
        route->ifindex != packet->ifindex)
        return TO_TC;
    struct ethhdr addresses;
    __builtin_memcpy(addresses.h_dest, route->dmac, ETH_ALEN);
    __builtin_memcpy(addresses.h_source, route->smac, ETH_ALEN);
    struct ethhdr *eth = packet->data;
    if ((void *)(eth + 1) > packet->end)
        return TO_TC;
    if (!addressed_to(eth, addresses.h_source))
        return TO_TC;
    struct reply_plan plan = {};
    struct fp_listener_counts *counts = NULL;
    __u32 egress = 0;
    /* Unanswered because the daemon's route back (its MSS) leaves by another interface than the
     * FIB's now: tc's to send. (No variable more: the XDP program's stack is at its limit.) */
    if (!prepare_answer(ctx, 1, packet, scratch, &plan, &counts, &egress))
        return egress && egress != packet->ifindex ? TO_TC : NOT_ANSWERED;
    __u32 frame_length = write_synack_frame(scratch, packet->inner, packet->end, packet->ipv6, packet->config, &plan);
    if (!frame_length) {
        count(FP_COOKIE_REPLY_FAILED);
        return NOT_ANSWERED;
    }
    __builtin_memcpy(scratch, &addresses, 2 * ETH_ALEN);
    /* The reply is shorter than the SYN with its outer headers: written over its start (whole
     * words of the scratch, its tail zero), then the frame cut to its length. */
    __u8 *data = packet->data;
    if (packet->ipv6) {
        if (data + ETH_LENGTH + 40 + 40 > (__u8 *)packet->end)
            return TO_TC;
        __builtin_memcpy(data, scratch, ETH_LENGTH + 40 + 40);
    } else {
        if (data + ETH_LENGTH + 20 + 40 > (__u8 *)packet->end)
            return TO_TC;
        __builtin_memcpy(data, scratch, ETH_LENGTH + 20 + 40);
    }
    /* Ethernet's shortest frame: an IPv4 SYN-ACK without timestamps is 58 bytes, and a driver's
     * XDP_TX need not pad what it sends (the scratch's zeros are the padding). */
    __u32 wire_length = frame_length < ETH_ZLEN ? ETH_ZLEN : frame_length;
    if (bpf_xdp_adjust_tail(ctx, (int)wire_length - (int)packet->frame_length)) {
        count(FP_COOKIE_REPLY_FAILED); /* cannot happen: the frame only shrinks */
        *action = XDP_DROP;
        return ANSWERED;
    }
    count_answer(counts);
    *action = XDP_TX;
    return ANSWERED;
}

SEC("xdp")
int second_chance_xdp(struct xdp_md *ctx)
{
    struct packet packet = {
        .data = (void *)(long)ctx->data,
        .end = (void *)(long)ctx->data_end,
        .ifindex = ctx->ingress_ifindex,
    };
    packet.frame_length = packet.end - packet.data;
    packet.config = current_config();
    if (!packet.config)
        return XDP_PASS;
    struct ethhdr *eth = packet.data;
    if ((void *)(eth + 1) > packet.end)
        return XDP_PASS;
    /* Group addresses: ip_rcv takes no unicast IP from them. A tag the device took off cannot be
     * seen here; see the README's limits. */
    packet.foreign = eth->h_dest[0] & 1;
    /* A frame longer than the device's MTU is many packets in one (a veth peer's GSO packet):
     * tc sees its skb's GSO fields and sends it up. */
    __u32 mtu_length = 0;
    packet.segmented = bpf_check_mtu(ctx, 0, &mtu_length, 0, 0) != BPF_MTU_CHK_RET_SUCCESS;
    struct verdict verdict = process_outer(&packet);
    if (verdict.kind == V_CONTINUE)
        verdict = decide(ctx, &packet, 1);
    /* The driver's checksum verdict was the outer datagram's, and stays on what XDP passes up
     * decapsulated: a segment XDP cannot verify goes to tc, whose decapsulation drops it, and
     * none is answered. A forward needs it only to update a UDP checksum (xdp_forward; GLB's
     * director sends none), a drop not at all: tc decides either without reading the segment. */
    if ((verdict.kind == V_LOCAL || verdict.kind == V_RESPOND) && !inner_verified(ctx, &packet))
        verdict = conclude(V_TC, 0);
    if (verdict.kind == V_RESPOND) {
        int action = XDP_PASS;
        enum answer answer = xdp_respond(ctx, &packet, &action);
        if (answer == ANSWERED)
            return action;
        verdict = answer == TO_TC ? conclude(V_TC, 0) : deliverable(&packet, FP_LOCAL_SYN);
    }
    switch (verdict.kind) {
    case V_DROP:
        /* The interface a bond's slave received on is not the bond the route back names: tc,
         * which sees the bond, judges the way back. */
        if (verdict.reason == FP_REFUSED_REVERSE_PATH)
            return XDP_PASS;
        drop(verdict.reason);
        return XDP_DROP;
    case V_LOCAL:
        return xdp_deliver(ctx, &packet, verdict.reason);
    case V_FORWARD:
        return xdp_forward(ctx, &packet);
    default:
        /* To the queue, and what XDP leaves to tc (V_TC, answers it cannot send included):
         * tc decides them, and counts them, as it would without this program. */
        return XDP_PASS;
    }
}

/*
 * What sock_diag cannot tell the listener monitor cheaply: a listener's TCP_MAXSEG, which it does
 * not report, and its SYN queue, which it counts only by walking every established socket. Run
 * through BPF_PROG_TEST_RUN (never attached) on a frame holding an IP and a TCP header towards
 * the listener's address and port; it finds the listener as a SYN would and writes its user_mss
 * and its SYN queue's length (struct fp_listener_reading) over the frame's first bytes. TC_ACT_SHOT:
 * no listener there.
 */

SEC("tc")
int listener_probe(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct bpf_sock_tuple tuple = {};
    __u32 tuple_size;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_SHOT;
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        struct tcphdr *tcp = (void *)(ip6 + 1);
        if ((void *)(tcp + 1) > end)
            return TC_ACT_SHOT;
        __builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
        __builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
        tuple.ipv6.sport = tcp->source;
        tuple.ipv6.dport = tcp->dest;
        tuple_size = sizeof(tuple.ipv6);
    } else {
        struct iphdr *ip4 = (void *)(eth + 1);
        struct tcphdr *tcp = (void *)(ip4 + 1);
        if ((void *)(tcp + 1) > end)
            return TC_ACT_SHOT;
        tuple.ipv4.saddr = ip4->saddr;
        tuple.ipv4.daddr = ip4->daddr;
        tuple.ipv4.sport = tcp->source;
        tuple.ipv4.dport = tcp->dest;
        tuple_size = sizeof(tuple.ipv4);
    }
    struct bpf_sock *socket = bpf_skc_lookup_tcp(skb, &tuple, tuple_size, BPF_F_CURRENT_NETNS, 0);
    if (!socket)
        return TC_ACT_SHOT;
    struct fp_listener_reading reading = {};
    int found = socket->state == BPF_TCP_LISTEN;
    struct tcp_sock___proxyside *tp = found ? (void *)bpf_skc_to_tcp_sock(socket) : NULL;
    if (tp) {
        reading.user_mss = tp->rx_opt.user_mss;
        reading.syn_queue = (__u32)tp->inet_conn.icsk_accept_queue.qlen.counter;
        reading.port = (__u16)socket->src_port;
        reading.bound_dev_if = socket->bound_dev_if;
        reading.family = socket->family;
        if (socket->family == 2 /* AF_INET */) {
            reading.address[0] = socket->src_ip4;
        } else {
            reading.address[0] = socket->src_ip6[0];
            reading.address[1] = socket->src_ip6[1];
            reading.address[2] = socket->src_ip6[2];
            reading.address[3] = socket->src_ip6[3];
        }
    }
    bpf_sk_release(socket);
    if (!tp)
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, 0, &reading, sizeof(reading), 0))
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}
