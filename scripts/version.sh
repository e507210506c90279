#!/bin/sh
# proxyside's version, from git: VERSION holds the release being worked towards; at a commit
# tagged v<that release> the version is the release itself, anywhere else a snapshot before it,
# RELEASE~git<commits>.<hash> (dpkg orders ~ before the release, and the commit count orders
# snapshots). PROXYSIDE_VERSION, when set, overrides it (a rebuild of a given version).
#   scripts/version.sh                 print it
#   scripts/version.sh --swift FILE    write it as Swift source, only if it changed
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
base=$(tr -d ' \n' < "$root/VERSION")
if [ -n "${PROXYSIDE_VERSION:-}" ]; then
    version=$PROXYSIDE_VERSION
elif commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null); then
    if [ "$(git -C "$root" tag --points-at HEAD 2>/dev/null | grep -Fx "v$base" || true)" = "v$base" ]; then
        version=$base
    else
        version="$base~git$(git -C "$root" rev-list --count HEAD).$commit"
    fi
else
    version=$base
fi
case $version in
    *[!0-9A-Za-z.+~-]* | "" ) echo "version.sh: '$version' is not a Debian version" >&2; exit 1 ;;
esac
if [ "${1:-}" = --swift ]; then
    file=${2:?--swift FILE}
    mkdir -p "$(dirname "$file")"
    text="// Written by scripts/version.sh.
let generatedVersion = \"$version\""
    [ -f "$file" ] && [ "$(cat "$file")" = "$text" ] || printf '%s\n' "$text" > "$file"
else
    echo "$version"
fi
