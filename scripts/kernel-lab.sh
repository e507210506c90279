#!/usr/bin/env bash
# Boots one of Debian's kernels under qemu (software emulation: KVM hangs on this machine kind)
# with this machine's filesystem as the guest's root, read-only over 9p with a tmpfs overlay on
# top (as virtme does), and runs a command inside as root; prints what it printed and exits with
# its status. The kernel's own modules are loadable in the guest (`modprobe NAME`). Bounded in
# time (TIMEOUT seconds, default 300); CPUS virtual CPUs (default 1). Kernel packages are
# downloaded once into .build-kernels. The command sees PROXYSIDE_WAIT_SCALE=5: the test suites' waits allow for software emulation.
#   scripts/kernel-lab.sh VERSION COMMAND...     e.g. scripts/kernel-lab.sh 6.1 uname -r
# VERSION: 5.10 (Debian 11's, from bullseye), 6.1 or 6.12 (the newest package of that series in the
# apt sources), or a full package version such as 6.1.0-47-amd64.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: scripts/kernel-lab.sh VERSION COMMAND..." >&2; exit 64; }
[ "$(id -u)" = 0 ] || { echo "kernel-lab: run as root (the guest's root is this filesystem, as root)" >&2; exit 1; }
series=$1
shift
timeout_seconds=${TIMEOUT:-300}
# One virtual CPU unless CPUS says otherwise: two guests side by side on two cores, each with two
# vCPUs, spend their time waiting for each other's preempted vCPUs (a 1-minute job took 2.5).
cpus=${CPUS:-1}
case $cpus in [1-8]) ;; *) echo "kernel-lab: CPUS is 1 to 8" >&2; exit 64 ;; esac
missing=()
for package in qemu-system-x86 busybox-static cpio xz-utils; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

store=$PWD/.build-kernels
mkdir -p "$store"
# Two guests may start at once (the test command's lab runners): one downloads, the other waits.
exec 9> "$store/.lock"
flock 9
# Debian 11's 5.10 is in bullseye, which the machine's own sources do not list: a private apt state
# names it (the same archive as the machine's sources), so the host's lists are left as they are.
apt_options=()
case $series in
    5.10 | 5.10.*)
        apt_state=$store/apt-bullseye
        mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial"
        archive=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
            grep -oE 'https?://[^ ]+/debian/?$' | head -1 || true)
        archive=${archive:-http://deb.debian.org/debian}
        printf 'deb %s bullseye main\ndeb %s-security bullseye-security main\n' "${archive%/}" "${archive%/}" \
            > "$apt_state/sources.list"
        apt_options=(-o "Dir::Etc::SourceList=$apt_state/sources.list" -o "Dir::Etc::SourceParts=-"
            -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache")
        ;;
esac
case $series in
    *-amd64) release=$series ;;
    5.10 | 6.1 | 6.12)
        # The newest generic package of the series: linux-image-5.10.0-N-amd64, linux-image-6.1.0-N-amd64,
        # linux-image-6.12.N+debNN-amd64 (not -cloud, -rt, -dbg or -unsigned).
        newest() {
            apt-cache "${apt_options[@]}" search --names-only \
                "^linux-image-${series}[.][0-9]+(-[0-9]+|[+]deb[0-9]+)-amd64$" 2>/dev/null |
                awk '{print $1}' | sed 's/^linux-image-//' | sort -V | tail -1
        }
        release=$(newest)
        if [ -z "$release" ]; then
            timeout 600 apt-get "${apt_options[@]}" update -qq ||
                { echo "kernel-lab: apt-get update failed or took over 10 minutes (status $?)" >&2; exit 1; }
            release=$(newest)
        fi
        ;;
    *) echo "kernel-lab: VERSION is 5.10, 6.1, 6.12 or a package version such as 6.1.0-47-amd64" >&2; exit 64 ;;
esac
[ -n "$release" ] || { echo "kernel-lab: no linux-image package for $series in the apt sources" >&2; exit 1; }
kernel=$store/$release
if [ ! -e "$kernel/.complete" ]; then
    rm -rf "$kernel" && mkdir -p "$kernel/deb"
    # Bounded: a mirror that stalls fails the lab with its reason, not the whole command's time.
    if ! (cd "$kernel/deb" && timeout 900 apt-get "${apt_options[@]}" download "linux-image-$release" \
        >/dev/null 2>"$kernel/download.err"); then
        echo "kernel-lab: apt-get download linux-image-$release failed or took over 15 minutes:" >&2
        cat "$kernel/download.err" >&2
        exit 1
    fi
    rm -f "$kernel/download.err"
    dpkg-deb -x "$kernel"/deb/*.deb "$kernel/root"
    rm -rf "$kernel/deb"
    # Busybox's insmod and modprobe read plain modules (6.12's package has them xz-compressed), and
    # the package's modules.dep is made at install: busybox's depmod makes one for its modprobe.
    find "$kernel/root/lib/modules" -name '*.ko.xz' -print0 | xargs -0 -r -P "$(nproc)" -n 64 xz -d
    busybox depmod -b "$kernel/root" "$release"
    touch "$kernel/.complete"
fi
flock -u 9
exec 9>&-
modules=$kernel/root/lib/modules/$release

# The initramfs: busybox, the modules that reach the 9p root, and an init that mounts it, lays a
# tmpfs over it, runs the command from the shared directory and powers off with its status.
# In the work tree, which the guest sees where this machine has it.
run=$(mktemp -d "$store/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
printf '%q ' "$@" > "$run/command"
initrd=$run/initrd
mkdir -p "$initrd"/{bin,m,proc,sys,dev,host,newroot,upper}
cp /bin/busybox "$initrd/bin/"
# Each module after what it needs, as modprobe orders modules.dep (a line lists a module's
# dependencies, the last one loaded first).
chain=""
for wanted in virtio_pci 9pnet_virtio 9p overlay; do
    if ! line=$(grep -E "^[^:]*/$wanted[.]ko:" "$modules/modules.dep"); then
        grep -qE "/$wanted[.]ko$" "$modules/modules.builtin" && continue
        echo "kernel-lab: $wanted is neither a module nor built into $release" >&2
        exit 1
    fi
    for path in $(echo "${line#*:}" | tr ' ' '\n' | tac) "${line%%:*}"; do
        name=$(basename "$path" .ko)
        case " $chain " in *" $name "*) ;; *) chain="$chain $name"; cp "$modules/$path" "$initrd/m/" ;; esac
    done
done
cat > "$initrd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $chain; do [ -f /m/\$m.ko ] && insmod /m/\$m.ko; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host || { echo "kernel-lab: no 9p root"; poweroff -f; }
mount -t tmpfs tmpfs /upper && mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot
for d in proc sys dev; do mount --move /\$d /newroot/\$d; done
# /run is the guest's own (the host's namespaces and sockets mean nothing there); /tmp is the
# host's, written in the overlay: a work tree under /tmp must stay visible.
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/lib/modules/$release /newroot/sys/fs/bpf && mount --bind /host$modules /newroot/lib/modules/$release
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
# modprobe: busybox's, which reads the depmod above (crc32c first: libcrc32c's soft dependency).
mkdir -p /newroot/run/kernel-lab
echo '#!/bin/sh' > /newroot/run/kernel-lab/modprobe && echo 'exec busybox modprobe "\$@"' >> /newroot/run/kernel-lab/modprobe
chmod +x /newroot/run/kernel-lab/modprobe
# The kernel's own requests (a protocol's sock_diag handler, a qdisc, a match) load modules as on a
# booted system: its helper runs in this root, and modprobe in the guest's.
printf '#!/bin/sh\nexec chroot /newroot busybox modprobe "\$@"\n' > /bin/modprobe-lab && chmod +x /bin/modprobe-lab
echo /bin/modprobe-lab > /newroot/proc/sys/kernel/modprobe
# Loopback up, as any booted system has it (Foundation's run loop, for one, talks to itself over it).
busybox ip link set lo up
# Software emulation runs 10 to 20 times slower than the host: the tests' waits get 5 times as long.
chroot /newroot /bin/sh -c 'PATH=/run/kernel-lab:\$PATH PROXYSIDE_WAIT_SCALE=5; export PATH PROXYSIDE_WAIT_SCALE; busybox modprobe crc32c_generic 2>/dev/null; cd $PWD && bash $run/command'
echo "kernel-lab-status: \$?"
poweroff -f
INIT
chmod +x "$initrd/init"
(cd "$initrd" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$run/initrd.gz")
output=$run/console
set +e
# In the foreground: qemu stays in this script's process group, which a stopped test run kills.
timeout --foreground "$timeout_seconds" qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp "$cpus" -nographic -no-reboot \
    -kernel "$kernel/root/boot/vmlinuz-$release" -initrd "$run/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" \
    -virtfs "local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap" \
    > "$output" 2>&1 < /dev/null
qemu=$?
set -e
# What the command printed: the console after the firmware's lines, without the status line.
tr -d '\r' < "$output" | sed -n '/Booting from ROM/,$p' | sed '1s/.*Booting from ROM[.]*//' | grep -v '^kernel-lab-status: ' |
    grep -v 'reboot: Power down' | sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' | sed '/./,$!d'
status=$(tr -d '\r' < "$output" | sed -n 's/^kernel-lab-status: \([0-9]*\)$/\1/p' | tail -1)
if [ -z "$status" ]; then
    echo "kernel-lab: the guest ended without the command's status (qemu exited $qemu; $timeout_seconds s limit)" >&2
    exit 1
fi
exit "$status"
