#!/usr/bin/env bash
# A Debian bookworm root for the package test (PackageTests): systemd, iproute2, iptables and
# HAProxy on minbase, made once by mmdebstrap into .build-debroot/bookworm.tar and reused.
# Prints the tarball's path.
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=.build-debroot/bookworm.tar
packages=systemd,systemd-sysv,dbus,iproute2,iptables,haproxy,libnetfilter-queue1,libmnl0,libbpf1,procps,kmod
# The package list is part of the name of what was made: a change makes it again.
stamp=.build-debroot/bookworm.packages
if [ ! -s "$tarball" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$packages" ]; then
    command -v mmdebstrap > /dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap > /dev/null
    }
    mkdir -p .build-debroot
    mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" bookworm "$tarball.partial" > /dev/null
    mv "$tarball.partial" "$tarball"
    echo "$packages" > "$stamp"
fi
echo "$PWD/$tarball"
