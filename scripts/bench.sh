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
# The lab, the established connections, the senders and the queue's counters: shared with bench-fastpath.sh.
. scripts/bench-streams.sh
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
