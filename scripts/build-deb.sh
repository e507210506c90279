#!/usr/bin/env bash
# Builds the Debian package (dpkg-buildpackage -b) from this tree into .build-release/deb, and checks it
# with lintian. Installs the build tools it lacks. The version is git's (scripts/version.sh);
# PROXYSIDE_VERSION overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in dpkg-buildpackage:dpkg-dev dh:debhelper lintian:lintian; do
    command -v "${tool%%:*}" > /dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
fi
mkdir -p .build-release
# One build at a time: two would share debian/ and the build folder.
exec 9> .build-release/deb.lock
flock 9
# The tracked changelog (the release's entry, for dpkg-buildpackage run by hand) gives way to one
# made from git for this build, and comes back however the build ends.
cp debian/changelog .build-release/changelog.tracked
trap 'cp .build-release/changelog.tracked debian/changelog' EXIT
scripts/debian-changelog.sh
version=$(dpkg-parsechangelog -S Version)
dpkg-buildpackage -b -us -uc > .build-release/deb-build.log 2>&1 ||
    { tail -40 .build-release/deb-build.log >&2; exit 1; }
mkdir -p .build-release/deb
arch=$(dpkg --print-architecture)
for file in ../proxyside_"${version}"_"$arch".{deb,buildinfo,changes}; do
    [ -e "$file" ] && mv -f "$file" .build-release/deb/
done
deb=.build-release/deb/proxyside_"${version}"_"$arch".deb
[ -e "$deb" ] || { echo "build-deb.sh: $deb was not built" >&2; exit 1; }
lintian --fail-on error,warning "$deb"
echo "$deb"
