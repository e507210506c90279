#!/usr/bin/env bash
# SYN flood against a listener with backlog 16 on P1, while a client opens new connections through
# the director: (a) the kernel answers every SYN itself (second-chance --syn-cookies off, NFQUEUE
# alone); second-chance's queue responder answers them once the SYN queue overflows, (b) sending its
# SYN-ACKs through a raw socket (--forward raw) or (c) as the SYN's verdict, forwarded by the kernel
# (--forward kernel; P1 forwards: ip_forward and accept_local on); with the tc program, (t0) the
# kernel answers every SYN the program decapsulates (--syn-cookies off --fast-path tc) and (t) the
# program answers them itself (--fast-path tc), and (x) the XDP entry point answers them
# (--fast-path xdp --xdp-forward on: the switch's end of P1's veth runs an XDP program that passes
# everything, in every row, so that P1's XDP_TX arrives). Rows (a)-(c) run with --fast-path off.
# Same flood, same run. A floor
# row drops the flood in raw PREROUTING, before the queue: what sending and delivering it costs,
# taken off every row to give what answering a SYN costs, and the ratios of those to the kernel's.
# Prints legitimate-connection success and CPU per SYN (second-chance's own, and the namespace-
# independent total from /proc/stat, which includes softirq work). Bounded in count and time.
# PREVIOUS=/path/to/an/earlier/second-chance adds (d): that build's responder, same flood, with
# PREVIOUS_FLAGS added to its --syn-cookies auto (e.g. "--fast-path xdp --xdp-forward on", row (x)'s).
# ROWS="off kernel" runs some rows only; ROUNDS=N runs the rows N times, interleaved, and the
# summary takes each row's median (machine noise moves single runs by several percent).
# CPU_QUOTA=N holds second-chance to N % of one core (a cgroup v1 cpu controller group): both paths
# then saturate at flood rates one sender can offer, and a sweep of rates finds where each starts
# failing legitimate connections.
#   scripts/bench-synflood.sh [SECONDS] [SYNS_PER_SECOND]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
rate=${2:-50000}
. scripts/lab-common.sh
prefix=bsyn
LAB_PEERS=198.18.0.1,198.18.0.2,198.18.0.11,198.18.0.12  # the client blasts GUE as a director would
lab_begin "$prefix"
cg=
if [ -n "${CPU_QUOTA:-}" ]; then
    cg=/sys/fs/cgroup/cpu/proxyside-$prefix-$$
    mkdir "$cg"
    echo 100000 > "$cg/cpu.cfs_period_us"
    echo $((CPU_QUOTA * 1000)) > "$cg/cpu.cfs_quota_us"
    trap 'lab_end; rmdir "$cg"' EXIT
fi
P=$prefix-p1
VIP=198.19.0.10
ip netns exec "$P" sysctl -qw net.ipv4.tcp_timestamps=2 net.ipv4.ip_forward=1 net.ipv4.conf.eth0.accept_local=1 \
    net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
ip netns exec "$P" "$bin/glb-lab" echo --listen "$VIP:8080" --backlog 16 2>/dev/null & pids+=($!)
ip netns exec "$prefix-sw" "$bin/glb-lab" xdp-pass --interface "$P"
echo 198.18.0.11 > "$work/table"
ip netns exec "$prefix-d" "$bin/glb-lab" director --self 198.18.0.2 --table "$work/table" 2>/dev/null & pids+=($!)
sleep 0.5

cpu_total() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }   # user nice system irq softirq (ticks)
cpu_process() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
tcpext() { ip netns exec "$P" awk -v name="$1" '/^TcpExt:/ { if (!n) { for (i = 1; i <= NF; i++) if ($i == name) n = i } else print $n }' /proc/net/netstat; }
ticks=$(getconf CLK_TCK)

printf '%-24s %8s %10s %12s %14s %14s %12s\n' mode syns syns/s legit_ok legit_failed cpu_us/syn sc_cpu_us/syn
declare -A cost
rows=(${ROWS:-floor off raw kernel tc-off tc xdp} ${PREVIOUS:+previous})
flood_drop=(PREROUTING -s 198.18.0.1 -p udp --dport 19523 -j DROP)  # the floor row: the flood stops here
for round in $(seq "${ROUNDS:-1}"); do
    if [ "${ROUNDS:-1}" -gt 1 ]; then echo "round $round"; fi
    for mode in "${rows[@]}"; do
        rm -f "$work/sc.sock"
        program=$bin/second-chance
        case $mode in
            floor|off) flags=(--syn-cookies off --fast-path off) ;;
            raw|kernel) flags=(--syn-cookies auto --forward "$mode" --fast-path off) ;;
            tc-off) flags=(--syn-cookies off --fast-path tc) ;;
            tc) flags=(--syn-cookies auto --fast-path tc) ;;
            xdp) flags=(--syn-cookies auto --fast-path xdp --xdp-forward on) ;;
            previous) program=$PREVIOUS flags=(--syn-cookies auto ${PREVIOUS_FLAGS:-}) ;;
        esac
        ip netns exec "$P" "$program" run --queue 0 --self 198.18.0.11 "${lab_peers[@]}" --allow-source 198.18.0.1 --control "$work/sc.sock" "${flags[@]}" 2>"$work/sc.$mode.log" & sc=$!; pids+=($sc)
        [ -n "$cg" ] && echo "$sc" > "$cg/cgroup.procs"
        for _ in $(seq 100); do [ -S "$work/sc.sock" ] && break; sleep 0.05; done
        [ "$mode" = floor ] && ip netns exec "$P" iptables -t raw -I "${flood_drop[@]}"
        ip netns exec "$prefix-c" "$bin/glb-lab" clients --target "$VIP:8080" --connections 0 --new-per-second 20 --seconds "$seconds" \
            --interval-ms 10 > "$work/clients.$mode" 2>&1 & clients=$!
        total0=$(cpu_total); process0=$(cpu_process "$sc"); sent0=$(tcpext SyncookiesSent); recv0=$(tcpext SyncookiesRecv)
        ip netns exec "$prefix-c" "$bin/glb-lab" blast --to 198.18.0.11 --kind syn --client 198.18.200.1 --spoof-addresses 250 \
            --vip "$VIP" --vip-port 8080 --flows 40000 --count $((seconds * rate)) --rate "$rate" --max-seconds "$seconds" > "$work/blast.$mode"
        total1=$(cpu_total); process1=$(cpu_process "$sc")
        [ "$mode" = floor ] && ip netns exec "$P" iptables -t raw -D "${flood_drop[@]}"
        wait "$clients" || true
        kernel_sent=$(( $(tcpext SyncookiesSent) - sent0 )); kernel_recv=$(( $(tcpext SyncookiesRecv) - recv0 ))
        "$bin/second-chance" stats --control "$work/sc.sock" > "$work/stats.$mode"
        kill "$sc"; wait "$sc" || true
        sent=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' "$work/blast.$mode")
        sent_rate=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$work/blast.$mode")
        ok=$(sed -n 's/.*new_ok=\([0-9]*\).*/\1/p' "$work/clients.$mode")
        failed=$(sed -n 's/.*new_failed=\([0-9]*\).*/\1/p' "$work/clients.$mode")
        per_syn=$(awk -v d=$((total1 - total0)) -v n="$sent" -v t="$ticks" 'BEGIN { printf "%.2f", d / t * 1e6 / n }')
        sc_per_syn=$(awk -v d=$((process1 - process0)) -v n="$sent" -v t="$ticks" 'BEGIN { printf "%.2f", d / t * 1e6 / n }')
        cost[$mode]="${cost[$mode]:-} $per_syn"
        case $mode in
            floor) label="(0) floor: flood dropped" ;;
            off) label="(a) kernel cookies" ;; raw) label="(b) responder, raw" ;; kernel) label="(c) responder, verdict" ;;
            tc-off) label="(t0) kernel cookies, tc" ;; tc) label="(t) responder in tc" ;;
            xdp) label="(x) responder in XDP" ;;
            *) label="(d) previous build" ;;
        esac
        printf '%-24s %8s %10s %12s %14s %14s %12s\n' "$label" "$sent" "$sent_rate" "$ok" "$failed" "$per_syn" "$sc_per_syn"
        grep -E "^(cookies_sent|fast_path_cookies_sent|accepted_syn|accepted_syn_cookie|fast_path|listener_scans):" "$work/stats.$mode" \
            | tr '\n' ' ' | sed 's/^/    counters: /'
        echo "kernel SyncookiesSent +$kernel_sent SyncookiesRecv +$kernel_recv"
        grep -E "SYN cookies (on|off)" "$work/sc.$mode.log" | head -3 | sed 's/^/    /' || true
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for mode in "${rows[@]}"; do cost[$mode]=$(echo "${cost[$mode]}" | median); done
[ -n "${cost[floor]:-}" ] && [ -n "${cost[off]:-}" ] || exit 0
against_tc=${cost[tc-off]:+, and against (t0): the kernel cookies behind the tc program}
echo "answering a SYN, above the floor (cpu_us/syn minus the floor's), against the kernel's cookies (a)$against_tc${ROUNDS:+ (medians of $ROUNDS rounds)}:"
for mode in "${rows[@]}"; do
    [ "$mode" = floor ] && continue
    awk -v m="$mode" -v c="${cost[$mode]}" -v f="${cost[floor]}" -v k="${cost[off]}" -v t="${cost[tc-off]:-}" \
        'BEGIN { printf "    %-9s %6.2f us/syn  %.2fx", m, c - f, (c - f) / (k - f);
                 if (t != "") printf "  %.2fx", (c - f) / (t - f); printf "\n" }'
done
