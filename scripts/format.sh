#!/usr/bin/env bash
# The Swift sources' format: swift-format (shipped with the toolchain) with .swift-format, lines of
# at most 120 characters. `scripts/format.sh` checks (the test command runs it); `--fix` rewrites.
#   scripts/format.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.swift' 'Package.swift')
if [ "${1:-}" = --fix ]; then
    swift format format --in-place "${files[@]}"
fi
swift format lint --strict "${files[@]}"
# swift-format leaves long string literals alone; the limit holds for them too.
long=$(awk 'length > 120 { print FILENAME ":" FNR ": " length " characters" }' "${files[@]}")
if [ -n "$long" ]; then
    echo "format: lines over 120 characters:" >&2
    echo "$long" >&2
    exit 1
fi
echo "format: ${#files[@]} files clean"
