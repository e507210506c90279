#!/usr/bin/env bash
# NFQUEUE throughput: second-chance against a bare C libnetfilter_queue loop (nfq-baseline), in one
# run, for GUE streams: SYNs (taken locally), ACKs of established flows (sock_diag, cached) and ACKs
# of unknown flows (forwarded to the next hop), those last with --forward raw (forward) and with
# --forward kernel (forward-kernel). The loop runs twice a round: accepting every packet as it is
# (baseline) and doing second-chance's kernel work for the stream (same-work: the inner packet
# accepted, or the packet rewritten and sent or accepted for its next hop). Every receiver is timed
# from its first to its last packet; what was offered, decided and dropped by the kernel's queue is
# counted for each. Bounded: COUNT packets per run (default 500000), at most 10 s each.
#   scripts/bench.sh [COUNT]
# ROUNDS (default 5) rounds per stream, medians reported. STREAMS="forward forward-kernel" runs
# some streams only; SECOND_CHANCE_ARGS adds flags to second-chance's run
# (for instance "--negative-cache-ms 0"). PREVIOUS=/path/to/an/earlier/second-chance adds that build
# (one that knows --allow-source) to every round, and its ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-500000}
. scripts/lab-common.sh
prefix=bench
LAB_PEERS=198.18.0.1,198.18.0.2,198.18.0.11,198.18.0.12  # the client blasts GUE as a director would
lab_begin "$prefix"
P=$prefix-p1
VIP=198.19.0.10
# The client sends the GUE streams itself, standing in for the director: it is a peer here too.
# P2 is the next hop of forwarded packets: it drops them unseen.
ip netns exec "$prefix-p2" iptables -t raw -I PREROUTING -p udp --dport 19523 -j DROP
# 64 established connections on P1 (from a local address), for the established-ACK stream.
ip -n "$P" addr add 198.18.0.50/32 dev lo
ip netns exec "$P" "$bin/glb-lab" echo --listen "$VIP:80" 2>/dev/null & pids+=($!)
sleep 0.3
ip netns exec "$P" "$bin/glb-lab" clients --target "$VIP:80" --source 198.18.0.50 --first-port 20000 \
    --connections 64 --seconds 600 --interval-ms 600000 >/dev/null 2>&1 & pids+=($!)
sleep 0.5
# The connections outlive their client address: without it their client is no longer this host, as a
# real client is not (second-chance delivers nothing from one of the host's own addresses). The
# kernel's answers to the stream's ACKs go to the bridge's sink.
ip -n "$P" addr del 198.18.0.50/32 dev lo
ip -n "$P" route add 198.18.0.50/32 via 198.18.0.254

# The receiver under test (the baseline loop or second-chance) has CPU 0 to itself; the sender, its
# softirq work and the counter watcher run on the last CPU, so neither competes with the other.
receiver_cpu=0
sender_cpu=$(( $(nproc) - 1 ))

blast() {
    case "$1" in
        syn) taskset -c "$sender_cpu" ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --count "$count" --max-seconds 10 --kind syn --client 198.18.200.1 --vip "$VIP" --vip-port 81 --first-port 30000 --flows 4096 "${@:2}" ;;
        established) taskset -c "$sender_cpu" ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --count "$count" --max-seconds 10 --kind ack --client 198.18.0.50 --vip "$VIP" --vip-port 80 --first-port 20000 --flows 64 "${@:2}" ;;
        forward|forward-kernel) taskset -c "$sender_cpu" ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --count "$count" --max-seconds 10 --kind forward --client 198.18.0.1 --vip "$VIP" --vip-port 80 --first-port 40000 --flows 4096 --hop 198.18.0.12 "${@:2}" ;;
    esac
}
rate() { sed -n 's/.*rate=\([0-9]*\).*/\1/p' | tail -1; }
packets() { sed -n 's/.*packets=\([0-9]*\).*/\1/p' | tail -1; }
sent_count() { sed -n 's/.*sent=\([0-9]*\).*/\1/p' "$work/sent"; }

# What the kernel dropped on queue 0 since a receiver bound it (queue full + socket buffer full);
# read while the receiver is still bound, since the counters go with the queue.
queue_drops() {
    ip netns exec "$P" awk '$1 == 0 || $1 == 1 { sum += $6 + $7; found = 1 } END { print found ? sum : "?" }' /proc/net/netfilter/nfnetlink_queue
}

# The kernel forwards what second-chance (or the baseline) rewrote for --forward kernel.
host_forwarding() {
    if [ "$1" = on ]; then
        ip netns exec "$P" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.eth0.accept_local=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
    else
        ip netns exec "$P" sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.eth0.accept_local=0
    fi
}

# The baseline doing second-chance's kernel work for a stream: the inner packet accepted (taken
# locally), or the packet rewritten for its next hop and sent from a raw socket or accepted for the
# kernel to forward.
same_work() {
    case $1 in
        syn|established) echo decap ;;
        forward) echo "forward-raw 198.18.0.11" ;;
        forward-kernel) echo "forward-kernel 198.18.0.11" ;;
    esac
}

# One baseline run: prints its packets/s; "offered decided dropped" go to $work/account.
run_baseline() {
    local stream=$1 mode=$2
    [ "$stream" = forward-kernel ] && [ "$mode" != plain ] && host_forwarding on
    # shellcheck disable=SC2086
    taskset -c "$receiver_cpu" ip netns exec "$P" "$bin/nfq-baseline" 0 1000 $mode > "$work/baseline" & base=$!
    sleep 0.3
    blast "$stream" > "$work/sent"
    drops=$(queue_drops)
    wait "$base"
    host_forwarding off
    echo "$(sent_count) $(packets < "$work/baseline") $drops" > "$work/account"
    rate < "$work/baseline"
}

# One second-chance run of a stream: prints its packets/s; its counters go to $work/stats.STREAM.
# A second argument names another build to run instead (the previous one, with the same flags).
run_second_chance() {
    local stream=$1 program=${2:-$bin/second-chance} extra=("${lab_peers[@]}" --allow-source 198.18.0.1)
    if [ "$stream" = forward-kernel ]; then
        host_forwarding on
        extra+=(--forward kernel)
    fi
    ip netns exec "$prefix-p2" iptables -t raw -Z PREROUTING
    # shellcheck disable=SC2086
    taskset -c "${RECEIVER_CPUS:-$receiver_cpu}" ip netns exec "$P" "$program" run ${QUEUES:---queue 0} --self 198.18.0.11 --control "$work/sc.sock" "${extra[@]}" ${SECOND_CHANCE_ARGS:-} 2>"$work/sc.log" & sc=$!
    for _ in $(seq 100); do [ -S "$work/sc.sock" ] && break; sleep 0.05; done
    taskset -c "$sender_cpu" "$bin/glb-lab" watch --control "$work/sc.sock" --idle-ms 1000 > "$work/watch" & watcher=$!
    sleep 0.2
    blast "$stream" ${RATE:+--rate "$RATE"} > "$work/sent"
    wait "$watcher"
    "$bin/second-chance" stats --control "$work/sc.sock" > "$work/stats.$stream"
    echo "$(sent_count) $(packets < "$work/watch") $(queue_drops)" > "$work/account"
    # What reached the next hop (its DROP rule counts every GUE packet that arrived).
    echo "p2_received: $(ip netns exec "$prefix-p2" iptables -t raw -L PREROUTING -v -x -n | awk '$3 == "DROP" {print $1; exit}')" >> "$work/stats.$stream"
    kill "$sc"; wait "$sc" || true
    host_forwarding off
    rate < "$work/watch"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)) }'; }

# baseline: accept each packet unchanged; same-work: the baseline doing second-chance's kernel
# work for the stream (see same_work). Each round runs the receivers one after the other; the row
# shows the medians. Then what was offered, decided and dropped by the kernel's queue, summed over
# the rounds; and one more second-chance run at 80% of the same-work baseline's median rate, where
# nothing should be dropped.
rounds=${ROUNDS:-5}
echo "$rounds rounds per stream: medians of packets/s and of each round's ratios; every round's ratio second-chance/same-work"
printf '%-15s %12s %13s %15s %8s %11s' stream baseline/s same-work/s second-chance/s ratio ratio-plain
[ -n "${PREVIOUS:-}" ] && printf ' %12s %12s' previous/s vs-previous
echo
add_account() { awk -v a="$1" -v b="$(cat "$work/account")" 'BEGIN { split(a, x, "/"); split(b, y, " "); printf "%d/%d/%d", x[1] + y[1], x[2] + y[2], x[3] + y[3] }'; }
for stream in ${STREAMS:-syn established forward forward-kernel}; do
    baselines="" works="" ours_all="" sents="" per_round="" ratios="" plain_ratios="" previous_all="" previous_ratios=""
    work_account="0/0/0" ours_account="0/0/0"
    for round in $(seq "$rounds"); do
        baseline=$(run_baseline "$stream" plain)
        same=$(run_baseline "$stream" "$(same_work "$stream")")
        work_account=$(add_account "$work_account")
        # The previous build first: the counters and sender figures shown are this build's.
        [ -n "${PREVIOUS:-}" ] && previous=$(run_second_chance "$stream" "$PREVIOUS")
        ours=$(run_second_chance "$stream")
        ours_account=$(add_account "$ours_account")
        sent=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$work/sent")
        if [ -n "${PREVIOUS:-}" ]; then
            previous_all+=" $previous"
            previous_ratios+=" $(awk -v a="$ours" -v b="$previous" 'BEGIN { printf "%d", (b > 0 ? 1000 * a / b : 0) }')"
        fi
        baselines+=" $baseline" works+=" $same" ours_all+=" $ours" sents+=" $sent"
        # Marked * when second-chance kept up with its sender: that figure is a floor, not its ceiling.
        per_round+=" $(awk -v a="$ours" -v b="$same" -v s="$sent" 'BEGIN { printf "%.2f%s", (b > 0 ? a / b : 0), (a >= 0.98 * s ? "*" : "") }')"
        ratios+=" $(awk -v a="$ours" -v b="$same" 'BEGIN { printf "%d", (b > 0 ? 1000 * a / b : 0) }')"
        plain_ratios+=" $(awk -v a="$ours" -v b="$baseline" 'BEGIN { printf "%d", (b > 0 ? 1000 * a / b : 0) }')"
    done
    baseline=$(echo "$baselines" | median) same=$(echo "$works" | median) ours=$(echo "$ours_all" | median)
    # The ratios are the medians of each round's ratio (each round's receivers met the same sender).
    ratio=$(echo "$ratios" | median | awk '{ printf "%.2f", $1 / 1000 }')
    ratio_plain=$(echo "$plain_ratios" | median | awk '{ printf "%.2f", $1 / 1000 }')
    printf '%-15s %12s %13s %15s %8s %11s' "$stream" "$baseline" "$same" "$ours" "${ratio}x" "${ratio_plain}x"
    if [ -n "${PREVIOUS:-}" ]; then
        printf ' %12s %11sx' "$(echo "$previous_all" | median)" "$(echo "$previous_ratios" | median | awk '{ printf "%.2f", $1 / 1000 }')"
    fi
    echo
    echo "                rounds:${per_round} (* sender-bound); sent/s:${sents}"
    echo "                offered/decided/queue-dropped, all rounds: same-work $work_account, second-chance $ours_account"
    below=$(( same * 8 / 10 ))
    RATE=$below run_second_chance "$stream" > /dev/null
    echo "                at ${below}/s (80% of same-work): second-chance offered/decided/queue-dropped $(tr ' ' '/' < "$work/account")"
    grep -E "^(accepted_syn|accepted_established|forwarded|socket_lookups|socket_lookup_cache_hits|p2_received):" "$work/stats.$stream" | tr '\n' ' ' | sed 's/^/                last run: /'
    echo
done

# Several queues: the same streams into one queue (one thread, one core) and spread over two by
# flow (--queue-balance 0:1: two threads, on both cores, which the sender shares). One run each.
echo "several queues: second-chance packets/s, one queue against --queue-balance 0:1 (offered/decided/queue-dropped)"
# Rewrites P1's NFQUEUE rules: balance '--queue-balance 0:1', or balance '--queue-num 0'.
balance() { ip netns exec "$P" sh -c "iptables-save -t raw | sed 's/--queue-num 0 /$1 /; s/--queue-balance 0:1 /$1 /' | iptables-restore"; }
for stream in ${STREAMS:-syn established forward forward-kernel}; do
    one=$(run_second_chance "$stream")
    one_account=$(tr ' ' '/' < "$work/account")
    balance "--queue-balance 0:1"
    two=$(QUEUES="--queue 0 --queue 1" RECEIVER_CPUS=0,1 run_second_chance "$stream")
    two_account=$(tr ' ' '/' < "$work/account")
    balance "--queue-num 0"
    printf '%-15s one queue %9s (%s)   two queues %9s (%s)   %sx\n' "$stream" "$one" "$one_account" "$two" "$two_account" \
        "$(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
done
