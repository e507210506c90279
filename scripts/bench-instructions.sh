#!/usr/bin/env bash
# Instructions per packet of second-chance's pure decision path (parse, classify, flow cache,
# decide, forwarding rewrite; for syn-reply the responder's SYN-ACK too), counted by callgrind: independent of machine noise, so a change can
# be compared with the one before it on any machine. Each stream runs COUNT packets and 1000; the
# difference divided by COUNT - 1000 is the cost of one packet (a baseline of none would leave in
# the first packet's one-time work: symbol binding, lazy initialisation, some 5 million instructions).
#   scripts/bench-instructions.sh [COUNT]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200000}
[ "$count" -gt 1000 ] || { echo "COUNT must be above 1000" >&2; exit 2; }
command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq valgrind >/dev/null; }
out=.build-bench
mkdir -p "$out"
. scripts/swift-modules.sh
# As SwiftPM's release build compiles them: one module at a time, whole-module, default CMO.
swift_modules "$out/modules" "-O -enable-default-cmo" NetTypes SecondChanceCore
# The lab's packet builder makes the packets; it is compiled in, since the rest of LabKit is not pure.
swiftc -O -enable-default-cmo -parse-as-library -module-name DecisionPath -I "$out/modules" Sources/LabKit/PacketBuilder.swift Tests/Bench/DecisionPath.swift \
    "$out/modules/NetTypes.o" "$out/modules/SecondChanceCore.o" -o "$out/DecisionPath" 2> >(grep -v "ld.gold: warning" >&2)
instructions() {  # instructions STREAM COUNT: total instructions of one run
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" "$out/DecisionPath" "$1" "$2" >/dev/null 2>&1
    awk '/^(summary|totals):/ {print $2; exit}' "$out/callgrind.out"
}
echo "bench-instructions: $(date -u +%FT%TZ), $(swiftc --version 2>&1 | head -1), $count packets per stream"
printf '%-15s %12s\n' stream instr/packet
for stream in syn syn-reply established forward forward-kernel; do
    base=$(instructions "$stream" 1000) total=$(instructions "$stream" "$count")
    awk -v s="$stream" -v b="$base" -v t="$total" -v n="$count" 'BEGIN { printf "%-15s %12.1f\n", s, (t - b) / (n - 1000) }'
done
