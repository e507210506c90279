#!/usr/bin/env bash
# Writes debian/changelog from git: one entry, versioned by scripts/version.sh, listing the
# commits since the last release tag (the newest 40 when there is none), dated by HEAD.
# scripts/build-deb.sh runs it for its build and then puts the tracked file back.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(scripts/version.sh)
maintainer=$(sed -n 's/^Maintainer: //p' debian/control)
if git rev-parse HEAD > /dev/null 2>&1; then
    since=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || true)
    range=${since:+$since..HEAD}
    date=$(git log -1 --format=%cD)
    changes=$(git log --no-merges --format=%s -n 40 ${range:-HEAD})
else
    date=$(date -R)
    changes="Built from a tree without git history."
fi
{
    echo "proxyside ($version) unstable; urgency=medium"
    echo
    while IFS= read -r subject; do
        printf '%s\n' "$subject" | fold -s -w 74 | sed '1s/^/  * /; 2,$s/^/    /'
    done <<< "$changes"
    echo
    echo " -- $maintainer  $date"
} | sed 's/[[:space:]]*$//' > debian/changelog
