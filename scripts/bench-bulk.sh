#!/usr/bin/env bash
# Bulk TCP uploads to a listener on the VIP of proxy P1, every row in one invocation:
#   u  unencapsulated, the client straight to P1 (the limit)
#   x  through GUE from the lab's director in BPF (glb-lab bpf-director), decided in XDP (--fast-path xdp)
#   t  the same, decided at tc (--fast-path tc)
#   q  the same, decided through NFQUEUE (--fast-path off)
# and again, as U, X and T, with the lab's wire into P1 (glb-lab xdp-wire): the switch's port from
# the sender redirects P1's frames in XDP into the port toward P1, whose veth then receives XDP
# frames as a NIC's ring holds them, instead of skbs it copies into pages of its own before its
# XDP program runs (the copy is then made on the sender's CPU, where a NIC's DMA would be);
# over 1 and over 8 connections (iperf3, cubic). The client sends MTU-sized frames with full
# checksums (TSO, GSO and checksum offload off), as a NIC delivers them; the switch's port
# toward P1 does not aggregate either (it stands for the wire); P1's interface has GRO on, as a NIC
# has. P1's receive work (its interface's NAPI in a thread, XDP, GRO, tc, IP, TCP) and its
# listener run on CPU 0; the client, the switch and the director on the last CPU.
# Each row: throughput, the CPU-seconds per GiB received of CPU 0 (the proxy) and of the whole
# machine (user, system, irq, softirq from /proc/stat), frames per skb reaching IP on P1 (IpExt's
# per-segment counts over Ip InReceives), the frames the switch's port dropped because P1's receive
# ring was full and the client's retransmissions (both per 100 frames received), and what set the
# pace: the busier CPU, or "losses" where neither CPU reached 90 %.
# Bounded: SECONDS_PER_RUN (default 5) per run, ROUNDS (default 3), medians. ROWS (default
# "u x t q U X T") runs some rows only; PERF_DIR=DIR records CPU 0 (perf, call graphs) through each
# upload into DIR/ROW-CONNECTIONS.data.
#   scripts/bench-bulk.sh
set -euo pipefail
shopt -s inherit_errexit  # a failed step inside $(...) stops the script too
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
. scripts/lab-common.sh
prefix=bulk
LAB_PEERS=198.18.0.2  # only the director sends GUE here
lab_begin "$prefix"
P=$prefix-p1
VIP=198.19.0.10
proxy_cpu=0
client_cpu=$(( $(nproc) - 1 ))
command -v iperf3 >/dev/null && command -v ethtool >/dev/null || { echo "bench-bulk: needs iperf3 and ethtool (scripts/setup.sh)" >&2; exit 1; }

ip netns exec "$prefix-c" ethtool -K eth0 tso off gso off tx off >/dev/null
ip netns exec "$prefix-sw" ethtool -K "$prefix-p1" tso off gso off >/dev/null
# NAPI threads that exist before P1's interface gets its own: never touched here.
others=" $(pgrep '^napi/' | tr '\n' ' ' || true) "
# What P1 sends (its ACKs) is received by the switch, the client and the director on the last CPU
# (RPS on their veths, which take frames through the backlog of the CPU that sent them): otherwise
# the switch's forwarding and the client's TCP (which sends new data as ACKs arrive, and with it
# the director's and the wire's work) would run on P1's CPU and count as the proxy's.
client_mask=$(printf '%x' $((1 << client_cpu)))
ip netns exec "$prefix-sw" sh -c "echo $client_mask > /sys/class/net/$prefix-p1/queues/rx-0/rps_cpus"
for host in c d; do ip netns exec "$prefix-$host" sh -c "echo $client_mask > /sys/class/net/eth0/queues/rx-0/rps_cpus"; done
ip netns exec "$P" ethtool -K eth0 gro on >/dev/null
ip netns exec "$P" sh -c 'echo 1 > /sys/class/net/eth0/threaded'
printf '198.18.0.11\n198.18.0.12 draining\n' > "$work/table"
taskset -c "$client_cpu" ip netns exec "$prefix-d" "$bin/glb-lab" bpf-director --self 198.18.0.2 \
    --table "$work/table" --vip "$VIP" 2> "$work/director.log" & pids+=($!)

# P1's NAPI threads (made since `others` was read: only P1's interface has GRO or XDP in this lab)
# go to CPU 0.
pin_napi() {
    for pid in $(pgrep '^napi/' || true); do
        case "$others" in *" $pid "*) ;; *) taskset -pc "$proxy_cpu" "$pid" >/dev/null; chrt -f -p 50 "$pid" ;; esac
    done
}

sc_pid=
start_daemon() {
    rm -f "$work/sc.sock"
    taskset -c "$proxy_cpu" ip netns exec "$P" "$bin/second-chance" run --queue 0 --self 198.18.0.11 \
        --allow-source 198.18.0.2 --fast-path "$1" --control "$work/sc.sock" 2>> "$work/sc.log" & sc_pid=$!
    pids+=("$sc_pid")
    for _ in $(seq 100); do [ -S "$work/sc.sock" ] && break; sleep 0.1; done
    [ -S "$work/sc.sock" ] || { echo "bench-bulk: second-chance did not start" >&2; cat "$work/sc.log" >&2; exit 1; }
}
# The wire into P1 from one switch port (U, X, T), and none (u, x, t, q).
p1_mac=$(ip -n "$P" -br link show eth0 | awk '{ print $3 }')
wire_from() { ip netns exec "$prefix-sw" "$bin/glb-lab" xdp-wire --interface "$prefix-$1" --to "$prefix-p1" --mac "$p1_mac"; }
wire_off() { for port in c d; do ip -n "$prefix-sw" link set dev "$prefix-$port" xdpdrv off; done; }

stop_daemon() { [ -n "$sc_pid" ] && kill "$sc_pid" && wait "$sc_pid" 2>/dev/null; sc_pid=; }

# Busy jiffies (user, nice, system, irq, softirq) of one CPU, or of all with "cpu".
busy() { awk -v cpu="$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
segments() {
    ip netns exec "$P" awk '/^IpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[i] = $i; h = 1 } else { for (i = 1; i <= NF; i++) if (n[i] ~ /^In(NoECT|ECT0|ECT1|CE)Pkts$/) s += $i } } END { print s }' /proc/net/netstat
}
# Frames the switch's port could not hand to P1's interface (its receive ring full): skbs the port
# dropped, and XDP frames the wire redirected that P1's ring had no room for.
ring_drops() {
    ip -n "$prefix-sw" -s -j link show "$prefix-p1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["dropped"])'
}
received() {
    ip netns exec "$P" awk '/^Ip:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "InReceives") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# One upload: prints "Gbit/s proxy-CPU-s/GiB machine-CPU-s/GiB frames/skb proxy% client% ring-drops% retransmits%".
upload() {
    local connections=$1 hz
    hz=$(getconf CLK_TCK)
    # One client, and never longer than the run and a margin: a client that cannot connect ends it.
    taskset -c "$proxy_cpu" ip netns exec "$P" timeout $((seconds + 30)) iperf3 -s -B "$VIP" -1 >/dev/null 2>&1 &
    local server=$!
    pids+=("$server")
    sleep 0.5
    pin_napi
    local p0 m0 c0 s0 r0 d0
    p0=$(busy "cpu$proxy_cpu"); c0=$(busy "cpu$client_cpu"); m0=$(busy cpu); s0=$(segments); r0=$(received)
    d0=$(ring_drops)
    local perf=
    if [ -n "${PERF_DIR:-}" ]; then
        mkdir -p "$PERF_DIR"
        perf record -q -C "$proxy_cpu" -g -o "$PERF_DIR/$row-$connections.data" -- sleep "$seconds" & perf=$!
        pids+=("$perf")
    fi
    taskset -c "$client_cpu" ip netns exec "$prefix-c" timeout $((seconds + 30)) \
        iperf3 -c "$VIP" -t "$seconds" -P "$connections" -J > "$work/run.json"
    [ -z "$perf" ] || wait "$perf" || true
    local p1 m1 c1 s1 r1 d1
    p1=$(busy "cpu$proxy_cpu"); c1=$(busy "cpu$client_cpu"); m1=$(busy cpu); s1=$(segments); r1=$(received)
    d1=$(ring_drops)
    wait "$server" 2>/dev/null || true
    python3 - "$work/run.json" "$hz" "$((p1 - p0))" "$((m1 - m0))" "$((c1 - c0))" "$((s1 - s0))" "$((r1 - r0))" "$((d1 - d0))" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
hz = int(sys.argv[2]); proxy, machine, client, segs, skbs, drops = (int(v) for v in sys.argv[3:9])
end = run["end"]["sum_received"]
gib = end["bytes"] / 2**30
elapsed = end["seconds"]
frames = max(segs, 1)
print(f"{end['bits_per_second'] / 1e9:.2f} {proxy / hz / gib:.2f} {machine / hz / gib:.2f} "
      f"{segs / max(skbs, 1):.1f} {100 * proxy / hz / elapsed:.0f} {100 * client / hz / elapsed:.0f} "
      f"{100 * drops / frames:.2f} {100 * run['end']['sum_sent'].get('retransmits', 0) / frames:.2f}")
EOF
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

route_direct() { ip -n "$prefix-c" route replace "$VIP/32" via 198.18.0.11; }
route_director() { ip -n "$prefix-c" route replace "$VIP/32" via 198.18.0.2; }

declare -A results
for round in $(seq "$rounds"); do
    for row in ${ROWS:-u x t q U X T}; do
        case $row in
            u) route_direct ;;
            x) route_director; start_daemon xdp ;;
            t) route_director; start_daemon tc ;;
            q) route_director; start_daemon off ;;
            U) route_direct; wire_from c ;;
            X) route_director; wire_from d; start_daemon xdp ;;
            T) route_director; wire_from d; start_daemon tc ;;
        esac
        for connections in 1 8; do
            results[$row,$connections]+="$(upload "$connections")"$'\n'
        done
        stop_daemon
        case $row in U|X|T) wire_off ;; esac
    done
    echo "bench-bulk: round $round of $rounds done" >&2
done

echo "Bulk upload to the VIP, $seconds s a run, medians of $rounds rounds ($(nproc) CPUs; proxy on CPU $proxy_cpu)"
printf '%-28s %5s %7s %7s %10s %8s %10s %8s %7s %8s %7s %7s  %s\n' row conns Gbit/s "x of u" "proxy s/GiB" \
    "x of u" "machine s/GiB" "frames/skb" "proxy%" "client%" "drop%" "retx%" pace
echo "(the wire's rows U, X and T: \"x of u\" against the wire's unencapsulated row)"
ratio() { [ -n "$2" ] || { echo -; return; }; awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
declare -a base_rate base_cpu
declare -A names=([u]="unencapsulated (the limit)" [x]="GUE, decided in XDP" [t]="GUE, decided at tc" [q]="GUE, NFQUEUE"
    [U]="wire: unencapsulated" [X]="wire: GUE, decided in XDP" [T]="wire: GUE, decided at tc")
for row in ${ROWS:-u x t q U X T}; do
    for connections in 1 8; do
        read -r gbps proxy machine frames proxy_busy client_busy drops retransmits < <(
            for column in 1 2 3 4 5 6 7 8; do
                printf '%s\n' "${results[$row,$connections]}" | awk -v c="$column" 'NF { print $c }' | median
            done | paste -sd' ')
        # The wire's rows are taken against the wire's unencapsulated row.
        case $row in u|U) base_rate[$connections]=$gbps base_cpu[$connections]=$proxy ;; esac
        pace=receiver
        [ "${client_busy%.*}" -gt "${proxy_busy%.*}" ] && pace=sender
        [ "${client_busy%.*}" -lt 90 ] && [ "${proxy_busy%.*}" -lt 90 ] && pace=losses
        printf '%-28s %5s %7s %7s %10s %8s %10s %8s %7s %8s %7s %7s  %s\n' "${names[$row]}" "$connections" \
            "$gbps" "$(ratio "$gbps" "${base_rate[$connections]}")" "$proxy" \
            "$(ratio "$proxy" "${base_cpu[$connections]}")" "$machine" "$frames" "$proxy_busy" "$client_busy" \
            "$drops" "$retransmits" "$pace"
    done
done
