# Sourced by bench.sh and bench-fastpath.sh (with `count` set): the benchmark lab. The client sends
# the GUE streams itself as a director would (syn: SYNs taken locally; established: ACKs of 64
# connections on P1; forward: ACKs of unknown flows, for the next hop P2, which drops them unseen),
# and the functions that run and read them.
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

# SENDER_FRAMES=1: glb-lab blast sends whole frames from a packet socket (past the client's IP stack
# and qdisc: faster than its UDP socket); the default is the UDP socket.
p1_mac=$(ip -n "$P" -br link show eth0 | awk '{ print $3 }')
blast() {
    set -- "$@" ${SENDER_FRAMES:+--interface eth0 --next-mac "$p1_mac" --source 198.18.0.1}
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


# CPU time of the whole machine (every CPU: user, system, irq, softirq), in jiffies, around a run:
# the receiver's, the kernel's on both sides and the sender's. Written to $work/cpu.
busy_jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
cpu_begin() { cpu_started=$(busy_jiffies); }
cpu_end() { echo $(( $(busy_jiffies) - cpu_started )) > "$work/cpu"; }

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
    cpu_begin
    blast "$stream" > "$work/sent"
    cpu_end
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
    # NFQUEUE alone unless FAST_PATH=tc (an earlier build, PREVIOUS, may not know the flag).
    [ "$program" = "$bin/second-chance" ] && extra+=(--fast-path "${FAST_PATH:-off}")
    taskset -c "${RECEIVER_CPUS:-$receiver_cpu}" ip netns exec "$P" "$program" run ${QUEUES:---queue 0} --self 198.18.0.11 --control "$work/sc.sock" "${extra[@]}" ${SECOND_CHANCE_ARGS:-} 2>"$work/sc.log" & sc=$!
    for _ in $(seq 100); do [ -S "$work/sc.sock" ] && break; sleep 0.05; done
    taskset -c "$sender_cpu" "$bin/glb-lab" watch --control "$work/sc.sock" --idle-ms 1000 > "$work/watch" & watcher=$!
    sleep 0.2
    cpu_begin
    blast "$stream" ${RATE:+--rate "$RATE"} > "$work/sent"
    wait "$watcher"
    cpu_end
    "$bin/second-chance" stats --control "$work/sc.sock" > "$work/stats.$stream"
    echo "$(sent_count) $(packets < "$work/watch") $(queue_drops)" > "$work/account"
    # What reached the next hop (its DROP rule counts every GUE packet that arrived).
    echo "p2_received: $(ip netns exec "$prefix-p2" iptables -t raw -L PREROUTING -v -x -n | awk '$3 == "DROP" {print $1; exit}')" >> "$work/stats.$stream"
    kill "$sc"; wait "$sc" || true
    host_forwarding off
    rate < "$work/watch"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)) }'; }

