// libbpf's option structs, filled in C (LIBBPF_OPTS sizes and zeroes them as libbpf checks).
#ifndef PROXYSIDE_BPF_SHIMS_H
#define PROXYSIDE_BPF_SHIMS_H

#include <stddef.h>
#include <stdint.h>

struct bpf_object;

/// Opens an ELF object held in memory; kernel verifier messages go to `log` (NUL-terminated).
/// NULL and errno on failure.
struct bpf_object *proxyside_bpf_open(const void *bytes, size_t size, const char *name, char *log, size_t log_size);

/// Attaches (replacing whatever held handle/priority) a tc program at ingress of `ifindex`, adding
/// the clsact qdisc if needed. 0 or a negative errno.
int proxyside_tc_attach(int ifindex, int program_fd, uint32_t handle, uint32_t priority);

/// The id of the program at handle/priority on ingress of `ifindex`: 0 when there is none.
uint32_t proxyside_tc_query(int ifindex, uint32_t handle, uint32_t priority);

/// Removes the filter at handle/priority. 0, -ENOENT, or a negative errno.
int proxyside_tc_detach(int ifindex, uint32_t handle, uint32_t priority);

/// BPF_PROG_TEST_RUN of a tc program on `frame`, as if it arrived on `ifindex`. 0 or a negative errno.
int proxyside_tc_test_run(int program_fd, const void *frame, uint32_t frame_size, void *out, uint32_t *out_size,
                          uint32_t ifindex, uint32_t *action);

/// Attaches XDP program `program_fd` to `ifindex` in the driver (native) mode only: in place of
/// `old_fd`'s program in one step when `old_fd` >= 0 (and only if that one is still attached),
/// else where none is attached. 0 or a negative errno (-EOPNOTSUPP: no native XDP in the driver).
int proxyside_xdp_attach(int ifindex, int program_fd, int old_fd);

/// The id of the native XDP program on `ifindex`: 0 when there is none.
uint32_t proxyside_xdp_query(int ifindex, int generic);

/// Removes the native XDP program from `ifindex` if it is still `expected_fd`'s. 0 or a negative
/// errno (-EEXIST: another program is attached now).
int proxyside_xdp_detach(int ifindex, int expected_fd);

/// 1 when XDP programs may call bpf_check_mtu (Linux 5.12), which the XDP entry point does; 0
/// when not, or a negative errno when the kernel could not be asked. A one-instruction program is
/// verified to know: a fraction of the time the entry point itself takes to be refused.
int proxyside_xdp_checks_mtu(void);

/// BPF_PROG_TEST_RUN of an XDP program on `frame`, as if it arrived on `ifindex` (its receive queue
/// 0). 0 or a negative errno.
int proxyside_xdp_test_run(int program_fd, const void *frame, uint32_t frame_size, void *out, uint32_t *out_size,
                           uint32_t ifindex, uint32_t *action);

#endif
