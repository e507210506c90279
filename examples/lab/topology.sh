#!/usr/bin/env bash
# A GLB lab in network namespaces: client C, director D, proxies P1 and P2 on one bridge.
#   topology.sh up PREFIX | down PREFIX
# Addresses (198.18.0.0/15 and 2001:2::/48 only, inside the namespaces):
#   C 198.18.0.1  D 198.18.0.2  P1 198.18.0.11  P2 198.18.0.12   (IPv6 2001:2::1, ::2, ::11, ::12)
#   VIP 198.19.0.10 and 2001:2:0:ff::10 on P1's and P2's lo; C reaches the VIPs through D.
#   The links behind the client carry 1600-byte frames, as a GLB network must: a full-size client
#   segment grows by 40 bytes of IPv4, UDP and GUE on its way from the director to a proxy.
#   GUE is queued to second-chance only from LAB_PEERS (default: D, P1 and P2), the rest of UDP
#   19523 is dropped, as examples/iptables/rules.v4 does on a real proxy.
#   Spoofed SYN-flood sources 198.18.200.0/24 and 2001:2:0:200::/64: the proxies route replies to
#   them to a gateway whose MAC no namespace owns, so they die on the bridge's sink port (no RST
#   comes back, no host processes them).
set -euo pipefail
action=${1:?up or down}
prefix=${2:-psl}
hosts=(c d p1 p2)
declare -A v4=([c]=198.18.0.1 [d]=198.18.0.2 [p1]=198.18.0.11 [p2]=198.18.0.12)
declare -A v6=([c]=2001:2::1 [d]=2001:2::2 [p1]=2001:2::11 [p2]=2001:2::12)
VIP=198.19.0.10
VIP6=2001:2:0:ff::10
peers=${LAB_PEERS:-198.18.0.2,198.18.0.11,198.18.0.12}

down() {
    for h in "${hosts[@]}" sw; do ip netns del "${prefix}-$h" 2>/dev/null || true; done
}

if [ "$action" = down ]; then down; exit 0; fi
[ "$action" = up ] || { echo "usage: $0 up|down PREFIX" >&2; exit 2; }

down
trap 'down' ERR
ip netns add "${prefix}-sw"
# No multicast snooping: a fresh port would miss neighbour solicitations until its MLD report.
ip -n "${prefix}-sw" link add br0 type bridge mcast_snooping 0
ip -n "${prefix}-sw" link set br0 up
ip -n "${prefix}-sw" link set lo up
# The sink: frames for the MAC no host owns (the proxies' route to spoofed sources) go to a port
# whose far end is down and end there, instead of being flooded to every host.
ip -n "${prefix}-sw" link add sink type veth peer name sink-end
ip -n "${prefix}-sw" link set sink master br0 up
bridge -n "${prefix}-sw" fdb add 02:00:00:00:00:fe dev sink master static
# The bridge stands for a switch: frames it forwards skip iptables (br_netfilter may be built in),
# as on a real network, where no host pays for filtering another host's traffic.
ip netns exec "${prefix}-sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
    net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
for h in "${hosts[@]}"; do
    ns="${prefix}-$h"
    ip netns add "$ns"
    ip link add "${prefix}-$h" mtu 1600 type veth peer name eth0 mtu "$([ "$h" = c ] && echo 1500 || echo 1600)" netns "$ns"
    ip link set "${prefix}-$h" netns "${prefix}-sw"
    ip -n "${prefix}-sw" link set "${prefix}-$h" master br0 up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.eth0.accept_dad=0
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${v4[$h]}/24" dev eth0
    ip -n "$ns" addr add "${v6[$h]}/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
done
for p in p1 p2; do
    ns="${prefix}-$p"
    ip -n "$ns" addr add "$VIP/32" dev lo
    ip -n "$ns" addr add "$VIP6/128" dev lo
    ip netns exec "$ns" iptables -t raw -A PREROUTING -s "$peers" -p udp --dport 19523 -j NFQUEUE --queue-num 0 --queue-bypass
    ip netns exec "$ns" iptables -t raw -A PREROUTING -p udp --dport 19523 -j DROP
    ip netns exec "$ns" iptables -t raw -A PREROUTING -i tunl0 -p icmp --icmp-type echo-request \
        -m mark ! --mark 0x40000000/0x40000000 -j DROP
    ip -n "$ns" neigh add 198.18.0.254 lladdr 02:00:00:00:00:fe dev eth0 nud permanent
    ip -n "$ns" route add 198.18.200.0/24 via 198.18.0.254
    ip -n "$ns" -6 neigh add 2001:2::fe lladdr 02:00:00:00:00:fe dev eth0 nud permanent
    ip -n "$ns" -6 route add 2001:2:0:200::/64 via 2001:2::fe
done
ip -n "${prefix}-c" route add "$VIP/32" via "${v4[d]}"
ip -n "${prefix}-c" -6 route add "$VIP6/128" via "${v6[d]}"
ip netns exec "${prefix}-d" iptables -t raw -A PREROUTING -d "$VIP/32" -j NFQUEUE --queue-num 1
ip netns exec "${prefix}-d" ip6tables -t raw -A PREROUTING -d "$VIP6/128" -j NFQUEUE --queue-num 1
trap - ERR
