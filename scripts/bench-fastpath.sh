#!/usr/bin/env bash
# The tc fast path against NFQUEUE, all rows in one run, for the established, forward and SYN
# streams: the floor (the GUE dropped on arrival by a raw-table rule: the cost of sending and
# receiving it), second-chance with the fast path (--fast-path tc), with XDP in the driver beside it
# (--fast-path xdp: veth runs it natively), second-chance through NFQUEUE (--fast-path off), and the
# bare C loop doing the same kernel work (nfq-baseline). Each row gives
# packets/s decided and the whole machine's CPU time per packet (user, system, irq and softirq of
# every CPU, the sender's included, from /proc/stat), and above the floor: what deciding costs.
# Bounded: COUNT packets per run (default 500000), at most 10 s each; ROUNDS (default 3), medians.
#   scripts/bench-fastpath.sh [COUNT]
# The proxy's side (its receive path and the daemon) gets CPU 0, the sender the last CPU (RPS=0: the
# proxy's receive path runs on the sender's CPU, as veth does by default).
# A row marked * kept up with its sender: its rate is the sender's, not its own ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-500000}
# The sender: whole frames from a packet socket (SENDER=udp: glb-lab blast's UDP socket).
[ "${SENDER:-frames}" = frames ] && SENDER_FRAMES=1
. scripts/bench-streams.sh

# The proxy's receive work (the tc program's with it) runs on the receiver's CPU, beside the daemon:
# RPS moves veth's receive processing off the sender's CPU, so that each side has a core of its own.
# RPS=0 leaves it on the sender's CPU (veth's default: the receive path runs where the sender sent).
[ "${RPS:-1}" = 1 ] && ip netns exec "$P" sh -c "echo $(printf %x $((1 << receiver_cpu))) > /sys/class/net/eth0/queues/rx-0/rps_cpus"
# The tc program forwards where the interface forwards and the next hop's neighbour is known.
ip -n "$P" neigh replace 198.18.0.12 lladdr "$(ip -n "$prefix-p2" -br link show eth0 | awk '{ print $3 }')" \
    dev eth0 nud permanent
fast_forwarding() { ip netns exec "$P" sysctl -qw net.ipv4.conf.eth0.forwarding="$1"; }

# The floor: a rule drops the GUE before anything decides it. Prints packets/s (the sender's
# duration), its count goes to $work/floor.
run_floor() {
    local stream=$1
    ip netns exec "$P" iptables -t raw -I PREROUTING 1 -p udp --dport 19523 -j DROP
    cpu_begin
    blast "$stream" > "$work/sent"
    cpu_end
    ip netns exec "$P" iptables -t raw -L PREROUTING -v -x -n | awk 'NR == 3 { print $1 }' > "$work/floor"
    ip netns exec "$P" iptables -t raw -D PREROUTING 1
    awk -v n="$(cat "$work/floor")" -v ms="$(sed -n 's/.*milliseconds=\([0-9]*\).*/\1/p' "$work/sent")" \
        'BEGIN { printf "%d", (ms > 0 ? n * 1000 / ms : 0) }'
}

# Microseconds of CPU per packet of the last run ($work/cpu jiffies over `packets`).
cpu_per_packet() { awk -v j="$(cat "$work/cpu")" -v n="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (n > 0 ? j * 1e6 / hz / n : 0) }'; }
decided() { awk '{ print $2 }' "$work/account"; }
mark() { awk -v a="$1" -v s="$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$work/sent")" 'BEGIN { printf "%s", (a >= 0.98 * s ? "*" : "") }'; }

rounds=${ROUNDS:-3}
echo "$rounds rounds per stream, medians; packets/s and CPU microseconds per packet (whole machine)"
printf '%-12s %-22s %-22s %-22s %-22s %-22s %10s %14s %14s\n' stream floor fast-path xdp nfqueue bare-loop "fast/nfq" \
    "cpu-above-floor" "xdp/tc-above"
for stream in ${STREAMS:-established forward syn}; do
    declare -A rates=() cpus=() marks=()
    for round in $(seq "$rounds"); do
        r=$(run_floor "$stream"); rates[floor]+=" $r"; cpus[floor]+=" $(cpu_per_packet "$(cat "$work/floor")")"
        marks[floor]+=$(mark "$r")
        [ "$stream" = forward ] && fast_forwarding 1
        r=$(FAST_PATH=tc run_second_chance "$stream"); rates[fast]+=" $r"; cpus[fast]+=" $(cpu_per_packet "$(decided)")"
        marks[fast]+=$(mark "$r")
        r=$(FAST_PATH=xdp run_second_chance "$stream"); rates[xdp]+=" $r"; cpus[xdp]+=" $(cpu_per_packet "$(decided)")"
        marks[xdp]+=$(mark "$r")
        fast_forwarding 0
        grep -E "^(fast_path_total_packets|fast_path_up_[a-z_]*|queue_0_packets):" "$work/stats.$stream" |
            awk '$2 != 0' | tr '\n' ' ' > "$work/fast.$stream"
        r=$(FAST_PATH=off run_second_chance "$stream"); rates[queue]+=" $r"; cpus[queue]+=" $(cpu_per_packet "$(decided)")"
        marks[queue]+=$(mark "$r")
        r=$(run_baseline "$stream" "$(same_work "$stream")"); rates[loop]+=" $r"; cpus[loop]+=" $(cpu_per_packet "$(decided)")"
        marks[loop]+=$(mark "$r")
    done
    cell() { printf '%s/s %sus%s' "$(echo "${rates[$1]}" | median)" "$(echo "${cpus[$1]}" | tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')" "$( [ -n "${marks[$1]}" ] && echo '*')"; }
    cpu_of() { echo "${cpus[$1]}" | tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    ratio=$(awk -v a="$(echo "${rates[fast]}" | median)" -v b="$(echo "${rates[queue]}" | median)" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    above=$(awk -v f="$(cpu_of fast)" -v q="$(cpu_of queue)" -v z="$(cpu_of floor)" 'BEGIN { printf "%.2f", (q - z > 0 ? (f - z) / (q - z) : 0) }')
    xdp_above=$(awk -v x="$(cpu_of xdp)" -v f="$(cpu_of fast)" -v z="$(cpu_of floor)" 'BEGIN { printf "%.2f", (f - z > 0 ? (x - z) / (f - z) : 0) }')
    printf '%-12s %-22s %-22s %-22s %-22s %-22s %9sx %13sx %13sx\n' "$stream" "$(cell floor)" "$(cell fast)" "$(cell xdp)" \
        "$(cell queue)" "$(cell loop)" "$ratio" "$above" "$xdp_above"
    echo "             fast path, last run: $(cat "$work/fast.$stream")"
done
echo "* sender-bound in at least one round: that rate is the sender's"
