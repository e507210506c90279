# Sourced by demo.sh and bench.sh: root check, setup, release build, and a lab topology that is torn
# down (with every process started into `pids`) when the script exits, also on failure.
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
