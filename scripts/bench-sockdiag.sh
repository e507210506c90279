#!/usr/bin/env bash
# What a listener dump costs on a busy proxy: a namespace with CONNECTIONS established TCP
# connections (both ends in it: twice as many established sockets) and a few listeners, timed by
# `glb-lab sockdiag-cost`: the former single dump of LISTEN and NEW_SYN_RECV sockets, the responder
# monitor's two dumps, and bindkeeper's `list` filtered to its ports in the kernel. Rows are medians
# of one invocation, with ratios against the first. Then again once the connections are closed
# (their TIME_WAIT sockets are still in the established hash).
#   scripts/bench-sockdiag.sh [CONNECTIONS]   (default 50000: 100 000 established sockets)
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-50000}
[ "$(id -u)" = 0 ] || { echo "bench-sockdiag: run as root (network namespaces)" >&2; exit 1; }
[ "$connections" -ge 1 ] && [ "$connections" -le 200000 ] || { echo "CONNECTIONS must be 1 to 200000" >&2; exit 2; }
scripts/setup.sh
swift build -c release --product glb-lab >/dev/null
bin=$(swift build -c release --show-bin-path)
ns=psbd-sockdiag
holders=()
ready=$(mktemp)
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
for last in 1 2 3 4 5 6 7 8; do ip -n "$ns" addr add "198.18.5.$last/32" dev lo; done
# Processes of at most 9000 connections each (both ends: 18 000 fds, under the usual hard
# limit of open files), each with its listener on a port of 8000-8099; the listeners 9000-9003
# stand for bindkeeper's. A process writes a line to READY once its connections are up.
hold() {  # hold PORT COUNT
    ip netns exec "$ns" python3 - "$1" "$2" "$ready" <<'PY' &
import socket, sys, time
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("198.18.5.1", port)); server.listen(4096)
held = []
for index in range(count):
    client = socket.socket()
    client.bind(("198.18.5.%d" % (2 + index % 7), 0))
    client.connect(("198.18.5.1", port))
    held.append(client)
    if index % 500 == 499 or index == count - 1:
        while len(held) < 2 * (index + 1):
            held.append(server.accept()[0])
with open(ready, "a") as f: f.write("up\n")
time.sleep(3600)
PY
    holders+=($!)
}
listeners() {  # the four listeners of bindkeeper's ports, for as long as the namespace is timed
    ip netns exec "$ns" python3 -c '
import socket, time
held = []
for port in range(9000, 9004):
    s = socket.socket(); s.bind(("198.18.5.1", port)); s.listen(128); held.append(s)
time.sleep(3600)' &
    holders+=($!)
}
cleanup() {
    for pid in "${holders[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -f "$ready"
}
listeners
processes=0
for start in $(seq 0 9000 $((connections - 1))); do
    hold $((8000 + processes)) $((connections - start < 9000 ? connections - start : 9000))
    processes=$((processes + 1))
done
for _ in $(seq 1 600); do
    [ "$(wc -l < "$ready")" -ge "$processes" ] && break
    for pid in "${holders[@]}"; do kill -0 "$pid" || { echo "bench-sockdiag: a holder died" >&2; exit 1; }; done
    sleep 0.5
done
[ "$(wc -l < "$ready")" -ge "$processes" ] || { echo "bench-sockdiag: the connections did not come up" >&2; exit 1; }
established=$(ip netns exec "$ns" ss -Htn state established | wc -l)
count_listeners=$(ip netns exec "$ns" ss -Htln | wc -l)
echo "bench-sockdiag: $(date -u +%FT%TZ), $(uname -r), $(nproc) cores; $established established sockets, $count_listeners listeners"
ip netns exec "$ns" "$bin/glb-lab" sockdiag-cost --runs 100 --port 9001
for pid in "${holders[@]:1}"; do kill "$pid"; done
for _ in $(seq 1 100); do
    [ "$(ip netns exec "$ns" ss -Htn state established | wc -l)" -eq 0 ] && break
    sleep 0.1
done
echo "bench-sockdiag: the connections closed ($(ip netns exec "$ns" ss -Htan state time-wait | wc -l) TIME_WAIT sockets left)"
ip netns exec "$ns" "$bin/glb-lab" sockdiag-cost --runs 100 --port 9001
