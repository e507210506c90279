#!/usr/bin/env bash
# HAProxy reloads under load: the same supervisor (`bindkeeper haproxy`), the same load and the same
# number of reloads, once with sockets bindkeeper owns ({{bind ...}} -> fd@N, one kernel socket
# handed to every HAProxy) and once with HAProxy binding its own SO_REUSEPORT sockets (plain -sf).
#   scripts/bench-reload.sh [--reloads 50] [--rounds 3] [--concurrency 64] [--interval-ms 150]
# Runs as root in a namespace of its own (198.19.2.10); cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
reloads=50 rounds=3 concurrency=64 interval_ms=150
while [ $# -gt 0 ]; do
    case $1 in
        --reloads) reloads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --interval-ms) interval_ms=$2; shift 2 ;;
        *) echo "usage: $0 [--reloads N] [--rounds N] [--concurrency N] [--interval-ms N]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-reload: run as root" >&2; exit 1; }
scripts/setup.sh
swift build -c release >/dev/null
bin=$(swift build -c release --show-bin-path)
ns=psbr-$$ work=$(mktemp -d) vip=198.19.2.10
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add "$vip/32" dev lo

ip netns exec "$ns" "$bin/bindkeeper" serve --socket "$work/bk.sock" 2>>"$work/broker.log" & pids+=($!)
for _ in $(seq 50); do [ -S "$work/bk.sock" ] && break; sleep 0.1; done

template() {  # template NAME BIND
    sed "s|@BIND@|$2|" examples/lab/haproxy-answer.cfg.in > "$work/$1.cfg.tmpl"
}

seconds=$(( reloads * (interval_ms + 60) / 1000 + 3 ))
echo "bench-reload: $reloads reloads per run, one every ${interval_ms} ms after the previous took effect;"
echo "  load: new HTTP/1.0 connections from $concurrency threads for ${seconds} s ($(nproc) cores)"
echo
echo "| run | sockets | reloads | connections | ok | failed | refused | reset | timeout |"
echo "|---|---|---|---|---|---|---|---|---|"
port=8000
for round in $(seq "$rounds"); do
    for mode in bindkeeper plain; do
        port=$((port + 1))
        if [ "$mode" = bindkeeper ]; then template "$mode-$round" "{{bind tcp://$vip:$port?backlog=4096}}"; label="bindkeeper (shared)"
        else template "$mode-$round" "$vip:$port"; label="plain SO_REUSEPORT"; fi
        log="$work/$mode-$round.log"
        ip netns exec "$ns" "$bin/bindkeeper" haproxy --socket "$work/bk.sock" -f "$work/$mode-$round.cfg.tmpl" -p "$work/$mode-$round.pid" \
            --stop-timeout 5 -- /usr/sbin/haproxy 2>>"$log" & supervisor=$!; pids+=($supervisor)
        for _ in $(seq 50); do [ -s "$work/$mode-$round.pid" ] && break; sleep 0.1; done
        ip netns exec "$ns" "$bin/glb-lab" http-load --target "$vip:$port" --seconds "$seconds" --concurrency "$concurrency" > "$work/load" & load=$!
        sleep 0.5
        for i in $(seq "$reloads"); do
            before=$(grep -c "reloaded:" "$log" || true)
            kill -USR2 "$supervisor"
            for _ in $(seq 200); do [ "$(grep -c "reloaded:" "$log" || true)" -gt "$before" ] && break; sleep 0.02; done
            sleep "$(awk "BEGIN {print $interval_ms / 1000}")"
        done
        wait "$load"
        done_reloads=$(grep -c "reloaded:" "$log" || true)
        kill "$supervisor"; wait "$supervisor" 2>/dev/null || true
        line=$(grep '^http-load:' "$work/load")
        get() { echo "$line" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
        echo "| $round | $label | $done_reloads | $(get attempts) | $(get ok) | $(get failed) | $(get refused) | $(get reset) | $(get timeout) |"
    done
done
