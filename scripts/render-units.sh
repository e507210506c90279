#!/usr/bin/env bash
# Writes the systemd units of systemd/ into OUTDIR with the paths of an installation: the units
# name /usr/sbin/second-chance, /usr/bin/bindkeeper and /usr/share/doc/proxyside (the Debian
# package's), and `make install PREFIX=/usr/local` puts the daemons elsewhere.
#   scripts/render-units.sh OUTDIR [SBINDIR BINDIR DOCDIR]
set -euo pipefail
out=${1:?usage: render-units.sh OUTDIR [SBINDIR BINDIR DOCDIR]}
sbindir=${2:-/usr/sbin} bindir=${3:-/usr/bin} docdir=${4:-/usr/share/doc/proxyside}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
for unit in "$here"/systemd/*.service; do
    sed -e "s|/usr/sbin/second-chance|$sbindir/second-chance|g" -e "s|/usr/bin/bindkeeper|$bindir/bindkeeper|g" \
        -e "s|/usr/share/doc/proxyside|$docdir|g" "$unit" > "$out/$(basename "$unit")"
done
