// The lab's map layouts, shared by its programs (LabPrograms/bpf: the director, the wire) and
// their loaders.
#ifndef PROXYSIDE_LAB_DIRECTOR_ABI_H
#define PROXYSIDE_LAB_DIRECTOR_ABI_H

#include <linux/types.h>

/* GUE's 5-bit header length leaves room for 30 hops; the lab's tables are small. */
#define LD_MAX_PROXIES 16
#define LD_MAX_HOPS 8

/* ld_config's one value: the rendezvous table and the director's own address. */
struct ld_config {
    __u32 self;                    /* outer source, network order */
    __u32 proxy_count;             /* 1...LD_MAX_PROXIES */
    __u32 hops;                    /* proxies per flow (primary and hops): 1...LD_MAX_HOPS */
    __u32 reserved;
    __u32 proxies[LD_MAX_PROXIES]; /* network order */
    __u8 active[LD_MAX_PROXIES];   /* 1 active, 0 draining */
};

/* ld_counters: one per-CPU value. */
struct ld_counters {
    __u64 encapsulated; /* sent to a proxy in GUE */
    __u64 passed;       /* not for a VIP, or not IPv4: left to the stack */
    __u64 segmented;    /* a GSO packet for a VIP: left to the stack (the client must send MTU frames) */
    __u64 malformed;    /* for a VIP but shorter than its IPv4 header says: dropped */
};

/* The wire's one value (wire.bpf.c): frames to `mac` go to interface `ifindex`. */
struct ld_wire_target {
    __u8 mac[6];
    __u16 reserved;
    __u32 ifindex;
};

#endif
