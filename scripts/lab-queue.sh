#!/usr/bin/env bash
# The kernel lab's job queue for scripts/test.sh: each test of KernelLabTests (a guest under qemu,
# or a few) is one job; runners take them one at a time, longest first, so that what is left
# at the end is short and the runners finish together. A job is taken by renaming its file out of
# todo/, which only one runner can do.
#   scripts/lab-queue.sh init DIR BUNDLE     the queue: every KernelLabTests test the bundle lists
#   scripts/lab-queue.sh run DIR BUNDLE N    runner N: runs jobs until none is left
#   scripts/lab-queue.sh report DIR          each job's output and time; fails unless all passed
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:-}
dir=${2:-}
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: scripts/lab-queue.sh init|run|report DIR ..." >&2; exit 64; }

# Longest first, from the lab's own runs (minutes of emulation, about): a test not named here
# goes last, so a new one is never left out.
order=(
    testSocketGroupsOnLinux5_10And6_12                                # 2, two CPUs: first, done early
    testXDPsAndTheUnitsLifeOnLinux6_1                                 # 9
    testKernelDecapsulationAndTheAttackersPacketsOnLinux6_12          # 8
    testTheFastPathsLifeOnLinux6_1                                    # 8
    testTheFastPathsLifeOnLinux5_10                                   # 7
    testXDPsAndTheUnitsLifeOnLinux5_10                                # 6
    testTheShippedNftRulesQueueTheScenariosAndAReloadOnLinux6_1       # 6
    testTheShippedNftRulesQueueTheScenariosAndAReloadOnLinux6_12      # 6
    testKernelDecapsulationOnLinux5_10                                # 5
    testKernelDecapsulationOnLinux6_1                                 # 5
    testTheFastPathOnLinux5_10                                        # 4
    testTheFastPathOnLinux6_1                                         # 4
    testTheFastPathOnLinux6_12                                        # 4
    testTheShippedNftRulesAndFouOnDebiansKernels                      # 1
)

case $command in
    init)
        bundle=$3
        mkdir -p "$dir/todo" "$dir/taken" "$dir/done"
        listed=$("$bundle" --list-tests | sed -n 's|^IntegrationTests[.]KernelLabTests/||p')
        [ -n "$listed" ] || { echo "lab-queue: the bundle lists no KernelLabTests" >&2; exit 1; }
        index=0
        for name in "${order[@]}" $(echo "$listed" | grep -vxF -f <(printf '%s\n' "${order[@]}") || true); do
            grep -qxF "$name" <<< "$listed" || continue
            index=$((index + 1))
            printf '%s\n' "$name" > "$dir/todo/$(printf '%02d' "$index")"
        done
        ;;
    run)
        bundle=$3
        runner=$4
        for job in "$dir"/todo/*; do
            [ -e "$job" ] || continue # taken by the other runner (or no job at all)
            id=${job##*/}
            mv "$job" "$dir/taken/$id" 2>/dev/null || continue
            name=$(cat "$dir/taken/$id")
            started=$(date +%s)
            job_status=0
            "$bundle" "IntegrationTests.KernelLabTests/$name" > "$dir/done/$id.log" 2>&1 || job_status=$?
            printf '%s %s %s %s\n' "$job_status" "$(($(date +%s) - started))" "$runner" "$name" > "$dir/done/$id.status"
        done
        ;;
    report)
        failed=0
        for job in "$dir"/taken/* "$dir"/todo/*; do
            [ -e "$job" ] || continue
            id=${job##*/}
            name=$(cat "$job")
            if [ ! -e "$dir/done/$id.status" ]; then
                echo "kernel lab: $name did not run to its end"
                failed=1
                continue
            fi
            cat "$dir/done/$id.log"
            read -r job_status seconds runner _ < "$dir/done/$id.status"
            echo "kernel lab: $name: exit $job_status, $seconds s (runner $runner)"
            [ "$job_status" = 0 ] || failed=1
        done
        exit "$failed"
        ;;
    *) echo "usage: scripts/lab-queue.sh init|run|report DIR ..." >&2; exit 64 ;;
esac
