#define _GNU_SOURCE
#include "CLinuxShims.h"

#include <linux/bpf.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <unistd.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sched.h>
#include <sys/mman.h>

int proxyside_bpf_load_xdp(const proxyside_bpf_insn *insns, uint32_t count,
                           char *log, uint32_t log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_XDP;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = count;
    /* The SYN-cookie helpers are GPL-only: the programs (SynCookiePrograms.swift) are offered
     * under GPL-2.0-only or BSD-2-Clause, as the tc program is (LICENSE). */
    attr.license = (uint64_t)(uintptr_t)"Dual BSD/GPL";
    if (log != NULL && log_size > 0) {
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
    if (fd < 0 && errno == ENOSPC && log != NULL) {
        /* The log was too small; retry without it so the load itself is judged. */
        attr.log_buf = 0; attr.log_size = 0; attr.log_level = 0;
        fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
    }
    return fd < 0 ? -errno : (int)fd;
}

int proxyside_bpf_test_run(int prog_fd, const void *data_in, uint32_t size_in,
                           void *data_out, uint32_t *size_out, uint32_t *retval) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.test.prog_fd = (uint32_t)prog_fd;
    attr.test.data_in = (uint64_t)(uintptr_t)data_in;
    attr.test.data_size_in = size_in;
    attr.test.data_out = (uint64_t)(uintptr_t)data_out;
    attr.test.data_size_out = *size_out;
    attr.test.repeat = 1;
    if (syscall(SYS_bpf, BPF_PROG_TEST_RUN, &attr, sizeof(attr)) < 0)
        return -errno;
    *size_out = attr.test.data_size_out;
    *retval = attr.test.retval;
    return 0;
}

static int shutdown_event_fd = -1;
static int hup_event_fd = -1;

static void write_event(int fd) {
    if (fd < 0) return;
    int saved = errno;
    uint64_t one = 1;
    ssize_t ignored = write(fd, &one, sizeof(one));
    (void)ignored;
    errno = saved;
}

static void on_shutdown_signal(int sig) { (void)sig; write_event(shutdown_event_fd); }
static void on_hup_signal(int sig) { (void)sig; write_event(hup_event_fd); }

int proxyside_install_signal_eventfds(int shutdown_fd, int hup_fd) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    shutdown_event_fd = shutdown_fd;
    sa.sa_handler = on_shutdown_signal;
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
        return -errno;
    if (hup_fd >= 0) {
        hup_event_fd = hup_fd;
        sa.sa_handler = on_hup_signal;
        if (sigaction(SIGHUP, &sa, NULL) < 0)
            return -errno;
    }
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int proxyside_setns_net(int fd) {
    return setns(fd, CLONE_NEWNET) == 0 ? 0 : -errno;
}

int proxyside_thread_cpus(uint64_t mask[16]) {
    return sched_getaffinity(0, 16 * sizeof(uint64_t), (cpu_set_t *)mask) == 0 ? 0 : -errno;
}

int proxyside_set_thread_cpus(const uint64_t mask[16]) {
    return sched_setaffinity(0, 16 * sizeof(uint64_t), (const cpu_set_t *)mask) == 0 ? 0 : -errno;
}

enum { max_batch = 256 };

/* One iovec per message; lengths may be NULL (then every buffer is `size` bytes). */
static unsigned prepare_messages(struct mmsghdr *headers, struct iovec *iovecs, void *const *buffers,
                                 const size_t *lengths, size_t size, unsigned count) {
    if (count > max_batch) count = max_batch;
    memset(headers, 0, sizeof(headers[0]) * count);
    for (unsigned i = 0; i < count; i++) {
        iovecs[i].iov_base = buffers[i];
        iovecs[i].iov_len = lengths ? lengths[i] : size;
        headers[i].msg_hdr.msg_iov = &iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    return count;
}

int proxyside_send_batch_ipv4(int fd, const struct sockaddr_in *destinations,
                              void *const *buffers, const size_t *lengths, unsigned count) {
    struct mmsghdr headers[max_batch];
    struct iovec iovecs[max_batch];
    count = prepare_messages(headers, iovecs, buffers, lengths, 0, count);
    for (unsigned i = 0; destinations && i < count; i++) {
        headers[i].msg_hdr.msg_name = (void *)&destinations[i];
        headers[i].msg_hdr.msg_namelen = sizeof(destinations[i]);
    }
    int sent = sendmmsg(fd, headers, count, 0);
    return sent < 0 ? -errno : sent;
}

int proxyside_frame_sender(int ifindex) {
    // Protocol 0: the socket is handed no packets; it only sends.
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct sockaddr_ll address = { .sll_family = AF_PACKET, .sll_ifindex = ifindex };
    int one = 1;
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

int proxyside_receive_batch(int fd, void *const *buffers, size_t size, size_t *lengths, unsigned count, int wait) {
    struct mmsghdr headers[max_batch];
    struct iovec iovecs[max_batch];
    count = prepare_messages(headers, iovecs, buffers, NULL, size, count);
    int received = recvmmsg(fd, headers, count, wait ? MSG_WAITFORONE : MSG_DONTWAIT, NULL);
    if (received < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    for (int i = 0; i < received; i++) lengths[i] = headers[i].msg_len;
    return received;
}

enum { max_signal = 65 };
static int signal_event_fds[max_signal];

static void on_forwarded_signal(int sig) {
    if (sig > 0 && sig < max_signal) write_event(signal_event_fds[sig]);
}

int proxyside_signal_to_eventfd(int signo, int fd) {
    if (signo <= 0 || signo >= max_signal) return -EINVAL;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    signal_event_fds[signo] = fd;
    sa.sa_handler = on_forwarded_signal;
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}

enum { max_passed_fds = 253 };  /* SCM_MAX_FD */

ssize_t proxyside_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, unsigned count, int flags) {
    if (count > max_passed_fds) return -EINVAL;
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int) * max_passed_fds)]; } control;
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (count > 0) {
        memset(&control, 0, sizeof(control));
        message.msg_control = control.space;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * count);
    }
    ssize_t sent = sendmsg(socket, &message, MSG_NOSIGNAL | flags);
    return sent < 0 ? -errno : sent;
}

ssize_t proxyside_receive_with_fds(int socket, void *bytes, size_t length, int *fds, unsigned max_fds, unsigned *count, int flags) {
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int) * max_passed_fds)]; } control;
    struct iovec iov = { .iov_base = bytes, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.space;
    message.msg_controllen = sizeof(control.space);
    *count = 0;
    ssize_t received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC | flags);
    if (received < 0) return -errno;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message); cmsg != NULL; cmsg = CMSG_NXTHDR(&message, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        unsigned n = (unsigned)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(cmsg);
        for (unsigned i = 0; i < n; i++) {
            if (*count < max_fds) fds[(*count)++] = passed[i];
            else close(passed[i]);
        }
    }
    return received;
}

int proxyside_memfd(const char *name) {
    int fd = memfd_create(name, 0);
    return fd < 0 ? -errno : fd;
}

int proxyside_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) < 0) return -errno;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>

_Static_assert(proxyside_o_path == O_PATH, "O_PATH");
_Static_assert(proxyside_at_empty_path == AT_EMPTY_PATH, "AT_EMPTY_PATH");

int proxyside_open_directory_no_symlinks(const char *path) {
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long fd = syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
    if (fd >= 0) return (int)fd;
    if (errno != ENOSYS) return -errno;
    /* Before Linux 5.6: walk the path one component at a time, refusing symlinks. */
    if (path[0] != '/') return -EINVAL;
    int current = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (current < 0) return -errno;
    char component[256];
    const char *cursor = path + 1;
    while (*cursor) {
        const char *slash = strchr(cursor, '/');
        size_t length = slash ? (size_t)(slash - cursor) : strlen(cursor);
        if (length == 0 || length >= sizeof(component)) { close(current); return -EINVAL; }
        memcpy(component, cursor, length);
        component[length] = 0;
        int next = openat(current, component, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int saved = errno;
        close(current);
        if (next < 0) return -saved;
        current = next;
        cursor += length + (slash ? 1 : 0);
    }
    return current;
}

int proxyside_rename_no_replace(int from_directory, const char *from, int to_directory, const char *to) {
    return syscall(SYS_renameat2, from_directory, from, to_directory, to, RENAME_NOREPLACE) < 0 ? -errno : 0;
}

int proxyside_accept_cloexec(int fd) {
    int client;
    do { client = accept4(fd, NULL, NULL, SOCK_CLOEXEC); } while (client < 0 && errno == EINTR);
    return client;
}
