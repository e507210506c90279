#!/usr/bin/env bash
# A Debian root for the package test (PackageTests): systemd, iproute2, iptables and HAProxy on
# minbase, made once by mmdebstrap into .build-debroot/SUITE.tar and reused. SUITE is bookworm
# (Debian 12, systemd 252) unless named: trixie (Debian 13, systemd 257) keeps a stopped unit's
# preserved fd store. Prints the tarball's path.
#   scripts/debian-root.sh [bookworm|trixie]
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:-bookworm}
case "$suite" in bookworm | trixie) ;; *) echo "debian-root: no suite $suite" >&2; exit 2 ;; esac
tarball=.build-debroot/$suite.tar
packages=systemd,systemd-sysv,dbus,iproute2,iptables,haproxy,libnetfilter-queue1,libmnl0,libbpf1,procps,kmod
# The package list is part of the name of what was made: a change makes it again.
stamp=.build-debroot/$suite.packages
if [ ! -s "$tarball" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$packages" ]; then
    command -v mmdebstrap > /dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap > /dev/null
    }
    mkdir -p .build-debroot
    mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" "$suite" "$tarball.partial" > /dev/null
    mv "$tarball.partial" "$tarball"
    echo "$packages" > "$stamp"
fi
echo "$PWD/$tarball"
