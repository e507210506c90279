/*
 * nfq-baseline: the yardstick for second-chance's benchmarks. A bare libnetfilter_queue loop:
 * read a packet, answer NF_ACCEPT, one verdict per packet, no decision. Same socket settings as
 * second-chance (copy 0xffff, 16 MiB receive buffer, NETLINK_NO_ENOBUFS).
 *   nfq-baseline QUEUE [IDLE_MS] [decap]
 * With "decap" every packet is accepted with its inner packet as the new payload (the kernel then
 * does the same work for it as for a packet second-chance takes locally); no other check is made.
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
    if (argc < 2) { fprintf(stderr, "usage: nfq-baseline QUEUE [IDLE_MS]\n"); return 2; }
    unsigned queue = (unsigned)atoi(argv[1]);
    int idle_ms = argc > 2 ? atoi(argv[2]) : 1000;
    int decap = argc > 3 && strcmp(argv[3], "decap") == 0;
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
            if (decap && attr[NFQA_PAYLOAD]) {
                unsigned char *pkt = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
                unsigned len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
                unsigned inner = len > 32 ? (pkt[0] & 0x0f) * 4 + 8 + 4 : len;
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
