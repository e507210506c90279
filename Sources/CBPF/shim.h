// libbpf (Debian's libbpf-dev): opening, loading and pinning the fast path's object, and tc attachment.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
