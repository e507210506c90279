// libbpf (Debian's libbpf-dev): opening, loading and pinning BPF objects, their BTF, and tc attachment.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>
