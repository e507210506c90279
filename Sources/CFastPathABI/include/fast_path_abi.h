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

#define FP_LAYOUT 9

/* Addresses and ports are in network byte order unless a field says otherwise. */
struct fp_config {
    __u32 layout;      /* FP_LAYOUT of the daemon that wrote it; 0: not configured, pass all */
    __u32 self_ip4;    /* --self: the source of forwarded packets */
    __u16 gue_port;    /* --gue-port */
    __u8 max_hops;     /* --max-hops */
    __u8 flags;        /* FP_F_* */
    __u32 reserved;
    /* The SYN-cookie responder's (fp_listeners says which listeners it serves): */
    __u64 pass_interval_ns; /* --cookie-pass-ms: one SYN per listener and interval to the kernel */
    __u8 reply_ttl;         /* net.ipv4.ip_default_ttl: an IPv4 SYN-ACK's TTL */
    __u8 tcp_options;       /* FP_TCP_*: what the host's sysctls let a cookie SYN-ACK offer */
    __u8 reply_hop_limit;   /* net.ipv6.conf.default.hop_limit: an IPv6 SYN-ACK's hop limit */
    __u8 reserved2[5];
};

/* The values of fp_hosts4/6 and fp_local4/6: this host's own address or local route, or an
 * address of the sockets' namespace (--netns) that the host routes there: a destination, nothing
 * more (it neither makes a source martian nor a hop this host). */
#define FP_LOCAL_OWN 1
#define FP_LOCAL_DELIVERABLE 2
/* fp_hosts4 only, alone or beside one of the two: a directed broadcast address of one of this
 * host's subnets, never a source or a hop. One look-up answers all three questions. */
#define FP_LOCAL_BROADCAST 4

/* Cookie ACKs may be taken here (--no-cookie-check clears it). */
#define FP_F_CHECK_COOKIES 0x01
/* The SYN-cookie responder serves some listener (fp_listeners): the program answers their SYNs
 * with the kernel's cookies and counts their cookie ACKs. */
#define FP_F_RESPONDER 0x02
/* Sockets are looked up in another namespace (--netns): every look-up goes up. */
#define FP_F_LOOKUPS_UP 0x04
/* --self is not this host's address now: nothing may leave with it, so forwards go up (the queue
 * drops them, counted as failed forwards) until it is again. */
#define FP_F_SELF_GONE 0x08
/* The XDP entry point may send a forward or a SYN-cookie answer back out of the interface the
 * packet arrived on (XDP_TX): --xdp-forward on, or auto where no interface is a veth (whose
 * XDP_TX is lost unless its peer runs an XDP program). */
#define FP_F_XDP_FORWARD 0x10

/* tcp_timestamps=2 (a TSval can carry the options to the kernel), tcp_sack, tcp_window_scaling. */
#define FP_TCP_TIMESTAMPS_ENCODABLE 0x01
#define FP_TCP_SACK 0x02
#define FP_TCP_WINDOW_SCALING 0x04

/* A listener, as sock_diag and bpf_sock name it: its own bound address (zero: the wildcard). */
struct fp_listener_key {
    __u8 family;       /* 4 or 6 (a dual-stack IPv6 listener is 6, whatever its SYNs are) */
    __u8 reserved;
    __u16 port;
    __u8 address[16];  /* IPv4: the first 4 bytes */
};

/* What the monitor knows of a listener it serves (written by the daemon only). */
struct fp_listener {
    __u32 receive_buffer; /* the listener's: the SYN-ACK's window is its full space */
    __u8 window_scale;    /* the scale the kernel gives a cookie child of this listener */
    __u8 flags;           /* FP_L_* */
    __u16 reserved;
};

/* The accept queue is full: the kernel would drop the handshake's ACK, so SYNs go to it. */
#define FP_L_ACCEPT_QUEUE_FULL 0x01

/* Per listener and CPU, written by the program only (the daemon makes and removes entries). */
enum fp_listener_count {
    FP_L_COOKIES_SENT,
    FP_L_COOKIE_ACKS_VALID,
    FP_L_COOKIE_ACKS_INVALID,
    FP_L_SYNS_PASSED,
    FP_L_COUNT
};

struct fp_listener_counts {
    __u64 count[FP_L_COUNT];
};

/* Per listener, shared by the CPUs (fp_listen_pass; the daemon makes and removes entries with the
 * counts'): when the program last let one of its SYNs through to the kernel. */
struct fp_listener_pass {
    __u64 last_passed_ns;
};

#define FP_MAX_LISTENERS 65536

/* How a SYN-ACK reaches a client, by prefix of the main routing table: the MSS the kernel's own
 * would advertise along the route (dst_metric_advmss) and the interface it leaves by. */
struct fp_reply_route {
    __u16 mss;
    __u16 reserved;
    __u32 ifindex;
};

#define FP_MAX_ROUTES 16384

/*
 * Where the route back to an allowed peer leaves (strict reverse-path filtering, as the shipped
 * rules' rpfilter match): the --allow-source prefixes split along the main table's routes
 * (fp_reverse4, longest prefix). A packet from a peer must arrive on one of the interfaces its
 * prefix names; none named: no route back, dropped. FP_REVERSE_UNCHECKED in the first slot: the
 * daemon cannot say here (policy routing, more nexthops than slots), and the packet goes up to
 * netfilter's own check.
 */
#define FP_REVERSE_WAYS 4
#define FP_REVERSE_UNCHECKED 0xffffffffu

struct fp_reverse_path {
    __u32 ifindex[FP_REVERSE_WAYS]; /* 0: an unused slot */
};

struct fp_ip4_prefix {
    __u32 prefix_length; /* LPM trie key: the length comes first */
    __u32 address;
};

struct fp_ip6_prefix {
    __u32 prefix_length;
    __u8 address[16];
};

/* Whether fp_local4 and fp_local6 hold any local route (a range of addresses, not one): the
 * program looks a missed address up there only then. */
struct fp_local_ranges {
    __u32 ipv4;
    __u32 ipv6;
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
    FP_DROP_GUE_CONTROL,
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
    FP_REFUSED_REVERSE_PATH,
    FP_COOKIE_CHECKS,
    FP_COOKIE_ACKS_INVALID,
    FP_COOKIES_SENT,
    FP_COOKIE_REPLY_FAILED,
    /* Sent up unchanged, by reason. */
    FP_UP_UNCONFIGURED,      /* no configuration yet (or of another layout) */
    FP_UP_OUTER_UNCHECKED,   /* what ip_rcv would judge: bad checksum, length, padding, not for this MAC */
    FP_UP_OUTER_OPTIONS,     /* outer IPv4 options, fragments, GSO, a non-linear head */
    FP_UP_NOT_ADDRESSED_HERE,/* the outer destination is not this host's */
    FP_UP_INNER_NOT_TCP,     /* inner UDP, ICMP (path MTU included), IPv4 options, IPv6 extensions */
    FP_UP_INNER_FRAGMENT,
    FP_UP_LOOKUP_ELSEWHERE,  /* --netns */
    FP_UP_NO_ROUTE,          /* no route or neighbour to the hop (the raw socket resolves it) */
    FP_UP_FAILED,            /* a helper failed (adjusting the packet) */
    FP_UP_REVERSE_PATH_UNCHECKED, /* the peer's way back is netfilter's to judge (policy routing) */
    FP_UP_SELF_GONE,         /* a forward while --self is not this host's */
    FP_COUNTER_COUNT
};

/* What listener_probe writes over the start of its frame: the listener it found, read. Its port,
 * device, family and local address (IPv4: the first word, network order) let the caller check it
 * is the one it asked about. */
struct fp_listener_reading {
    __u16 user_mss;
    __u16 port; /* host order */
    __u32 syn_queue;
    __u32 bound_dev_if;
    __u32 family;
    __u32 address[4];
};

/* fp_counters' one entry, per CPU: every slot in one value, so that a packet's counts (the total
 * and its reason) cost one look-up. */
struct fp_counter_block {
    __u64 slots[FP_COUNTER_COUNT];
};

#endif
