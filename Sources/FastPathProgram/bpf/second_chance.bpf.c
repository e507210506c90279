// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * second-chance's decision at tc ingress, in front of the NFQUEUE rule.
 *
 * The same decision as SecondChanceCore's Decider (glb-redirect's order inside the trust
 * boundary), for what can be decided here exactly as the daemon would: inner IPv4 and IPv6 TCP.
 * Everything else, and anything uncertain, leaves unchanged (TC_ACT_OK) and reaches the NFQUEUE
 * rule, where the daemon decides it. The differential test (FastPathParityTests) runs both
 * decisions on the same packets.
 *
 *   malformed GUE, an outsider, too many hops   -> dropped, counted
 *   SYN                                         -> local
 *   a socket in any state but LISTEN            -> local
 *   LISTEN and a cookie the kernel accepts      -> local
 *   (a SYN, or a segment finding only a listener, goes up while the SYN-cookie responder serves)
 *   no hops left                                -> local
 *   next hop: this host                         -> local
 *   next hop: an allowed proxy                  -> rewritten and sent to it (bpf_fib_lookup)
 *   next hop: anything else                     -> dropped, counted
 *   local: an inner destination this host owns, a source that is not martian, or dropped;
 *          decapsulated here and delivered on the interface it arrived on.
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

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct fp_config);
} fp_config SEC(".maps");

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

/* This host's addresses (as /32 and /128) and its local routes, from the daemon's rtnetlink watcher. */
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

/* Directed broadcast addresses of this host's subnets: never a hop. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, FP_MAX_PREFIXES);
    __type(key, __u32);
    __type(value, __u8);
} fp_broadcast4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FP_COUNTER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} fp_counters SEC(".maps");

#define ETH_LENGTH 14
#define OUTER_IP_LENGTH 20
#define UDP_OFFSET (ETH_LENGTH + OUTER_IP_LENGTH)
#define GUE_OFFSET (UDP_OFFSET + 8)
#define PRIVATE_OFFSET (GUE_OFFSET + 4)
#define HOPS_OFFSET (PRIVATE_OFFSET + 4)
/* hlen is 5 bits: at most 31 words of private data, so 30 hops. */
#define MAX_HLEN 31

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline void count(enum fp_counter slot)
{
    __u32 key = slot;
    __u64 *value = bpf_map_lookup_elem(&fp_counters, &key);
    if (value)
        *value += 1;
}

static __always_inline int up(enum fp_counter reason)
{
    count(reason);
    return TC_ACT_OK;
}

static __always_inline int drop(enum fp_counter reason)
{
    count(FP_TOTAL);
    count(reason);
    return TC_ACT_SHOT;
}

static __always_inline __u16 fold(__u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

static __always_inline int in_prefixes(void *trie, __u32 address)
{
    struct fp_ip4_prefix key = { .prefix_length = 32, .address = address };
    return bpf_map_lookup_elem(trie, &key) != NULL;
}

static __always_inline int owns4(__u32 address)
{
    return in_prefixes(&fp_local4, address);
}

static __always_inline int owns6(const struct in6_addr *address)
{
    struct fp_ip6_prefix key = { .prefix_length = 128 };
    __builtin_memcpy(key.address, address, 16);
    return bpf_map_lookup_elem(&fp_local6, &key) != NULL;
}

/* LocalAddresses.isMartianSource: loopback, "this network", multicast, reserved, or ours. */
static __always_inline int martian4(__u32 address)
{
    __u32 first = bpf_ntohl(address) >> 24;
    return first == 0 || first == 127 || first >= 224 || owns4(address);
}

/* ::/96 and ::ffff:0:0/96 (never a source on the wire), multicast, or ours. */
static __always_inline int martian6(const struct in6_addr *address)
{
    const __u32 *words = address->in6_u.u6_addr32;
    if (words[0] == 0 && words[1] == 0 && (words[2] == 0 || words[2] == bpf_htonl(0xffff)))
        return 1;
    return address->in6_u.u6_addr8[0] == 0xff || owns6(address);
}

/* PeerPolicy.isForbiddenHop: 0/8, 127/8, 224/4 and 240/4, whatever --allow-hop says. */
static __always_inline int forbidden_hop(__u32 hop)
{
    __u32 first = bpf_ntohl(hop) >> 24;
    return first == 0 || first == 127 || first >= 224 || bpf_map_lookup_elem(&fp_broadcast4, &hop) != NULL;
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
        if (!owns6(&ip6->daddr))
            return FP_REFUSED_NOT_LOCAL_DESTINATION;
        return martian6(&ip6->saddr) ? FP_REFUSED_MARTIAN_SOURCE : 0;
    }
    struct iphdr *ip4 = inner;
    if ((void *)(ip4 + 1) > end)
        return FP_REFUSED_NOT_LOCAL_DESTINATION;
    if ((bpf_ntohl(ip4->daddr) >> 24) == 127 || !owns4(ip4->daddr))
        return FP_REFUSED_NOT_LOCAL_DESTINATION;
    return martian4(ip4->saddr) ? FP_REFUSED_MARTIAN_SOURCE : 0;
}

/*
 * Takes the outer IPv4, UDP, GUE and private headers off and hands the inner packet to the stack
 * on the interface the GUE packet arrived on, as cls_redirect does: the inner packet meets
 * PREROUTING, rp_filter and INPUT on that interface, as one decapsulated by the daemon does.
 */
static __always_inline int deliver(struct __sk_buff *skb, __u32 hlen, int ipv6, enum fp_counter reason)
{
    __s32 outer = OUTER_IP_LENGTH + 8 + 4 + hlen * 4;
    /* No checksum flag: a CHECKSUM_UNNECESSARY mark for the outer UDP datagram goes, and the
     * stack verifies the inner segment itself. */
    if (bpf_skb_adjust_room(skb, -outer, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
        return up(FP_UP_FAILED);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_SHOT; /* cannot happen: the MAC header stays */
    if (ipv6)
        eth->h_proto = bpf_htons(ETH_P_IPV6);
    count(FP_TOTAL);
    count(reason);
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/*
 * GUEForwarding.rewrite: next_hop + 1, outer source --self, outer destination the hop, the IP
 * checksum recomputed, a UDP checksum updated (zero stays zero). The TTL stays: the hop sees the
 * packet the raw socket would have sent. The route and the neighbour come from the FIB; without
 * either the packet goes up, and the daemon's raw socket sends it.
 */
static __always_inline int forward(struct __sk_buff *skb, const struct fp_config *config, __u32 hop, __u8 next_hop)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (data + HOPS_OFFSET > end)
        return up(FP_UP_FAILED);
    struct ethhdr *eth = data;
    struct iphdr *ip = data + ETH_LENGTH;
    struct udphdr *udp = data + UDP_OFFSET;
    __u8 *private = data + PRIVATE_OFFSET;

    struct bpf_fib_lookup route = {
        .family = 2 /* AF_INET */,
        .l4_protocol = IPPROTO_UDP,
        .sport = udp->source,
        .dport = udp->dest,
        .tot_len = bpf_ntohs(ip->tot_len),
        .tos = ip->tos,
        .ipv4_src = config->self_ip4,
        .ipv4_dst = hop,
        .ifindex = skb->ifindex, /* at tc ingress: the interface it arrived on */
    };
    long found = bpf_fib_lookup(skb, &route, sizeof(route), 0);
    if (found == BPF_FIB_LKUP_RET_FWD_DISABLED) {
        /* ip_forward off: the packet leaves as the raw socket's would, from this host. */
        route.family = 2;
        route.l4_protocol = IPPROTO_UDP;
        route.sport = udp->source;
        route.dport = udp->dest;
        route.tot_len = bpf_ntohs(ip->tot_len);
        route.tos = ip->tos;
        route.ipv4_src = config->self_ip4;
        route.ipv4_dst = hop;
        route.ifindex = skb->ifindex;
        found = bpf_fib_lookup(skb, &route, sizeof(route), BPF_FIB_LOOKUP_OUTPUT);
    }
    if (found != BPF_FIB_LKUP_RET_SUCCESS)
        return up(FP_UP_NO_ROUTE);

    __u16 old_word = *(__u16 *)(private + 2); /* next_hop, then hop_count */
    private[2] = next_hop + 1;
    __u16 new_word = *(__u16 *)(private + 2);
    __u32 old_source = ip->saddr, old_destination = ip->daddr;
    ip->saddr = config->self_ip4;
    ip->daddr = hop;
    ip->check = 0;
    ip->check = ~fold((__u32)bpf_csum_diff(NULL, 0, (__be32 *)ip, OUTER_IP_LENGTH, 0));
    int udp_checksum = udp->check != 0;
    __builtin_memcpy(eth->h_dest, route.dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, route.smac, ETH_ALEN);

    if (udp_checksum) {
        /* The helpers keep a checksum the device is to finish (CHECKSUM_PARTIAL) right too. */
        __u32 offset = UDP_OFFSET + 6;
        __u64 flags = BPF_F_MARK_MANGLED_0;
        if (bpf_l4_csum_replace(skb, offset, old_word, new_word, flags | 2) ||
            bpf_l4_csum_replace(skb, offset, old_source, config->self_ip4, flags | BPF_F_PSEUDO_HDR | 4) ||
            bpf_l4_csum_replace(skb, offset, old_destination, hop, flags | BPF_F_PSEUDO_HDR | 4))
            return TC_ACT_SHOT; /* cannot happen: the offset is inside the linear head */
    }
    count(FP_TOTAL);
    count(FP_FORWARDED);
    return bpf_redirect(route.ifindex, 0);
}

SEC("tc")
int second_chance_fast_path(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;

    /* Everything that is not UDP over IPv4 leaves at once. */
    if (data + UDP_OFFSET + 8 > end) {
        if (skb->len < UDP_OFFSET + 8 || bpf_skb_pull_data(skb, UDP_OFFSET + 8))
            return TC_ACT_OK;
        data = (void *)(long)skb->data;
        end = (void *)(long)skb->data_end;
        if (data + UDP_OFFSET + 8 > end)
            return TC_ACT_OK;
    }
    struct ethhdr *eth = data;
    struct iphdr *ip = data + ETH_LENGTH;
    if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
        return TC_ACT_OK;

    __u32 zero = 0;
    const struct fp_config *config = bpf_map_lookup_elem(&fp_config, &zero);
    if (!config)
        return TC_ACT_OK;
    if (ip->ihl != 5) {
        /* The UDP header is elsewhere: read its port to know whether this is GUE at all. */
        __u16 port = 0;
        if (bpf_skb_load_bytes(skb, ETH_LENGTH + (ip->ihl & 0xf) * 4 + 2, &port, sizeof(port)) == 0 &&
            port == config->gue_port)
            return up(FP_UP_OUTER_OPTIONS);
        return TC_ACT_OK;
    }
    struct udphdr *udp = data + UDP_OFFSET;
    if (udp->dest != config->gue_port)
        return TC_ACT_OK;
    if (config->layout != FP_LAYOUT)
        return up(FP_UP_UNCONFIGURED);

    /* What ip_rcv checks before any netfilter hook: the queue never sees a packet it drops, so
     * neither is one decided here. Padding after the datagram goes up too (ip_rcv trims it). */
    __u32 total = bpf_ntohs(ip->tot_len);
    if (skb->pkt_type != PACKET_HOST || ip->version != 4 || total + ETH_LENGTH != skb->len)
        return up(FP_UP_OUTER_UNCHECKED);
    if (fold((__u32)bpf_csum_diff(NULL, 0, (__be32 *)ip, OUTER_IP_LENGTH, 0)) != 0xffff)
        return up(FP_UP_OUTER_UNCHECKED);
    /* Fragments meet the defragmenter before the queue; a GSO packet is many. */
    if ((ip->frag_off & bpf_htons(0x3fff)) || skb->gso_segs > 1)
        return up(FP_UP_OUTER_OPTIONS);
    if (!owns4(ip->daddr))
        return up(FP_UP_NOT_ADDRESSED_HERE);

    /* From here the whole packet is read and maybe rewritten in place: make it linear. */
    if (data + skb->len > end) {
        if (bpf_skb_pull_data(skb, skb->len))
            return up(FP_UP_OUTER_OPTIONS);
        data = (void *)(long)skb->data;
        end = (void *)(long)skb->data_end;
    }
    if (data + HOPS_OFFSET > end)
        return up(FP_UP_OUTER_UNCHECKED); /* too short for GLB's GUE: the queue says why */
    ip = data + ETH_LENGTH;
    udp = data + UDP_OFFSET;

    /* GUEPacket.parse, check by check. Lengths are the datagram's (`datagram` bytes from the
     * GUE header on); every access is also checked against the packet's end. */
    __u32 udp_length = bpf_ntohs(udp->len);
    if (udp_length < 8 || OUTER_IP_LENGTH + udp_length > total)
        return drop(FP_DROP_UDP_TRUNCATED);
    if (OUTER_IP_LENGTH + udp_length != total)
        return up(FP_UP_OUTER_UNCHECKED); /* bytes after the datagram: the queue sees them too */
    __u32 datagram = udp_length - 8;
    __u8 *gue = data + GUE_OFFSET;
    if (datagram < 4)
        return drop(FP_DROP_GUE_TRUNCATED);
    if (gue[0] & 0xe0)
        return drop(FP_DROP_GUE_VERSION); /* version 0 data messages only: GLB sends no control */
    __u32 hlen = gue[0] & 0x1f;
    if (gue[2] | gue[3])
        return drop(FP_DROP_GUE_FLAGS);
    if (hlen < 1)
        return drop(FP_DROP_GUE_HLEN);
    if (datagram - 4 < hlen * 4)
        return drop(FP_DROP_GUE_TRUNCATED);
    __u8 *private = data + PRIVATE_OFFSET;
    __u8 hop_count = private[3];
    if (hlen != (__u32)hop_count + 1)
        return drop(FP_DROP_GUE_HLEN);
    if (private[0] | private[1])
        return drop(FP_DROP_GUE_PRIVATE_TYPE);
    __u8 inner_protocol = gue[1];
    if (inner_protocol != 4 && inner_protocol != 41)
        return drop(FP_DROP_INNER_PROTOCOL);
    if (!in_prefixes(&fp_sources, ip->saddr))
        return drop(FP_REFUSED_UNTRUSTED_SOURCE);
    if (hop_count > config->max_hops)
        return drop(FP_REFUSED_TOO_MANY_HOPS);
    __u8 next_hop = private[2];
    __u32 outer_destination = ip->daddr;

    /* InnerPacket.classify, for the TCP it decides; the rest goes up. */
    int ipv6 = inner_protocol == 41;
    __u32 inner_offset = PRIVATE_OFFSET + (hlen & MAX_HLEN) * 4;
    __u32 available = datagram - 4 - hlen * 4; /* inner bytes */
    void *inner = data + inner_offset;
    struct tcphdr *tcp;
    struct bpf_sock_tuple tuple = {};
    __u32 tuple_size;
    if (!ipv6) {
        struct iphdr *ip4 = inner;
        if (available < sizeof(*ip4))
            return drop(FP_DROP_INNER_TRUNCATED);
        if ((void *)(ip4 + 1) > end)
            return up(FP_UP_FAILED);
        if (ip4->version != 4)
            return drop(FP_DROP_INNER_VERSION);
        __u32 ihl = ip4->ihl * 4, length = bpf_ntohs(ip4->tot_len);
        if (ihl < 20 || length < ihl || length > available)
            return drop(FP_DROP_INNER_TRUNCATED);
        __u16 fragment = bpf_ntohs(ip4->frag_off) & 0x3fff;
        __u8 protocol = ip4->protocol;
        if (fragment & 0x1fff) {
            if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_ICMP)
                return up(FP_UP_INNER_FRAGMENT);
            return drop(FP_DROP_INNER_TRANSPORT);
        }
        if (protocol == IPPROTO_UDP || protocol == IPPROTO_ICMP)
            return up(FP_UP_INNER_NOT_TCP);
        if (protocol != IPPROTO_TCP)
            return drop(FP_DROP_INNER_TRANSPORT);
        if (length - ihl < sizeof(*tcp))
            return drop(FP_DROP_INNER_TRUNCATED);
        if (ihl != 20)
            return up(FP_UP_INNER_NOT_TCP); /* inner IPv4 options */
        if (fragment)
            return up(FP_UP_INNER_FRAGMENT); /* a first fragment */
        tcp = (void *)(ip4 + 1);
        if ((void *)(tcp + 1) > end)
            return up(FP_UP_FAILED);
        tuple.ipv4.saddr = ip4->saddr;
        tuple.ipv4.daddr = ip4->daddr;
        tuple.ipv4.sport = tcp->source;
        tuple.ipv4.dport = tcp->dest;
        tuple_size = sizeof(tuple.ipv4);
    } else {
        struct ipv6hdr *ip6 = inner;
        if (available < sizeof(*ip6))
            return drop(FP_DROP_INNER_TRUNCATED);
        if ((void *)(ip6 + 1) > end)
            return up(FP_UP_FAILED);
        if (ip6->version != 6)
            return drop(FP_DROP_INNER_VERSION);
        __u32 payload = bpf_ntohs(ip6->payload_len);
        if (sizeof(*ip6) + payload > available)
            return drop(FP_DROP_INNER_TRUNCATED);
        __u8 next = ip6->nexthdr;
        /* Extension headers (hop-by-hop, routing, fragment, destination options), UDP, ICMPv6. */
        if (next == 0 || next == 43 || next == 44 || next == 60 || next == IPPROTO_UDP || next == 58)
            return up(FP_UP_INNER_NOT_TCP);
        if (next != IPPROTO_TCP)
            return drop(FP_DROP_INNER_TRANSPORT);
        if (payload < sizeof(*tcp))
            return drop(FP_DROP_INNER_TRUNCATED);
        tcp = (void *)(ip6 + 1);
        if ((void *)(tcp + 1) > end)
            return up(FP_UP_FAILED);
        __builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
        __builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
        tuple.ipv6.sport = tcp->source;
        tuple.ipv6.dport = tcp->dest;
        tuple_size = sizeof(tuple.ipv6);
    }

    /* Decider.ownerVerdict. */
    enum fp_counter reason;
    __u8 flags = ((__u8 *)tcp)[13];
    if (flags & TCP_FLAG_SYN) {
        if (config->flags & FP_F_RESPONDER)
            return up(FP_UP_RESPONDER);
        reason = FP_LOCAL_SYN;
        goto local;
    }
    if (config->flags & FP_F_LOOKUPS_UP)
        return up(FP_UP_LOOKUP_ELSEWHERE);
    struct bpf_sock *socket = bpf_skc_lookup_tcp(skb, &tuple, tuple_size, BPF_F_CURRENT_NETNS, 0);
    if (socket) {
        if (socket->state != BPF_TCP_LISTEN) {
            /* Connected, a request socket (NEW_SYN_RECV) or TIME_WAIT: sock_diag's "connected". */
            bpf_sk_release(socket);
            reason = FP_LOCAL_ESTABLISHED;
            goto local;
        }
        if (config->flags & FP_F_RESPONDER) {
            bpf_sk_release(socket);
            return up(FP_UP_RESPONDER);
        }
        if ((flags & (TCP_FLAG_ACK | TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)) == TCP_FLAG_ACK &&
            (config->flags & FP_F_CHECK_COOKIES)) {
            /* 0: a cookie this listener accepts; -EACCES: compared, not one; anything else: the
             * listener takes no cookies now (no overflow in two minutes, tcp_syncookies=0). */
            long checked = bpf_tcp_check_syncookie(socket, inner, ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr),
                                                   tcp, sizeof(*tcp));
            if (checked == 0 || checked == -13 /* EACCES */)
                count(FP_COOKIE_CHECKS);
            if (checked == 0) {
                bpf_sk_release(socket);
                reason = FP_LOCAL_SYN_COOKIE;
                goto local;
            }
            if (checked == -13)
                count(FP_COOKIE_ACKS_INVALID);
        }
        bpf_sk_release(socket);
    }

    if (next_hop >= hop_count) {
        reason = FP_LOCAL_LAST_RESORT;
        goto local;
    }
    __u32 hop_offset = HOPS_OFFSET + (next_hop & 0x1f) * 4;
    if (data + hop_offset + 4 > end)
        return up(FP_UP_FAILED);
    __u32 hop = *(__u32 *)(data + hop_offset);
    if (forbidden_hop(hop))
        return drop(FP_REFUSED_UNTRUSTED_HOP);
    /* Never to ourselves, under any of our addresses, as glb-redirect. */
    if (hop == config->self_ip4 || hop == outer_destination || owns4(hop)) {
        reason = FP_LOCAL_FORWARDED_TO_SELF;
        goto local;
    }
    if (!in_prefixes(&fp_hops, hop))
        return drop(FP_REFUSED_UNTRUSTED_HOP);
    return forward(skb, config, hop, next_hop);

local:;
    enum fp_counter refusal = local_refusal(inner, end, ipv6);
    if (refusal)
        return drop(refusal);
    return deliver(skb, hlen & MAX_HLEN, ipv6, reason);
}
