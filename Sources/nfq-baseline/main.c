/*
 * nfq-baseline: the yardstick for second-chance's benchmarks. A bare libnetfilter_queue loop:
 * read a packet, answer NF_ACCEPT, one verdict per packet, no decision. Same socket settings as
 * second-chance (copy 0xffff, 16 MiB receive buffer, NETLINK_NO_ENOBUFS).
 *   nfq-baseline QUEUE [IDLE_MS] [plain | decap | forward-raw SELF | forward-kernel SELF]
 * With "decap" every packet is accepted with its inner packet as the new payload (the kernel then
 * does the same work for it as for a packet second-chance takes locally). The forward modes do the
 * kernel work of second-chance's forwarding: the GUE packet is rewritten for its next hop (next_hop
 * + 1, outer source SELF, outer destination the hop, checksums), then "forward-raw" sends it from a
 * raw socket and drops the original, "forward-kernel" accepts it with the rewritten packet as the
 * payload (TTL raised by one, as the kernel's forwarding takes one off). No other check is made.
 * Prints the packets handled and the time from the first to the last, once the queue has been idle
 * for IDLE_MS (default 1000) after the first packet, or after SIGTERM/SIGINT.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <netinet/in.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned be16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void set16(unsigned char *p, unsigned v) { p[0] = v >> 8; p[1] = v; }
static void set32(unsigned char *p, uint32_t v) { set16(p, v >> 16); set16(p + 2, v & 0xffff); }
static uint16_t fold(uint32_t sum) { while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16); return (uint16_t)sum; }
/* RFC 1624: the checksum after one 16-bit word changed from old to new. */
static uint16_t update16(uint16_t check, uint16_t old, uint16_t new) {
    return (uint16_t)~fold((uint16_t)~check + (uint32_t)(uint16_t)~old + new);
}
static uint16_t update32(uint16_t check, uint32_t old, uint32_t new) {
    return update16(update16(check, old >> 16, new >> 16), old & 0xffff, new & 0xffff);
}

/* Rewrites a GUE packet for its next hop in place; returns the hop (host order), or 0 when the
 * packet names none (it is then accepted unchanged). */
static uint32_t rewrite_for_next_hop(unsigned char *pkt, unsigned len, uint32_t self, int kernel) {
    if (len < 20) return 0;
    unsigned ihl = (pkt[0] & 0x0f) * 4, priv = ihl + 8 + 4;
    if (len < priv + 4) return 0;
    unsigned next = pkt[priv + 2], count = pkt[priv + 3];
    if (next >= count || len < priv + 4 + 4 * count) return 0;
    uint32_t hop = be32(pkt + priv + 4 + 4 * next);
    if (kernel) pkt[8] += 1;
    unsigned old_word = be16(pkt + priv + 2), new_word = (next + 1) << 8 | (old_word & 0xff);
    set16(pkt + priv + 2, new_word);
    uint32_t old_source = be32(pkt + 12), old_destination = be32(pkt + 16);
    set32(pkt + 12, self);
    set32(pkt + 16, hop);
    set16(pkt + 10, 0);
    uint32_t sum = 0;
    for (unsigned i = 0; i < ihl; i += 2) sum += be16(pkt + i);
    set16(pkt + 10, (uint16_t)~fold(sum));
    uint16_t check = be16(pkt + ihl + 6);
    if (check) {
        check = update16(check, old_word, new_word);
        check = update32(check, old_source, self);
        check = update32(check, old_destination, hop);
        set16(pkt + ihl + 6, check ? check : 0xffff);
    }
    return hop;
}

static int send_config(struct mnl_socket *nl, unsigned queue, void (*fill)(struct nlmsghdr *)) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    fill(nlh);
    return mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0 ? -1 : 0;
}
static void fill_bind(struct nlmsghdr *nlh) { nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND); }
static void fill_params(struct nlmsghdr *nlh) {
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, 8192);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: nfq-baseline QUEUE [IDLE_MS] [plain | decap | forward-raw SELF | forward-kernel SELF]\n"); return 2; }
    unsigned queue = (unsigned)atoi(argv[1]);
    int idle_ms = argc > 2 ? atoi(argv[2]) : 1000;
    const char *mode = argc > 3 ? argv[3] : "plain";
    int decap = strcmp(mode, "decap") == 0;
    int forward_raw = strcmp(mode, "forward-raw") == 0, forward_kernel = strcmp(mode, "forward-kernel") == 0;
    uint32_t self = 0;
    if (forward_raw || forward_kernel) {
        struct in_addr address;
        if (argc < 5 || inet_pton(AF_INET, argv[4], &address) != 1) { fprintf(stderr, "nfq-baseline: %s needs SELF\n", mode); return 2; }
        self = ntohl(address.s_addr);
    }
    int raw = forward_raw ? socket(AF_INET, SOCK_RAW, IPPROTO_RAW) : -1;
    if (forward_raw && raw < 0) { perror("raw socket"); return 1; }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) { perror("netlink"); return 1; }
    int one = 1, bytes = 16 << 20;
    setsockopt(mnl_socket_get_fd(nl), SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes));
    if (send_config(nl, queue, fill_bind) < 0 || send_config(nl, queue, fill_params) < 0) { perror("config"); return 1; }

    size_t size = 0xffff + MNL_SOCKET_BUFFER_SIZE;
    char *buf = malloc(size);
    char out[MNL_SOCKET_BUFFER_SIZE];
    struct pollfd pfd = { .fd = mnl_socket_get_fd(nl), .events = POLLIN };
    unsigned long packets = 0;
    double first = 0, last = 0;
    while (!stopping) {
        int ready = poll(&pfd, 1, packets ? idle_ms : 100);
        if (ready == 0) { if (packets) break; else continue; }
        if (ready < 0) { if (errno == EINTR) continue; break; }
        ssize_t n = recv(pfd.fd, buf, size, 0);
        if (n < 0) { if (errno == ENOBUFS || errno == EINTR) continue; perror("recv"); break; }
        struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
        int len = (int)n;
        for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
            struct nlattr *attr[NFQA_MAX + 1] = { 0 };
            if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) continue;
            struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
            struct nlmsghdr *verdict = nfq_nlmsg_put(out, NFQNL_MSG_VERDICT, queue);
            nfq_nlmsg_verdict_put(verdict, ntohl(ph->packet_id), NF_ACCEPT);
            if ((forward_raw || forward_kernel) && attr[NFQA_PAYLOAD]) {
                unsigned char *pkt = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
                unsigned len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
                uint32_t hop = rewrite_for_next_hop(pkt, len, self, forward_kernel);
                if (hop && forward_kernel) {
                    nfq_nlmsg_verdict_put_pkt(verdict, pkt, len);
                } else if (hop) {
                    struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(hop) };
                    sendto(raw, pkt, len, 0, (struct sockaddr *)&to, sizeof(to));
                    verdict = nfq_nlmsg_put(out, NFQNL_MSG_VERDICT, queue);
                    nfq_nlmsg_verdict_put(verdict, ntohl(ph->packet_id), NF_DROP);
                }
            }
            if (decap && attr[NFQA_PAYLOAD]) {
                unsigned char *pkt = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
                unsigned len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
                unsigned inner = len > 32 ? (unsigned)(pkt[0] & 0x0f) * 4 + 8 + 4 : len;
                if (inner < len) inner += (pkt[inner - 4] & 0x1f) * 4;
                if (inner < len) nfq_nlmsg_verdict_put_pkt(verdict, pkt + inner, len - inner);
            }
            if (mnl_socket_sendto(nl, verdict, verdict->nlmsg_len) < 0) { perror("verdict"); return 1; }
            last = now_seconds();
            if (packets++ == 0) first = last;
        }
    }
    double seconds = last - first;
    printf("baseline: packets=%lu seconds=%.3f rate=%.0f\n", packets, seconds, seconds > 0 ? packets / seconds : 0.0);
    mnl_socket_close(nl);
    free(buf);
    return 0;
}
