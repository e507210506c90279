#!/usr/bin/env bash
# HAProxy reloads under load: the same load and the same number of reloads for each way of
# reloading: HAProxy on sockets bindkeeper owns ({{bind ...}} -> fd@N, one kernel socket handed to
# every HAProxy); the same with a socket group (shards=2: one socket per HAProxy thread, two threads
# pinned to the two CPUs); HAProxy binding its own SO_REUSEPORT sockets (plain -sf), without and with
# net.ipv4.tcp_migrate_req=1; and HAProxy's own seamless reload (master-worker, the listeners handed
# over the stats socket). Then a crash of each: every process killed mid-load, started again 1 s
# later.
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
vip=198.19.2.10
. scripts/lab-common.sh
broker_lab_begin psbr "$vip"

template() {  # template NAME BIND [GLOBAL-LINE]: the lab's HAProxy configuration
    sed "s|@BIND@|$2|" examples/lab/haproxy-answer.cfg.in > "$work/$1.cfg.tmpl"
    if [ -n "${3:-}" ]; then sed -i "s|^global$|global\n    $3|" "$work/$1.cfg.tmpl"; fi
}

# Starts one row's HAProxy and sets: reload (a command), reloaded (prints reloads done so far),
# kill_all (kills every process of the row, as a crash would), restart (starts it again).
start_row() {  # start_row MODE NAME PORT
    local mode=$1 name=$2 port=$3
    log="$work/$name.log"
    case $mode in
        bindkeeper|group|plain|migrate)
            case $mode in
                bindkeeper) template "$name" "{{bind tcp://$vip:$port?backlog=4096}}" ;;
                group) template "$name" "{{bind tcp://$vip:$port?backlog=4096\&shards=2}}" \
                    'nbthread 2\n    cpu-map 1/1 0\n    cpu-map 1/2 1' ;;
                *) template "$name" "$vip:$port" ;;
            esac
            ip netns exec "$ns" sysctl -qw net.ipv4.tcp_migrate_req="$([ "$mode" = migrate ] && echo 1 || echo 0)"
            ip netns exec "$ns" "$bin/bindkeeper" haproxy --socket "$work/bk.sock" -f "$work/$name.cfg.tmpl" -p "$work/$name.pid" \
                --stop-timeout 5 -- /usr/sbin/haproxy 2>>"$log" & supervisor=$!; pids+=($supervisor)
            for _ in $(seq 50); do [ -s "$work/$name.pid" ] && break; sleep 0.1; done
            reload() { kill -USR2 "$supervisor"; }
            reloaded() { grep -c "reloaded:" "$log" || true; }
            ;;
        master-worker)
            # HAProxy's own seamless reload: master-worker mode, the listeners handed to each new
            # worker over the stats socket (expose-fd listeners, -x added by the master).
            template "$name" "$vip:$port" "stats socket $work/$name.stats mode 600 level admin expose-fd listeners"
            ip netns exec "$ns" sysctl -qw net.ipv4.tcp_migrate_req=0
            ip netns exec "$ns" /usr/sbin/haproxy -W -f "$work/$name.cfg.tmpl" -p "$work/$name.pid" 2>>"$log" & supervisor=$!; pids+=($supervisor)
            for _ in $(seq 50); do [ -S "$work/$name.stats" ] && break; sleep 0.1; done
            reload() { kill -USR2 "$supervisor"; }
            reloaded() { local n; n=$(grep -c "Loading success" "$log" || true); echo $((n > 0 ? n - 1 : 0)); }
            ;;
    esac
    # The load starts only once the port listens: a pid file can appear before HAProxy binds, and
    # the refusals of that moment would be counted against the reloads.
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$ns" ss -Hltn "sport = :$port")" ] && return
        sleep 0.05
    done
    echo "bench-reload: nothing listens on $vip:$port after 5 s ($mode)" >&2
    return 1
}

seconds=$(( reloads * (interval_ms + 60) / 1000 + 3 ))
echo "bench-reload: $reloads reloads per run, one every ${interval_ms} ms after the previous took effect;"
echo "  load: new HTTP/1.0 connections from $concurrency threads for ${seconds} s ($(nproc) cores)"
echo "  rows: bindkeeper (one socket shared by every HAProxy), bindkeeper's socket group (shards=2,"
echo "  one socket per HAProxy thread), plain SO_REUSEPORT sockets (-sf),"
echo "  the same with net.ipv4.tcp_migrate_req=1, HAProxy master-worker with expose-fd listeners"
echo
echo "| run | sockets | reloads | connections | ok | failed | refused | reset | timeout |"
echo "|---|---|---|---|---|---|---|---|---|"
label_of() {
    case $1 in
        bindkeeper) echo "bindkeeper (shared)" ;; group) echo "bindkeeper group (shards=2)" ;;
        plain) echo "plain SO_REUSEPORT" ;;
        migrate) echo "SO_REUSEPORT + tcp_migrate_req" ;; master-worker) echo "HAProxy master-worker (-x)" ;;
    esac
}
result() {  # result LABEL ROUND RELOADS: one table row from the load's summary
    local line
    line=$(grep '^http-load:' "$work/load")
    get() { echo "$line" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
    echo "| $2 | $1 | $3 | $(get attempts) | $(get ok) | $(get failed) | $(get refused) | $(get reset) | $(get timeout) |"
}
stop_row() {
    kill "$supervisor" 2>/dev/null; wait "$supervisor" 2>/dev/null || true
    ip netns exec "$ns" pkill -KILL -f "$work/$1.cfg" 2>/dev/null || true
}
port=8000
for round in $(seq "$rounds"); do
    for mode in bindkeeper group plain migrate master-worker; do
        port=$((port + 1)) name="$mode-$round"
        start_row "$mode" "$name" "$port"
        ip netns exec "$ns" "$bin/glb-lab" http-load --target "$vip:$port" --seconds "$seconds" --concurrency "$concurrency" --max-connections 10000000 > "$work/load" & load=$!
        sleep 0.5
        for _ in $(seq "$reloads"); do
            before=$(reloaded)
            reload
            for _ in $(seq 200); do [ "$(reloaded)" -gt "$before" ] && break; sleep 0.02; done
            sleep "$(awk "BEGIN {print $interval_ms / 1000}")"
        done
        wait "$load"
        done_reloads=$(reloaded)
        stop_row "$name"
        result "$(label_of "$mode")" "$round" "$done_reloads"
    done
done

# A crash: every HAProxy process of the row (and its supervisor or master) killed mid-load with
# SIGKILL, then started again 1 s later. bindkeeper's socket stays open in the broker, so the
# kernel keeps queueing connections for the next HAProxy; the others' sockets close with them.
echo
echo "| crash | sockets | restarts | connections | ok | failed | refused | reset | timeout |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in bindkeeper group plain migrate master-worker; do
    port=$((port + 1)) name="$mode-crash"
    start_row "$mode" "$name" "$port"
    ip netns exec "$ns" "$bin/glb-lab" http-load --target "$vip:$port" --seconds 6 --concurrency "$concurrency" --timeout-seconds 5 --max-connections 10000000 > "$work/load" & load=$!
    sleep 2
    kill -KILL "$supervisor" 2>/dev/null || true
    wait "$supervisor" 2>/dev/null || true  # reaped here, so the shell reports no "Killed"
    ip netns exec "$ns" pkill -KILL -f "$work/$name.cfg" 2>/dev/null || true
    sleep 1
    rm -f "$work/$name.pid" "$work/$name.stats"
    start_row "$mode" "$name" "$port"
    wait "$load"
    stop_row "$name"
    result "$(label_of "$mode")" 1 1
done
