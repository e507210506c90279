#!/usr/bin/env bash
# Installs what building, testing and the lab need (Debian/Ubuntu, as root). Idempotent.
set -euo pipefail
# haproxy and ruby: bindkeeper's reload tests and its multibinder-compatibility client; util-linux: setpriv;
# systemd: systemd-analyze verifies the units; systemd-container: systemd-nspawn boots a real systemd
# for the units' tests (RealSystemdTests); qemu-system-x86, busybox-static, cpio and xz-utils: the
# kernel lab (scripts/kernel-lab.sh, KernelLabTests) boots Debian's kernels; nftables: nft, which loads the
# shipped rules there; libbpf-dev: the tc fast path is loaded with libbpf (its object is compiled by the Swift
# toolchain's clang).
packages=(libnetfilter-queue-dev libmnl-dev libbpf-dev pkg-config iptables iproute2 gcc haproxy ruby python3 util-linux systemd systemd-container
    qemu-system-x86 busybox-static cpio xz-utils nftables)
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
command -v swift >/dev/null || { echo "setup: swift (6.0 or later) must be on PATH" >&2; exit 1; }
