#!/usr/bin/env bash
# The lab: client, GLB director simulator, two proxies running second-chance and an echo service on
# the VIP. Long-lived connections and new ones run while the director drains P1, then swaps the
# proxies' roles; every connection must survive. Then each proxy runs HAProxy on a socket bindkeeper
# owns, and both HAProxys are reloaded again and again while new connections keep arriving through
# the director: none may fail. Runs as root; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lab-common.sh
prefix=demo
lab_begin "$prefix"
VIP=198.19.0.10
for p in p1 p2; do
    ip netns exec "$prefix-$p" "$bin/glb-lab" echo --listen "$VIP:80" 2>>"$work/log" & pids+=($!)
done
ip netns exec "$prefix-p1" "$bin/second-chance" run --queue 0 --self 198.18.0.11 "${lab_peers[@]}" --control "$work/p1.sock" 2>>"$work/log" & pids+=($!)
ip netns exec "$prefix-p2" "$bin/second-chance" run --queue 0 --self 198.18.0.12 "${lab_peers[@]}" --control "$work/p2.sock" 2>>"$work/log" & pids+=($!)
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
    "$bin/second-chance" stats --control "$work/$p.sock" | grep -E "^(total_packets|accepted_syn|accepted_established|forwarded|accepted_last_resort|dropped_malformed|dropped_untrusted_source|dropped_not_local_destination):"
done
if [ "$status" = 0 ]; then
    echo "demo: every connection survived both table changes"
else
    echo "demo: some connections failed (log: see above)" >&2
    cat "$work/log" >&2
    exit "$status"
fi

echo
echo "demo: bindkeeper on each proxy owns $VIP:8080; HAProxy answers on it (bindkeeper haproxy, fd@N)"
printf '198.18.0.11 active\n198.18.0.12 active\n' > "$work/table"; kill -HUP "$director"
sed "s|@BIND@|{{bind tcp://$VIP:8080?backlog=4096\&freebind=1}}|" examples/lab/haproxy-answer.cfg.in > "$work/www.cfg.tmpl"
for p in p1 p2; do
    ip netns exec "$prefix-$p" "$bin/bindkeeper" serve --socket "$work/$p-bk.sock" 2>>"$work/log" & pids+=($!)
    for _ in $(seq 50); do [ -S "$work/$p-bk.sock" ] && break; sleep 0.1; done
    ip netns exec "$prefix-$p" "$bin/bindkeeper" haproxy --socket "$work/$p-bk.sock" -f "$work/www.cfg.tmpl" \
        --rendered "$work/$p-www.cfg" -p "$work/$p-haproxy.pid" --stop-timeout 5 -- /usr/sbin/haproxy 2>>"$work/$p-haproxy.log" &
    eval "supervisor_$p=\$!"; pids+=($!)
done
for _ in $(seq 50); do [ -s "$work/p1-haproxy.pid" ] && [ -s "$work/p2-haproxy.pid" ] && break; sleep 0.1; done
echo "demo: new HTTP connections from the client through the director for 10 s; both HAProxys reloaded every second"
ip netns exec "$prefix-c" "$bin/glb-lab" http-load --target "$VIP:8080" --seconds 10 --concurrency 8 > "$work/load" & load=$!
sleep 0.5
for _ in $(seq 9); do
    kill -USR2 "$supervisor_p1" "$supervisor_p2"
    sleep 1
done
wait "$load" || true
cat "$work/load"
for p in p1 p2; do
    echo "--- $p: $(grep -c 'reloaded:' "$work/$p-haproxy.log" || true) reloads; bindkeeper list:"
    "$bin/bindkeeper" list --socket "$work/$p-bk.sock"
done
failed=$(tr ' ' '\n' < "$work/load" | awk -F= '$1 == "failed" {print $2}')
ok=$(tr ' ' '\n' < "$work/load" | awk -F= '$1 == "ok" {print $2}')
if [ "${failed:-1}" = 0 ] && [ "${ok:-0}" -gt 0 ]; then
    echo "demo: $ok connections through 18 HAProxy reloads, none failed"
else
    echo "demo: connections failed during HAProxy reloads" >&2
    cat "$work/log" "$work"/p?-haproxy.log >&2
    exit 1
fi
