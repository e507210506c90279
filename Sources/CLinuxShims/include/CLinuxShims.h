#ifndef PROXYSIDE_CLINUXSHIMS_H
#define PROXYSIDE_CLINUXSHIMS_H

#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <unistd.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <sys/eventfd.h>

/// One eBPF instruction (struct bpf_insn), kept here so Swift can build programs without linux/bpf.h.
typedef struct {
    uint8_t code;
    uint8_t regs;   /* dst_reg in the low nibble, src_reg in the high nibble */
    int16_t off;
    int32_t imm;
} proxyside_bpf_insn;

/// Loads an XDP program. Returns the program fd, or -errno; the verifier log goes to `log`.
int proxyside_bpf_load_xdp(const proxyside_bpf_insn *insns, uint32_t count,
                           char *log, uint32_t log_size);

/// Runs a program once through BPF_PROG_TEST_RUN. Returns 0 or -errno.
int proxyside_bpf_test_run(int prog_fd, const void *data_in, uint32_t size_in,
                           void *data_out, uint32_t *size_out, uint32_t *retval);

/// Makes SIGTERM, SIGINT (and SIGHUP when hup_fd >= 0) write 8 bytes to an eventfd, async-signal-safely.
int proxyside_install_signal_eventfds(int shutdown_fd, int hup_fd);

/// sendmmsg(2) of `count` packets, each to its own IPv4 destination (NULL: the socket's own, as for a
/// bound packet socket). Returns how many were sent, or -errno.
/// A packet socket that sends whole Ethernet frames out of `ifindex` past the qdisc, and receives
/// nothing (for the benchmark's sender). Returns the fd or -errno.
int proxyside_frame_sender(int ifindex);

int proxyside_send_batch_ipv4(int fd, const struct sockaddr_in *destinations,
                              void *const *buffers, const size_t *lengths, unsigned count);

/// recvmmsg(2): up to `count` datagrams into `buffers` (each `size` bytes); their lengths go to
/// `lengths`. With `wait`, blocks until the first (within the socket's SO_RCVTIMEO) and takes what
/// else is there; without, waits for nothing. Returns how many arrived (0 when none), or -errno.
int proxyside_receive_batch(int fd, void *const *buffers, size_t size, size_t *lengths, unsigned count, int wait);

/// setns(2) for network namespaces (glibc hides setns and CLONE_NEWNET without _GNU_SOURCE).
int proxyside_setns_net(int fd);

/// The calling thread's CPU mask (the first 1024 CPUs, as 16 words), get and set (sched_getaffinity
/// and sched_setaffinity need _GNU_SOURCE). Return 0 or -errno.
int proxyside_thread_cpus(uint64_t mask[16]);
int proxyside_set_thread_cpus(const uint64_t mask[16]);

/// Makes signal `signo` write 8 bytes to an eventfd, async-signal-safely (SIGUSR1, SIGUSR2, ...).
int proxyside_signal_to_eventfd(int signo, int fd);

/// sendmsg(2) of `length` bytes with `count` fds in SCM_RIGHTS (none when count is 0), MSG_NOSIGNAL
/// and `flags`. Returns bytes sent, or -errno.
ssize_t proxyside_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, unsigned count, int flags);

/// recvmsg(2) into `bytes`, collecting up to `max_fds` SCM_RIGHTS fds (close-on-exec) into `fds`,
/// their number into `*count`. Fds beyond `max_fds` are closed. Returns bytes read, or -errno.
ssize_t proxyside_receive_with_fds(int socket, void *bytes, size_t length, int *fds, unsigned max_fds, unsigned *count, int flags);

/// SO_PEERCRED of a connected Unix socket (struct ucred needs _GNU_SOURCE). Returns 0 or -errno.
int proxyside_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// memfd_create(2) without close-on-exec (for state handed across exec). Returns the fd, or -errno.
int proxyside_memfd(const char *name);

/// O_PATH, which glibc's headers show only with _GNU_SOURCE (shims.c checks the value).
static const int proxyside_o_path = 010000000;
/// AT_EMPTY_PATH, likewise.
static const int proxyside_at_empty_path = 0x1000;

/// An O_PATH descriptor of the directory `path` (absolute), resolved without following any symlink
/// (openat2 RESOLVE_NO_SYMLINKS, or a component walk with O_NOFOLLOW). Returns the fd, or -errno.
int proxyside_open_directory_no_symlinks(const char *path);

/// renameat2(2) with RENAME_NOREPLACE: fails with EEXIST instead of replacing. Returns 0 or -errno.
int proxyside_rename_no_replace(int from_directory, const char *from, int to_directory, const char *to);

/* accept4(SOCK_CLOEXEC), retried on EINTR: a connection accepted while another thread execs
   must not survive into the new image. */
int proxyside_accept_cloexec(int fd);

#endif
