#!/usr/bin/env bash
# second-chance restarting under load, in the lab: long-lived connections (a round trip every
# 100 ms) and new connections every second go through the director to P1, which owns them, while
# P1's second-chance is left alone, stopped and started (SIGTERM, as without the fd store), re-executed
# (SIGUSR1), killed with -9 and restarted by a holder of its fd store (`glb-lab supervise`, as systemd
# does), and re-executed after its file was replaced by a different build. Same load, same number of
# cycles for each row. Prints, per row: connections broken, round trips and new connections slower
# than 200 ms (a retransmission), TCP retransmissions seen by the client and by P1, GUE packets that
# met P1's closed port while no daemon was bound (UdpNoPorts), and the kernel queue's drops.
#   scripts/bench-lifecycle.sh [--cycles 20] [--connections 32] [--new-per-second 50]
# FAST_PATH=off runs the daemon on NFQUEUE alone (default auto: the tc fast path).
# Runs as root in the lab's namespaces (prefix psbl); cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=20 connections=32 new_per_second=50
while [ $# -gt 0 ]; do
    case $1 in
        --cycles) cycles=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --new-per-second) new_per_second=$2; shift 2 ;;
        *) echo "usage: $0 [--cycles N] [--connections N] [--new-per-second N]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-lifecycle: run as root" >&2; exit 1; }
scripts/setup.sh
swift build -c release >/dev/null
bin=$(swift build -c release --show-bin-path)
prefix=psbl work=$(mktemp -d)
pids=() plain_pid=
cleanup() {
    for pid in "${pids[@]}" $plain_pid; do kill "$pid" 2>/dev/null || true; done
    [ -f "$work/p1.pid" ] && kill -9 "$(cat "$work/p1.pid")" 2>/dev/null || true
    sleep 0.2
    examples/lab/topology.sh down "$prefix" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
examples/lab/topology.sh up "$prefix" >/dev/null
in_ns() { local host=$1; shift; ip netns exec "$prefix-$host" "$@"; }

# The director sends every flow to P1, which answers with an echo service on the VIP. (Background
# processes are started by `ip netns exec` itself, so that $! is theirs.)
printf '198.18.0.11\n' > "$work/table"
ip netns exec "$prefix-d" "$bin/glb-lab" director --self 198.18.0.2 --table "$work/table" 2>"$work/director.log" & pids+=($!)
ip netns exec "$prefix-p1" "$bin/glb-lab" echo --listen 198.19.0.10:80 2>"$work/echo.log" & pids+=($!)

# P1's daemon runs from a file of its own, so that an upgrade can replace it.
mkdir -p "$work/sbin"
cp "$bin/second-chance" "$work/sbin/second-chance"
cp "$bin/second-chance" "$work/second-chance.a"
{ cat "$bin/second-chance"; echo "another build"; } > "$work/second-chance.b"
chmod 0755 "$work/second-chance.a" "$work/second-chance.b"
daemon=("$work/sbin/second-chance" run --queue 0 --self 198.18.0.11 --allow-source 198.18.0.0/24 --control "$work/p1.sock" --fast-path "${FAST_PATH:-auto}")

stats() { "$bin/second-chance" stats --control "$work/p1.sock" 2>/dev/null; }
stat_value() { stats | awk -F': ' -v name="$1" '$1 == name {print $2}'; }
wait_until() {  # wait_until SECONDS COMMAND...
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ $SECONDS -lt $deadline ] || { echo "bench-lifecycle: timed out: $*; P1's log ends:" >&2; tail -5 "$work/p1.log" >&2; return 1; }
        sleep 0.02
    done
}
serving() { stats >/dev/null; }
reexecs_are() { [ "$(stat_value reexecs)" = "$1" ]; }
pid_changed() { [ "$(cat "$work/p1.pid")" != "$1" ]; }
start_plain() {
    ip netns exec "$prefix-p1" "${daemon[@]}" 2>>"$work/p1.log" & plain_pid=$!
    wait_until 10 serving
}
stop_plain() { kill -TERM "$plain_pid"; wait "$plain_pid" || true; }

counter() {  # counter HOST NAME: an absolute kernel counter (nstat) in a host's namespace
    in_ns "$1" nstat -az "$2" | awk -v name="$2" '$1 == name {print $2}'
}
queue_drops() {  # dropped by the kernel queue (full) plus dropped on the way to userspace
    in_ns p1 cat /proc/net/netfilter/nfnetlink_queue | awk '$1 == 0 {print $6 + $7}' | grep . || echo 0
}

reexecs=0
one_cycle() {  # one_cycle KIND
    case $1 in
        none) ;;
        stop-start) stop_plain; start_plain ;;
        reexec)
            reexecs=$((reexecs + 1))
            kill -USR1 "$(cat "$work/p1.pid")"
            wait_until 10 reexecs_are "$reexecs" ;;
        kill-9)
            local old; old=$(cat "$work/p1.pid")
            kill -9 "$old"
            wait_until 10 pid_changed "$old"
            wait_until 10 serving
            reexecs=0 ;;
        upgrade)
            # Another build renamed over the running file, as a package upgrade installs it.
            local next=b
            [ "$(stat_value build)" = "$build_b" ] && next=a
            cp "$work/second-chance.$next" "$work/sbin/second-chance.new"
            mv "$work/sbin/second-chance.new" "$work/sbin/second-chance"
            "$bin/second-chance" reexec --control "$work/p1.sock" >/dev/null ;;
    esac
}

build_b=$("$work/second-chance.b" version | awk '{print $NF}')
rows=()
run_row() {  # run_row KIND
    local kind=$1 seconds=$((cycles + 4))
    local retrans_c retrans_p1 noports drops
    retrans_c=$(counter c TcpRetransSegs) retrans_p1=$(counter p1 TcpRetransSegs)
    noports=$(counter p1 UdpNoPorts) drops=$(queue_drops)
    ip netns exec "$prefix-c" "$bin/glb-lab" clients --target 198.19.0.10:80 --connections "$connections" --seconds "$seconds" \
        --interval-ms 100 --new-per-second "$new_per_second" > "$work/clients.out" 2>&1 &
    local load=$!
    sleep 2
    for _ in $(seq "$cycles"); do
        one_cycle "$kind"
        sleep 0.9
    done
    wait "$load" || true
    local line; line=$(grep '^clients:' "$work/clients.out") || { echo "bench-lifecycle: the clients failed:" >&2; cat "$work/clients.out" >&2; exit 1; }
    field() { echo "$line" | tr ' ' '\n' | awk -F= -v name="$1" '$1 == name {print $2}'; }
    local row
    row=$(printf '%-11s %6s %7s %6s %6s %7s %7s %7s %8s %8s %8s %7s' "$kind" "$cycles" \
        "$(field round_trips)" "$(( connections - $(field alive) ))" "$(field slow)" \
        "$(field new_ok)" "$(field new_failed)" "$(field new_slow)" \
        "$(( $(counter c TcpRetransSegs) - retrans_c ))" "$(( $(counter p1 TcpRetransSegs) - retrans_p1 ))" \
        "$(( $(counter p1 UdpNoPorts) - noports ))" "$(( $(queue_drops) - drops ))")
    rows+=("$row")
    echo "$row"
}

echo "bench-lifecycle: $(date -u +%FT%TZ), $(nproc) cores, $(uname -r); $connections long-lived connections (a round trip every 100 ms) + $new_per_second new/s through the director to P1; $cycles cycles per row"
header=$(printf '%-11s %6s %7s %6s %6s %7s %7s %7s %8s %8s %8s %7s' row cycles rtts broken slow new_ok new_err new_slow retr_cli retr_p1 bypassed q_drops)
echo "$header"
start_plain
run_row none
run_row stop-start
stop_plain
# From here a holder of the fd store restarts the daemon, as systemd would.
ip netns exec "$prefix-p1" "$bin/glb-lab" supervise --notify-socket "$work/notify.sock" --pid-file "$work/p1.pid" --restart-ms 100 -- "${daemon[@]}" \
    2>>"$work/p1.log" & pids+=($!)
wait_until 10 serving
run_row reexec
run_row kill-9
reexecs=0
run_row upgrade
echo "bench-lifecycle: $(stats | grep -E '^fast_path(_total_packets|_up_no_route_to_hop)?:' | tr '\n' ' ')(the last daemon)"
echo "bench-lifecycle: rtts/new_ok: answered; broken: long-lived connections lost; slow/new_slow: over 200 ms (a retransmission);"
echo "  retr_cli/retr_p1: TcpRetransSegs in the client's and P1's namespaces; bypassed: GUE that met P1's closed port (no reader bound);"
echo "  q_drops: the kernel queue's drops (full or undeliverable)"
