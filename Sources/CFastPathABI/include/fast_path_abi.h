/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The contract between second-chance's tc program (Sources/FastPathProgram/bpf) and the daemon
 * that loads it: map layouts, the configuration word, the counter slots. Included by both sides;
 * a change to anything here bumps FP_LAYOUT, and a daemon finding pinned maps of another layout
 * replaces them instead of reading them.
 */
#ifndef PROXYSIDE_FAST_PATH_ABI_H
#define PROXYSIDE_FAST_PATH_ABI_H

#ifdef __bpf__
#include <linux/types.h>
#else
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif

#define FP_LAYOUT 1

/* Addresses and ports are in network byte order unless a field says otherwise. */
struct fp_config {
    __u32 layout;      /* FP_LAYOUT of the daemon that wrote it; 0: not configured, pass all */
    __u32 self_ip4;    /* --self: the source of forwarded packets */
    __u16 gue_port;    /* --gue-port */
    __u8 max_hops;     /* --max-hops */
    __u8 flags;        /* FP_F_* */
};

/* Cookie ACKs may be taken here (--no-cookie-check clears it). */
#define FP_F_CHECK_COOKIES 0x01
/* The SYN-cookie responder answers for some listener: SYNs, and segments that find only a
 * listener (cookie ACKs among them), go up to it, where its per-listener counts are kept. */
#define FP_F_RESPONDER 0x02
/* Sockets are looked up in another namespace (--netns): every look-up goes up. */
#define FP_F_LOOKUPS_UP 0x04

struct fp_ip4_prefix {
    __u32 prefix_length; /* LPM trie key: the length comes first */
    __u32 address;
};

struct fp_ip6_prefix {
    __u32 prefix_length;
    __u8 address[16];
};

#define FP_MAX_PREFIXES 4096
#define FP_MAX_ADDRESSES 65536

/*
 * Counter slots, per CPU. The first block mirrors the queue's counters (SecondChanceCore's
 * CounterName); FP_UP_* say why a packet went up to the queue unchanged.
 */
enum fp_counter {
    FP_TOTAL,
    FP_LOCAL_SYN,
    FP_LOCAL_ESTABLISHED,
    FP_LOCAL_SYN_COOKIE,
    FP_LOCAL_LAST_RESORT,
    FP_LOCAL_FORWARDED_TO_SELF,
    FP_FORWARDED,
    FP_DROP_UDP_TRUNCATED,
    FP_DROP_GUE_TRUNCATED,
    FP_DROP_GUE_VERSION,
    FP_DROP_GUE_FLAGS,
    FP_DROP_GUE_HLEN,
    FP_DROP_GUE_PRIVATE_TYPE,
    FP_DROP_INNER_PROTOCOL,
    FP_DROP_INNER_TRUNCATED,
    FP_DROP_INNER_VERSION,
    FP_DROP_INNER_TRANSPORT,
    FP_REFUSED_UNTRUSTED_SOURCE,
    FP_REFUSED_TOO_MANY_HOPS,
    FP_REFUSED_UNTRUSTED_HOP,
    FP_REFUSED_NOT_LOCAL_DESTINATION,
    FP_REFUSED_MARTIAN_SOURCE,
    FP_COOKIE_CHECKS,
    FP_COOKIE_ACKS_INVALID,
    /* Sent up unchanged, by reason. */
    FP_UP_UNCONFIGURED,      /* no configuration yet (or of another layout) */
    FP_UP_OUTER_UNCHECKED,   /* what ip_rcv would judge: bad checksum, length, padding, not for this MAC */
    FP_UP_OUTER_OPTIONS,     /* outer IPv4 options, fragments, GSO, a non-linear head */
    FP_UP_NOT_ADDRESSED_HERE,/* the outer destination is not this host's */
    FP_UP_INNER_NOT_TCP,     /* inner UDP, ICMP (path MTU included), IPv4 options, IPv6 extensions */
    FP_UP_INNER_FRAGMENT,
    FP_UP_RESPONDER,         /* a SYN, or a listener's segment, while the SYN-cookie responder serves */
    FP_UP_LOOKUP_ELSEWHERE,  /* --netns */
    FP_UP_NO_ROUTE,          /* no route or neighbour to the hop (the raw socket resolves it) */
    FP_UP_FAILED,            /* a helper failed (adjusting the packet) */
    FP_COUNTER_COUNT
};

#endif
