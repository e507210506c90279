#!/usr/bin/env bash
# Per-packet cost of second-chance's programs against the kernel's cls_redirect selftest ("a TC
# clsact based replacement for the glb-redirect iptables module"), on the same GUE frames, in the
# benchmark lab's P1 (a VIP listener with established connections, forwarding on, the next hop's
# neighbour known): BPF_PROG_TEST_RUN, single runs (RUNS, default 20000, per program, case and
# round), each program above an empty program of its hook, medians of ROUNDS (default 5).
# second-chance runs with --fast-path xdp, so the tc and XDP programs timed are the ones it
# attached and configured; --xdp-forward on, so XDP's forward is timed too (a test run sends
# nothing, so the veth's peer need not take it). cls_redirect is built here from Debian's linux-source-6.1 package (its
# BPF selftests), downloaded once into .build-kernels; none of it is committed.
#   scripts/bench-programs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20000}
rounds=${ROUNDS:-5}

# The yardstick: test_cls_redirect.c and its header from the kernel's source, compiled by the
# Swift toolchain's clang as the build compiles second-chance's program.
yardstick_object() {
    local dir=.build-kernels/linux-source-6.1 selftests=linux-source-6.1/tools/testing/selftests/bpf/progs
    mkdir -p "$dir"
    if [ ! -f "$dir/$selftests/test_cls_redirect.c" ]; then
        if ! ls "$dir"/linux-source-6.1_*.deb >/dev/null 2>&1; then
            (cd "$dir" && apt-get download linux-source-6.1 >/dev/null 2>&1) ||
                { echo "bench-programs: apt-get download linux-source-6.1 failed" >&2; exit 1; }
        fi
        dpkg-deb --fsys-tarfile "$dir"/linux-source-6.1_*.deb | tar -x -C "$dir" ./usr/src/linux-source-6.1.tar.xz
        tar -xJf "$dir/usr/src/linux-source-6.1.tar.xz" -C "$dir" "$selftests/test_cls_redirect.c" \
            "$selftests/test_cls_redirect.h"
        rm -rf "$dir/usr"
    fi
    # -D__x86_64__: the C library's headers pick their word size by it (the BPF target defines none).
    clang -O2 -g -target bpf -D__x86_64__ -I "/usr/include/$(gcc -dumpmachine)" -Wno-compare-distinct-pointer-types \
        -c "$dir/$selftests/test_cls_redirect.c" -o "$dir/cls_redirect.bpf.o"
    echo "$dir/cls_redirect.bpf.o"
}
scripts/setup.sh  # apt's lists, clang's headers and gcc before the yardstick is fetched and built
yardstick=$(yardstick_object)

count=0
. scripts/bench-streams.sh
host_forwarding on
ip -n "$P" neigh replace 198.18.0.12 lladdr "$(ip -n "$prefix-p2" -br link show eth0 | awk '{ print $3 }')" \
    dev eth0 nud permanent
ip netns exec "$P" "$bin/second-chance" run --queue 0 --self 198.18.0.11 --control "$work/sc.sock" \
    "${lab_peers[@]}" --allow-source 198.18.0.1 --allow-hop 198.18.0.12 --fast-path xdp \
    --xdp-forward on 2>"$work/sc.log" & pids+=($!)
for _ in $(seq 100); do [ -S "$work/sc.sock" ] && break; sleep 0.1; done
[ -S "$work/sc.sock" ] || { echo "bench-programs: second-chance did not start" >&2; cat "$work/sc.log" >&2; exit 1; }
echo "Programs on the same frames, $(date -u +%Y-%m-%d), $(uname -r), $(nproc) CPUs"
ip netns exec "$P" "$bin/glb-lab" program-cost --self 198.18.0.11 --director 198.18.0.2 --vip "$VIP" \
    --hop 198.18.0.12 --established 198.18.0.50 --established-port 20000 --yardstick "$yardstick" \
    --runs "$runs" --rounds "$rounds"
"$bin/second-chance" stats --control "$work/sc.sock" | grep -E '^fast_path' | grep -v ' 0$' || true
