#!/usr/bin/env bash
# The lab: client, GLB director simulator, two proxies running second-chance and an echo service on
# the VIP. Long-lived connections and new ones run while the director drains P1, then swaps the
# proxies' roles; every connection must survive. Runs as root; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lab-common.sh
prefix=demo
lab_begin "$prefix"
VIP=198.19.0.10
for p in p1 p2; do
    ip netns exec "$prefix-$p" "$bin/glb-lab" echo --listen "$VIP:80" 2>>"$work/log" & pids+=($!)
done
ip netns exec "$prefix-p1" "$bin/second-chance" run --queue 0 --self 198.18.0.11 --control "$work/p1.sock" 2>>"$work/log" & pids+=($!)
ip netns exec "$prefix-p2" "$bin/second-chance" run --queue 0 --self 198.18.0.12 --control "$work/p2.sock" 2>>"$work/log" & pids+=($!)
printf '198.18.0.11 active\n198.18.0.12 active\n' > "$work/table"
ip netns exec "$prefix-d" "$bin/glb-lab" director --self 198.18.0.2 --table "$work/table" 2>>"$work/log" & director=$!; pids+=($director)
for _ in $(seq 50); do [ -S "$work/p1.sock" ] && [ -S "$work/p2.sock" ] && break; sleep 0.1; done
sleep 0.5

echo "demo: 32 long-lived connections to $VIP:80 (a round trip each every 100 ms) plus 20 new connections/s, for 12 s"
ip netns exec "$prefix-c" "$bin/glb-lab" clients --target "$VIP:80" --connections 32 --seconds 12 --new-per-second 20 > "$work/clients" & clients=$!
sleep 4
echo "demo: t=4s  drain P1 (198.18.0.11): its flows now reach P2 first, with P1 as the next hop"
printf '198.18.0.11 draining\n198.18.0.12 active\n' > "$work/table"; kill -HUP "$director"
sleep 4
echo "demo: t=8s  swap: P1 active again, P2 draining"
printf '198.18.0.11 active\n198.18.0.12 draining\n' > "$work/table"; kill -HUP "$director"
status=0
wait "$clients" || status=$?
echo
cat "$work/clients"
for p in p1 p2; do
    echo "--- second-chance on $p"
    "$bin/second-chance" stats --control "$work/$p.sock" | grep -E "^(total_packets|accepted_syn|accepted_established|forwarded|accepted_last_resort|dropped_malformed):"
done
if [ "$status" = 0 ]; then
    echo "demo: every connection survived both table changes"
else
    echo "demo: some connections failed (log: see above)" >&2
    cat "$work/log" >&2
fi
exit "$status"
