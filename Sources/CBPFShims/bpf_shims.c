#include "bpf_shims.h"

#include <errno.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

struct bpf_object *proxyside_bpf_open(const void *bytes, size_t size, const char *name, char *log, size_t log_size)
{
    LIBBPF_OPTS(bpf_object_open_opts, options, .object_name = name, .kernel_log_buf = log,
                .kernel_log_size = log_size);
    return bpf_object__open_mem(bytes, size, &options);
}

int proxyside_tc_attach(int ifindex, int program_fd, uint32_t handle, uint32_t priority)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    int created = bpf_tc_hook_create(&hook);
    if (created != 0 && created != -EEXIST)
        return created;
    LIBBPF_OPTS(bpf_tc_opts, filter, .prog_fd = program_fd, .handle = handle, .priority = priority,
                .flags = BPF_TC_F_REPLACE);
    return bpf_tc_attach(&hook, &filter);
}

uint32_t proxyside_tc_query(int ifindex, uint32_t handle, uint32_t priority)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, filter, .handle = handle, .priority = priority);
    return bpf_tc_query(&hook, &filter) == 0 ? filter.prog_id : 0;
}

int proxyside_tc_detach(int ifindex, uint32_t handle, uint32_t priority)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, filter, .handle = handle, .priority = priority);
    return bpf_tc_detach(&hook, &filter);
}

/* One run of `program_fd` on `frame` with the context `context` (the hook's own struct). */
static int test_run(int program_fd, const void *frame, uint32_t frame_size, void *out, uint32_t *out_size,
                    void *context, size_t context_size, uint32_t *action)
{
    LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = frame, .data_size_in = frame_size, .data_out = out,
                .data_size_out = *out_size, .ctx_in = context, .ctx_size_in = context_size, .repeat = 1);
    int result = bpf_prog_test_run_opts(program_fd, &run);
    if (result != 0)
        return result < 0 ? result : -result;
    *out_size = run.data_size_out;
    *action = run.retval;
    return 0;
}

int proxyside_tc_test_run(int program_fd, const void *frame, uint32_t frame_size, void *out, uint32_t *out_size,
                          uint32_t ifindex, uint32_t *action)
{
    struct __sk_buff context = { .ifindex = ifindex };
    return test_run(program_fd, frame, frame_size, out, out_size, &context, sizeof(context), action);
}

int proxyside_xdp_test_run(int program_fd, const void *frame, uint32_t frame_size, void *out, uint32_t *out_size,
                           uint32_t ifindex, uint32_t *action)
{
    struct xdp_md context = { .data = 0, .data_end = frame_size, .ingress_ifindex = ifindex };
    return test_run(program_fd, frame, frame_size, out, out_size, &context, sizeof(context), action);
}

int proxyside_xdp_attach(int ifindex, int program_fd, int old_fd)
{
    LIBBPF_OPTS(bpf_xdp_attach_opts, options, .old_prog_fd = old_fd);
    __u32 flags = XDP_FLAGS_DRV_MODE | (old_fd >= 0 ? XDP_FLAGS_REPLACE : XDP_FLAGS_UPDATE_IF_NOEXIST);
    return bpf_xdp_attach(ifindex, program_fd, flags, old_fd >= 0 ? &options : NULL);
}

uint32_t proxyside_xdp_query(int ifindex, int generic)
{
    __u32 id = 0;
    return bpf_xdp_query_id(ifindex, generic ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE, &id) == 0 ? id : 0;
}

int proxyside_xdp_checks_mtu(void)
{
    return libbpf_probe_bpf_helper(BPF_PROG_TYPE_XDP, BPF_FUNC_check_mtu, NULL);
}

int proxyside_xdp_detach(int ifindex, int expected_fd)
{
    LIBBPF_OPTS(bpf_xdp_attach_opts, options, .old_prog_fd = expected_fd);
    return bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE, &options);
}
