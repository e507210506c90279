#!/usr/bin/env bash
# What bindkeeper's count of who holds its sockets costs (`list`'s HELD BY, the metrics): the
# counter reads every process's descriptor table, so its time grows with the host's descriptors.
# One broker (release build) in a namespace, a holder of one socket with CONNECTIONS established
# connections, then more descriptors elsewhere on the host (processes holding dup()s of one
# socket, EXTRA at each step); each row is the median of ROUNDS counts (`holders_count_milliseconds`
# of `list --json`, each list asking for the next), with the ratio against the first row and the
# cost per descriptor above it. The counter's own thread pays it; the broker's loop does not wait.
#   scripts/bench-holders.sh [CONNECTIONS] [EXTRA] [STEPS]   (defaults 2000, 50000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-2000}
extra=${2:-50000}
steps=${3:-3}
rounds=${ROUNDS:-7}
[ "$(id -u)" = 0 ] || { echo "bench-holders: run as root (network namespaces)" >&2; exit 1; }
[ "$connections" -ge 1 ] && [ "$connections" -le 9000 ] || { echo "CONNECTIONS must be 1 to 9000" >&2; exit 2; }
[ "$extra" -ge 1000 ] && [ "$extra" -le 200000 ] || { echo "EXTRA must be 1000 to 200000" >&2; exit 2; }
[ "$steps" -ge 1 ] && [ "$steps" -le 6 ] || { echo "STEPS must be 1 to 6" >&2; exit 2; }
[ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || { echo "ROUNDS must be 1 to 50" >&2; exit 2; }
scripts/setup.sh
swift build -c release --product bindkeeper >/dev/null
bin=$(swift build -c release --show-bin-path)
ns=psbh-holders
dir=$(mktemp -d /tmp/bench-holders.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 198.18.6.1/32 dev lo
ip netns exec "$ns" "$bin/bindkeeper" serve --socket "$dir/bk.sock" > "$dir/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/bk.sock" ] && break; sleep 0.05; done
# The holder: accepts and keeps every connection; the clients, in the same namespace, keep theirs.
ip netns exec "$ns" "$bin/bindkeeper" exec --socket "$dir/bk.sock" --bind tcp://198.18.6.1:8840 -- \
    python3 -c '
import socket, time
listener = socket.socket(fileno=3)
held = []
while True:
    held.append(listener.accept()[0])
' > "$dir/holder.log" 2>&1 &
pids+=($!)
ip netns exec "$ns" python3 - "$connections" "$dir/clients.ready" <<'PY' > "$dir/clients.log" 2>&1 &
import socket, sys, time
count, ready = int(sys.argv[1]), sys.argv[2]
held = []
for _ in range(count):
    for attempt in range(100):
        try:
            held.append(socket.create_connection(("198.18.6.1", 8840))); break
        except OSError:
            time.sleep(0.05)
open(ready, "w").write("%d\n" % len(held))
time.sleep(3600)
PY
pids+=($!)
for _ in $(seq 600); do [ -s "$dir/clients.ready" ] && break; sleep 0.1; done
[ -s "$dir/clients.ready" ] || { echo "bench-holders: the clients did not connect" >&2; exit 1; }

# One count's milliseconds, and the established connections it found.
count_once() {
    "$bin/bindkeeper" list --json --socket "$dir/bk.sock" | python3 -c '
import json, sys
listing = json.load(sys.stdin)
print(listing.get("holders_count_milliseconds", -1), sum(h["established"] for h in listing.get("holders") or []))'
}
descriptors() { ls /proc/[0-9]*/fd 2>/dev/null | grep -c '^[0-9]' || true; }
row() {  # row LABEL
    local samples=() found=0
    count_once > /dev/null
    for _ in $(seq "$rounds"); do
        sleep 1.2  # the counter counts at most once a second
        read -r ms found < <(count_once)
        samples+=("$ms")
    done
    local median
    median=$(printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$1 $(descriptors) $median $found"
}
hog() {  # hog COUNT: one process holding COUNT dup()s of a socket (split under the file limit)
    local left=$1
    while [ "$left" -gt 0 ]; do
        local part=$((left > 18000 ? 18000 : left))
        python3 -c '
import os, resource, socket, sys, time
need = int(sys.argv[1]) + 100
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, need), hard), hard))
s = socket.socket()
fds = [os.dup(s.fileno()) for _ in range(int(sys.argv[1]))]
time.sleep(3600)' "$part" &
        pids+=($!)
        left=$((left - part))
    done
    sleep 3
}
echo "bindkeeper's holder count: $connections connections held, $rounds counts a row (milliseconds, median)"
results=()
results+=("$(row "the host as it is")")
for step in $(seq "$steps"); do
    hog "$extra"
    results+=("$(row "+$((step * extra)) descriptors")")
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys
rows = [line.rsplit(" ", 3) for line in sys.stdin.read().splitlines()]
base_fds, base_ms = int(rows[0][1]), float(rows[0][2])
print("| row | descriptors on the host | count (ms) | ratio | µs per descriptor above the first row | connections found |")
print("|---|---:|---:|---:|---:|---:|")
for label, fds, ms, found in rows:
    fds, ms = int(fds), float(ms)
    ratio = ms / base_ms if base_ms > 0 else float("nan")
    per = (ms - base_ms) * 1000 / (fds - base_fds) if fds > base_fds else float("nan")
    print("| %s | %d | %.0f | %.2fx | %s | %s |" % (label, fds, ms, ratio, "-" if per != per else "%.2f" % per, found))
'
