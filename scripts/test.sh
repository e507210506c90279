#!/usr/bin/env bash
# Runs every test: the format check, unit and fuzz tests, then integration tests in network
# namespaces (root), including the slow one (a SYN flood of over two minutes), then a bounded coverage-guided fuzzing run of each
# libFuzzer target (scripts/fuzz.sh, PROXYSIDE_FUZZ_SECONDS each, default 30). --quick, for the
# development loop, leaves out the slow test, the fuzzing run, the kernel lab (Debian's kernels under
# qemu) and the package tests (Debian roots under systemd-nspawn); CI runs the whole command.
# Randomized tests print their seed; PROXYSIDE_SEED=N replays one.
#   scripts/test.sh [--quick]
set -euo pipefail
if [ "${1:-}" = --quick ]; then export PROXYSIDE_SLOW_TESTS=0; else export PROXYSIDE_SLOW_TESTS=1; fi
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test: run as root (network namespaces, NFQUEUE, BPF)" >&2; exit 1; }
scripts/setup.sh
# Leftovers of an interrupted run would make the topology fail to come up.
# Every test's namespaces are named "ps" + two letters + "-" (Lab.init and BrokerLab check it).
pkill -KILL -f 'systemd-nspawn .*--machine=ps[a-z][a-z]-' || true
for ns in $(ip netns list | awk '/^ps[a-z][a-z]-/ {print $1}'); do
    ip netns pids "$ns" | xargs -r kill -9
    ip netns del "$ns"
done
scripts/format.sh
swift build --build-tests
# The kernel lab (Debian's kernels under qemu, in their own kernels and namespaces, about 50
# minutes of emulation in all) runs beside the rest: straight from the test bundle, as swift test
# would hold the build directory's lock. Its jobs (KernelLabTests' tests, a guest or a few each)
# go to two runners from the start, under nice: the host's suites are timing-bound and use well
# under the two cores, and the guests take what they leave. Its output follows the others'; a
# failed job fails the run.
lab_runners=()
if [ "$PROXYSIDE_SLOW_TESTS" = 1 ]; then
    lab=$(mktemp -d /tmp/proxyside-kernel-lab.XXXXXX)
    # Each runner in its own process group (setsid: this script runs without job control):
    # stopping the run stops its guests too.
    trap 'for pid in "${lab_runners[@]}" ${fuzzing:-}; do kill -- -"$pid" 2>/dev/null || true; done; rm -rf "$lab"' EXIT
    bundle=$(swift build --show-bin-path)/proxysidePackageTests.xctest
    scripts/lab-queue.sh init "$lab" "$bundle"
    for runner in 1 2; do
        setsid nice -n 10 scripts/lab-queue.sh run "$lab" "$bundle" "$runner" &
        lab_runners+=($!)
    done
    # The bounded fuzzing run beside them, under more nice still: libFuzzer's runs are bounded
    # in time, not in inputs, and it compiles outside SwiftPM (nothing else compiles meanwhile:
    # the package tests' release build waits for it below).
    setsid nice -n 15 scripts/fuzz.sh "${PROXYSIDE_FUZZ_SECONDS:-30}" > "$lab/fuzz.log" 2>&1 &
    fuzzing=$!
fi
status=0
swift test --skip-build --disable-swift-testing --skip 'IntegrationTests\.(KernelLabTests|PackageTests)' || status=1
# The decision and responder suites again with NFQUEUE alone (--fast-path off): the queue's path
# stays the reference, and its SYN-cookie responder is the one that answers there.
PROXYSIDE_FAST_PATH=off swift test --skip-build --disable-swift-testing \
    --filter 'IntegrationTests\.(SecondChanceTests|TrustBoundaryTests|PromiseTests|SynCookieResponderTests|SpoofedPeerTests)' ||
    status=1
# Again with the tc program alone (--fast-path tc), as on a host whose drivers run no native XDP:
# the default round's XDP beside tc decides as tc does, and tc alone decides everything as before.
# The two-minute flood is left to the other rounds: its cookies' lifetime is kept by the one
# responder core XDP and tc share (the default round) and by the queue's (the round above).
PROXYSIDE_SLOW_TESTS=0 PROXYSIDE_FAST_PATH=tc swift test --skip-build --disable-swift-testing \
    --filter 'IntegrationTests\.(SecondChanceTests|TrustBoundaryTests|PromiseTests|SynCookieResponderTests|SpoofedPeerTests|DataPathMatrixTests)' ||
    status=1
if [ "$PROXYSIDE_SLOW_TESTS" = 1 ]; then
    wait "$fuzzing" || status=1
    fuzzing=
    echo "== the fuzzing run (beside the rounds above) =="
    cat "$lab/fuzz.log"
    # The package tests last: their release build and Debian roots slow most beside the guests,
    # which are nearly done by now.
    swift test --skip-build --disable-swift-testing --filter 'IntegrationTests\.PackageTests' || status=1
    for pid in "${lab_runners[@]}"; do wait "$pid" || status=1; done
    lab_runners=()
    echo "== the kernel lab (KernelLabTests, beside the rest) =="
    scripts/lab-queue.sh report "$lab" || status=1
fi
exit "$status"
