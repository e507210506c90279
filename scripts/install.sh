#!/usr/bin/env bash
# Builds the daemons (release, the Swift runtime linked in: the hosts need no toolchain), their
# man pages and shell completions, and installs them with the units, configuration and
# documentation. `make install` (PREFIX=/usr/local) and the Debian package (PREFIX=/usr,
# DESTDIR=debian/tmp) both come here; the units get the paths of this installation.
#   DESTDIR=... PREFIX=... scripts/install.sh
# Configuration in SYSCONFDIR (default /etc) is written only where no file is yet.
set -euo pipefail
cd "$(dirname "$0")/.."
destdir=${DESTDIR:-} prefix=${PREFIX:-/usr/local} sysconfdir=${SYSCONFDIR:-/etc}
sbindir=$prefix/sbin bindir=$prefix/bin docdir=$prefix/share/doc/proxyside mandir=$prefix/share/man
unitdir=${UNITDIR:-$prefix/lib/systemd/system}

# A build folder of its own: the development build's (.build) may be in use by a test run, and
# holds debug products only. -z now, relro: the dynamic loader resolves everything at start and
# the tables are read-only after.
scratch=(--scratch-path .build-release)
release=(swift build "${scratch[@]}" -c release --static-swift-stdlib -Xlinker -z -Xlinker now -Xlinker -z -Xlinker relro)
for product in second-chance bindkeeper; do "${release[@]}" --product "$product"; done
bin=$(swift build "${scratch[@]}" -c release --show-bin-path)

# Man pages and completions come from the ArgumentParser definitions. The plugin's tool is built
# once (asking it for --help builds only the tool) and run on the release binaries.
generated=.build-release/generated-docs
rm -rf "$generated" && mkdir -p "$generated/man" "$generated/completions"
swift package "${scratch[@]}" plugin generate-manual --help > /dev/null
tool=$(find .build-release -path '*/debug/generate-manual-tool' -type f | head -n 1)
[ -x "$tool" ] || { echo "install.sh: the generate-manual tool was not built" >&2; exit 1; }
date=$(git log -1 --format=%cs 2>/dev/null || date -u +%F)
"$tool" "$bin/second-chance" --section 8 --date "$date" --authors "the proxyside developers" -o "$generated/man"
"$tool" "$bin/bindkeeper" --section 1 --date "$date" --authors "the proxyside developers" -o "$generated/man"
for program in second-chance bindkeeper; do
    # bash-completion sources the file: no #! line.
    "$bin/$program" --generate-completion-script bash | sed '1{/^#!/d}' > "$generated/completions/$program.bash"
    "$bin/$program" --generate-completion-script zsh > "$generated/completions/_$program"
    "$bin/$program" --generate-completion-script fish > "$generated/completions/$program.fish"
done

install -D -m 0755 "$bin/second-chance" "$destdir$sbindir/second-chance"
install -D -m 0755 "$bin/bindkeeper" "$destdir$bindir/bindkeeper"
install -D -m 0644 "$generated/man/second-chance.8" "$destdir$mandir/man8/second-chance.8"
install -D -m 0644 "$generated/man/bindkeeper.1" "$destdir$mandir/man1/bindkeeper.1"
for program in second-chance bindkeeper; do
    install -D -m 0644 "$generated/completions/$program.bash" \
        "$destdir$prefix/share/bash-completion/completions/$program"
    install -D -m 0644 "$generated/completions/_$program" "$destdir$prefix/share/zsh/vendor-completions/_$program"
    install -D -m 0644 "$generated/completions/$program.fish" \
        "$destdir$prefix/share/fish/vendor_completions.d/$program.fish"
done

units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
scripts/render-units.sh "$units" "$sbindir" "$bindir" "$docdir"
for unit in "$units"/*.service; do install -D -m 0644 "$unit" "$destdir$unitdir/$(basename "$unit")"; done
install -D -m 0644 kmod/modules-load.d/proxyside.conf "$destdir$prefix/lib/modules-load.d/proxyside.conf"

# Configuration: kept when present (make install over an installation; dpkg handles conffiles).
conf() {
    [ -e "$destdir$sysconfdir/$2" ] || install -D -m "${3:-0644}" "$1" "$destdir$sysconfdir/$2"
}
conf examples/second-chance/default default/second-chance
conf examples/bindkeeper/default default/bindkeeper
conf examples/bindkeeper/empty-policy.json bindkeeper/policy.json
conf kmod/sysctl.d/60-proxyside.conf sysctl.d/60-proxyside.conf

install -D -m 0644 README.md "$destdir$docdir/README.md"
install -D -m 0644 BENCHMARKS.md "$destdir$docdir/BENCHMARKS.md"
for directory in iptables haproxy bindkeeper second-chance lab systemd monitoring; do
    for file in examples/$directory/*; do
        install -D -m "$([ -x "$file" ] && echo 0755 || echo 0644)" "$file" "$destdir$docdir/$file"
    done
done
