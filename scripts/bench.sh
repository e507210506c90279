#!/usr/bin/env bash
# NFQUEUE throughput: second-chance against a bare C libnetfilter_queue loop (nfq-baseline), in one
# run, for GUE streams: SYNs (taken locally), ACKs of established flows (sock_diag, cached) and ACKs
# of unknown flows (forwarded to the next hop), those last with --forward raw (forward) and with
# --forward kernel (forward-kernel). Both receivers are timed from their first to their last packet.
# Bounded: COUNT packets per run (default 500000), at most 10 s each.
#   scripts/bench.sh [COUNT]
# STREAMS="forward forward-kernel" runs some streams only; SECOND_CHANCE_ARGS adds flags to
# second-chance's run (for instance "--negative-cache-ms 0").
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-500000}
. scripts/lab-common.sh
prefix=bench
lab_begin "$prefix"
P=$prefix-p1
VIP=198.19.0.10
# P2 is the next hop of forwarded packets: it drops them unseen.
ip netns exec "$prefix-p2" iptables -t raw -I PREROUTING -p udp --dport 19523 -j DROP
# 64 established connections on P1 (from a local address), for the established-ACK stream.
ip -n "$P" addr add 198.18.0.50/32 dev lo
ip netns exec "$P" "$bin/glb-lab" echo --listen "$VIP:80" 2>/dev/null & pids+=($!)
sleep 0.3
ip netns exec "$P" "$bin/glb-lab" clients --target "$VIP:80" --source 198.18.0.50 --first-port 20000 \
    --connections 64 --seconds 600 --interval-ms 600000 >/dev/null 2>&1 & pids+=($!)
sleep 0.5

# The receiver under test (the baseline loop or second-chance) has CPU 0 to itself; the sender, its
# softirq work and the counter watcher run on the last CPU, so neither competes with the other.
receiver_cpu=0
sender_cpu=$(( $(nproc) - 1 ))

blast() {
    case "$1" in
        syn) taskset -c "$sender_cpu" ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --count "$count" --max-seconds 10 --kind syn --client 198.18.0.1 --vip "$VIP" --vip-port 81 --first-port 30000 --flows 4096 ;;
        established) taskset -c "$sender_cpu" ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --count "$count" --max-seconds 10 --kind ack --client 198.18.0.50 --vip "$VIP" --vip-port 80 --first-port 20000 --flows 64 ;;
        forward|forward-kernel) taskset -c "$sender_cpu" ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --count "$count" --max-seconds 10 --kind forward --client 198.18.0.1 --vip "$VIP" --vip-port 80 --first-port 40000 --flows 4096 --hop 198.18.0.12 ;;
    esac
}
rate() { sed -n 's/.*rate=\([0-9]*\).*/\1/p' | tail -1; }

run_baseline() {
    taskset -c "$receiver_cpu" ip netns exec "$P" "$bin/nfq-baseline" 0 1000 "$2" > "$work/baseline" & base=$!
    sleep 0.3
    sent=$(blast "$1" | rate)
    wait "$base"
    rate < "$work/baseline"
}

# baseline: accept each packet unchanged; baseline+decap: accept each with its inner packet as payload.
printf '%-15s %10s %12s %15s %15s %8s %8s\n' stream sent/s baseline/s baseline+decap/s second-chance/s ratio ratio-decap
for stream in ${STREAMS:-syn established forward forward-kernel}; do
    baseline=$(run_baseline "$stream" plain)
    decap=$(run_baseline "$stream" decap)

    extra=()
    if [ "$stream" = forward-kernel ]; then
        ip netns exec "$P" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.eth0.accept_local=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
        extra=(--forward kernel)
    fi
    ip netns exec "$prefix-p2" iptables -t raw -Z PREROUTING
    taskset -c "$receiver_cpu" ip netns exec "$P" "$bin/second-chance" run --queue 0 --self 198.18.0.11 --control "$work/sc.sock" "${extra[@]}" ${SECOND_CHANCE_ARGS:-} 2>"$work/sc.log" & sc=$!
    for _ in $(seq 100); do [ -S "$work/sc.sock" ] && break; sleep 0.05; done
    taskset -c "$sender_cpu" "$bin/glb-lab" watch --control "$work/sc.sock" --idle-ms 1000 > "$work/watch" & watcher=$!
    sleep 0.2
    blast "$stream" > "$work/sent"
    wait "$watcher"
    ours=$(rate < "$work/watch")
    "$bin/second-chance" stats --control "$work/sc.sock" > "$work/stats.$stream"
    kill "$sc"; wait "$sc" || true
    ip netns exec "$P" sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.eth0.accept_local=0
    sent=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$work/sent")
    ratio=$(awk -v a="$ours" -v b="$baseline" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    ratio_decap=$(awk -v a="$ours" -v b="$decap" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    # Marked when second-chance kept up with its sender: the figure is the sender's rate, a floor.
    bound=$(awk -v a="$ours" -v s="$sent" 'BEGIN { print (a >= 0.98 * s ? " (sender-bound)" : "") }')
    printf '%-15s %10s %12s %15s %15s %8s %8s%s\n' "$stream" "$sent" "$baseline" "$decap" "$ours" "${ratio}x" "${ratio_decap}x" "$bound"
    grep -E "^(accepted_syn|accepted_established|forwarded|socket_lookups|socket_lookup_cache_hits):" "$work/stats.$stream" | tr '\n' ' ' | sed 's/^/             counters: /'
    # What reached the next hop (its DROP rule counts every GUE packet that arrived).
    printf 'p2_received: %s\n' "$(ip netns exec "$prefix-p2" iptables -t raw -L PREROUTING -v -x -n | awk '$3 == "DROP" {print $1; exit}')"
    echo
done
