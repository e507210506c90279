# Sourced by demo.sh and the benchmarks: root check, setup, release build, and a lab topology that
# is torn down (with every process started into `pids`) when the script exits, also on failure.
# Sets: bin (release binaries), work (scratch directory), pids (append background pids).
# The lab's GLB peers: the director and both proxies. second-chance hears GUE only from them.
lab_peers=(--allow-source 198.18.0.2 --allow-source 198.18.0.11 --allow-source 198.18.0.12)

lab_begin() {
    local prefix=$1
    [ "$(id -u)" = 0 ] || { echo "$(basename "$0"): run as root (network namespaces, NFQUEUE)" >&2; exit 1; }
    scripts/setup.sh
    swift build -c release >/dev/null
    bin=$(swift build -c release --show-bin-path)
    work=$(mktemp -d)
    pids=()
    lab_prefix=$prefix
    trap lab_end EXIT
    LAB_PEERS=${LAB_PEERS:-} examples/lab/topology.sh up "$prefix"
}

lab_end() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    examples/lab/topology.sh down "$lab_prefix"
    rm -rf "$work"
}

# bench-reload.sh and bench-canary.sh: one namespace (ns) with ADDRESS... on its loopback and a
# broker serving $work/bk.sock in it; the namespace, every process in it and `pids` go at exit.
broker_lab_begin() {
    local prefix=$1; shift
    [ "$(id -u)" = 0 ] || { echo "$(basename "$0"): run as root" >&2; exit 1; }
    scripts/setup.sh
    swift build -c release >/dev/null
    bin=$(swift build -c release --show-bin-path)
    ns=$prefix-$$ work=$(mktemp -d)
    pids=()
    trap broker_lab_end EXIT
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    for address in "$@"; do ip -n "$ns" addr add "$address/32" dev lo; done
    ip netns exec "$ns" "$bin/bindkeeper" serve --socket "$work/bk.sock" 2>>"$work/broker.log" & pids+=($!)
    for _ in $(seq 50); do [ -S "$work/bk.sock" ] && break; sleep 0.1; done
}

broker_lab_end() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    # Reaped here, so the shell reports no "Killed" for them.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
