#!/usr/bin/env bash
# Canary reloads under HTTP load: `bindkeeper haproxy --canary-percent 5 --canary-seconds 5` on a
# socket group, reloaded ROUNDS times in a row to a configuration that passes `haproxy -c` and
# answers 503 at run time (its backend on a port where nothing listens), then once to a good one.
# Per round: the window's new connections and failures (only the candidate's share should fail),
# the failures in the 2 s after the rollback (none should), resets (none: what was queued for the
# candidate moves to the running generation). The baseline, in the same invocation: the same bad
# configuration reloaded without a canary, failures over the same window.
#   scripts/bench-canary.sh [--rounds 20] [--percent 5] [--seconds 5] [--concurrency 16]
# Runs as root in a namespace of its own (198.19.2.10, 198.18.2.1); cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=20 percent=5 seconds=5 concurrency=16
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --percent) percent=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--percent P] [--seconds S] [--concurrency N]" >&2; exit 2 ;;
    esac
done
vip=198.19.2.10 origin=198.18.2.1
. scripts/lab-common.sh
broker_lab_begin psbc "$vip" "$origin"

template() {  # template NAME PORT BACKEND-PORT COMMENT
    { echo "# $4"; sed -e "s|@BIND@|{{bind tcp://$vip:$2?shards=2\&backlog=4096}}|" \
        -e "s|@BACKEND@|$origin:$3|" -e "s|@ORIGIN@|$origin:8181|" \
        -e "s|@STATS@|$work/$1-\${BINDKEEPER_GENERATION}.sock|" examples/lab/haproxy-canary.cfg.in; } \
        > "$work/$1.cfg.tmpl"
}
start() {  # start NAME PORT [FLAGS...]: a supervisor on a good configuration, once it listens
    local name=$1 port=$2; shift 2
    template "$name" "$port" 8181 good
    ip netns exec "$ns" "$bin/bindkeeper" haproxy --socket "$work/bk.sock" -f "$work/$name.cfg.tmpl" \
        -p "$work/$name.pid" --stop-timeout 5 "$@" -- /usr/sbin/haproxy 2>>"$work/$name.log" & supervisor=$!
    pids+=($supervisor)
    for _ in $(seq 100); do [ -n "$(ip netns exec "$ns" ss -Hltn "sport = :$port")" ] && return; sleep 0.05; done
    echo "bench-canary: nothing listens on $vip:$port" >&2; return 1
}
load() {  # load PORT SECONDS: the load's summary line
    ip netns exec "$ns" "$bin/glb-lab" http-load --target "$vip:$1" --seconds "$2" --concurrency "$concurrency" \
        --max-connections 10000000 | grep '^http-load:'
}
get() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }
share() { awk -v f="$1" -v a="$2" 'BEGIN { printf "%.2f %%", a ? 100 * f / a : 0 }'; }
verdicts() { grep -c "canary $2" "$work/$1.log" || true; }
wait_verdict() {  # wait_verdict NAME KIND BEFORE
    for _ in $(seq 300); do [ "$(verdicts "$1" "$2")" -gt "$3" ] && return; sleep 0.05; done
    echo "bench-canary: no verdict ($2) in 15 s" >&2; return 1
}

echo "bench-canary: $rounds bad configurations in a row at a ${percent} % canary for ${seconds} s, then a good one;"
echo "  load: new HTTP/1.0 connections from $concurrency threads ($(nproc) cores, $(uname -r))"
echo
echo "| round | template | window connections | window failed | failed share | reset | after the verdict: connections | failed |"
echo "|---|---|---|---|---|---|---|---|"
start canary 86 --canary-percent "$percent" --canary-seconds "$seconds" \
    --canary-stats "$work/canary-\${BINDKEEPER_GENERATION}.sock"
served=$(head -1 "$work/canary.pid")
total_failed=0 total=0 worst=0
round_row() {  # round_row ROUND KIND BACKEND-PORT VERDICT
    local before window after
    template canary 86 "$3" "$2 $1"
    before=$(verdicts canary "$4")
    load 86 "$seconds" > "$work/window" & local job=$!
    kill -HUP "$supervisor"
    wait "$job"
    window=$(cat "$work/window")
    wait_verdict canary "$4" "$before"
    after=$(load 86 2)
    echo "| $1 | $2 | $(get "$window" attempts) | $(get "$window" failed) | $(share "$(get "$window" failed)" "$(get "$window" attempts)") | $(get "$window" reset) | $(get "$after" attempts) | $(get "$after" failed) |"
    [ "$2" = bad ] || return 0
    total_failed=$((total_failed + $(get "$window" failed))) total=$((total + $(get "$window" attempts)))
    worst=$(awk -v w="$worst" -v f="$(get "$window" failed)" -v a="$(get "$window" attempts)" 'BEGIN { s = a ? 100 * f / a : 0; print (s > w ? s : w) }')
}
for round in $(seq "$rounds"); do round_row "$round" bad 8182 "failed and rolled back"; done
still=$(head -1 "$work/canary.pid")
round_row "$((rounds + 1))" good 8181 passed
echo
echo "bad rounds: $(share "$total_failed" "$total") of the windows' connections failed (worst round $worst %);" \
    "the running HAProxy $([ "$still" = "$served" ] && echo "was never restarted (pid $served)" || echo "CHANGED ($served -> $still)")"

# The baseline: the same bad configuration, reloaded without a canary.
start plain 87
template plain 87 8182 "bad without a canary"
load 87 "$seconds" > "$work/window" & job=$!
sleep 0.2
kill -HUP "$supervisor"
wait "$job"
window=$(cat "$work/window")
echo "without a canary, the same bad configuration: $(get "$window" failed) of $(get "$window" attempts) connections" \
    "failed in ${seconds} s ($(share "$(get "$window" failed)" "$(get "$window" attempts)"))"
