#!/usr/bin/env bash
# Installs what building, testing and the lab need (Debian/Ubuntu, as root). Idempotent.
set -euo pipefail
# haproxy and ruby: bindkeeper's reload tests and its multibinder-compatibility client; util-linux: setpriv;
# systemd: systemd-analyze verifies the units; systemd-container: systemd-nspawn boots a real systemd
# for the units' tests (RealSystemdTests); qemu-system-x86, busybox-static, cpio and xz-utils: the
# kernel lab (scripts/kernel-lab.sh, KernelLabTests) boots Debian's kernels; nftables: nft, which loads the
# shipped rules there; libbpf-dev: the tc fast path is loaded with libbpf (its object is compiled by the Swift
# toolchain's clang); prometheus: promtool checks and tests the shipped alerting rules; dpkg-dev,
# debhelper and lintian build and check the Debian package, mmdebstrap makes the Debian root the
# package test installs it into (PackageTests); ethtool and iperf3: the bulk benchmark and the GRO test
# (offloads set as a NIC's, a TCP upload).
packages=(libnetfilter-queue-dev libmnl-dev libbpf-dev pkg-config iptables iproute2 gcc haproxy ruby python3 util-linux systemd systemd-container
    qemu-system-x86 busybox-static cpio xz-utils nftables dpkg-dev debhelper lintian mmdebstrap git ethtool iperf3)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v promtool > /dev/null; then
    # Only promtool is wanted: no exporter, and no server started by the install.
    echo "setup: installing prometheus (for promtool)"
    apt-get update -qq
    policy=/usr/sbin/policy-rc.d
    [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && trap 'rm -f "$policy"' EXIT; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus > /dev/null
fi
command -v swift >/dev/null || { echo "setup: swift (6.0 or later) must be on PATH" >&2; exit 1; }
