#!/usr/bin/env bash
# Removes what scripts/install.sh installed, as listed in P/share/ctx/installed-files.
#
#   scripts/uninstall.sh [--prefix P] [--destdir D] [--purge]
#
# Keeps /etc/ctx/contexts.toml, /var/lib/ctx and /var/log/ctx (the operator's config,
# session state and audit trail) unless --purge. Without --destdir it first stops and
# disables the service, and stops a broker of this install that no unit runs.
set -euo pipefail

prefix=/usr/local
destdir=
purge=0

die() { echo "uninstall.sh: $*" >&2; exit 1; }
note() { echo "uninstall.sh: $*"; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
destdir=${destdir%/}
manifest=$destdir$prefix/share/ctx/installed-files
[ -f "$manifest" ] || die "$manifest not found: nothing installed with --prefix $prefix${destdir:+ --destdir $destdir}"

if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now ctx-broker.service ctx-broker.socket 2>/dev/null || true
fi
# A broker no unit stops (no systemd, or started by hand beside it): the one on the
# configured socket and every process of this install's ctx-broker, nothing else.
if [ -z "$destdir" ] && [ -x "$prefix/bin/ctx-broker" ]; then
    "$prefix/bin/ctx-broker" --stop --config /etc/ctx/contexts.toml ||
        note "a ctx-broker could not be stopped (see above)"
fi

while IFS= read -r path; do
    [ -n "$path" ] || continue
    rm -f -- "$destdir$path"
    # Drop directories the install created and left empty (never / or the prefix itself).
    d=$(dirname "$path")
    while [ "$d" != / ] && [ "$d" != "$prefix" ] && rmdir -- "$destdir$d" 2>/dev/null; do
        d=$(dirname "$d")
    done
done < "$manifest"

if [ $purge -eq 1 ]; then
    rm -rf -- "$destdir/etc/ctx" "$destdir/var/lib/ctx" "$destdir/var/log/ctx"
    note "removed /etc/ctx, /var/lib/ctx and /var/log/ctx"
else
    note "kept /etc/ctx/contexts.toml, /var/lib/ctx and /var/log/ctx (--purge removes them)"
fi
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
note "uninstalled from ${destdir:-/} (prefix $prefix)"
