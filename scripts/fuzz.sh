#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read outside bytes: libFuzzer, through
# `swiftc -sanitize=fuzzer,address`, over each target in Tests/Fuzz/Targets linked with the
# modules it tests, compiled with the same instrumentation. Seeds are in Tests/Fuzz/corpus/TARGET;
# what a run learns goes to .build-fuzz/corpus/TARGET. A crash fails the run and leaves its input in .build-fuzz/artifacts
# (turn it into a unit test). Bounded: SECONDS per target (default 30).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(PacketDecision SynOptions RequestReader BindAddresses)
out=.build-fuzz
mkdir -p "$out/artifacts"

. scripts/swift-modules.sh
# Testable: a target may check internal forms too (the JSON a request travels in).
flags="-O -sanitize=fuzzer,address -enable-testing"

modules() {
    case $1 in
        PacketDecision|SynOptions) echo NetTypes SecondChanceCore ;;
        RequestReader|BindAddresses) echo NetTypes BindkeeperCore ;;
        *) echo "fuzz: no target $1" >&2; exit 2 ;;
    esac
}

failed=()
for target in "${targets[@]}"; do
    read -r -a needed <<< "$(modules "$target")"
    swift_modules "$out/modules" "$flags" "${needed[@]}"
    objects=()
    for module in "${needed[@]}"; do objects+=("$out/modules/$module.o"); done
    # shellcheck disable=SC2086
    swiftc $flags -parse-as-library -module-name "Fuzz$target" -I "$out/modules" "Tests/Fuzz/Targets/$target.swift" \
        "${objects[@]}" -o "$out/$target" 2> >(grep -v "ld.gold: warning" >&2)
    mkdir -p "$out/corpus/$target"
    # The Swift runtime's own crash handler would trip over ASan: libFuzzer reports the crash.
    if SWIFT_BACKTRACE=enable=no "$out/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$target-" "$out/corpus/$target" "Tests/Fuzz/corpus/$target" > "$out/$target.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$target.log")
        coverage=$(grep -o 'cov: [0-9]*' "$out/$target.log" | tail -1)
        echo "fuzz: $target clean: $runs inputs in ${seconds}s, $coverage"
    else
        echo "fuzz: $target FAILED; the input is in $out/artifacts ($out/$target.log):" >&2
        grep -E "Fatal error|ERROR|SUMMARY|Base64|crashed" "$out/$target.log" | head -5 >&2
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets crashed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets clean"
