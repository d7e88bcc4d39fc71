#!/usr/bin/env bash
# Builds the Debian package of ctx from the release build, with dpkg-deb and
# scripts/install.sh (the same tree a host install gets, in Debian's places):
#
#   bash scripts/deb.sh [--no-build] [--from DIR] [--out DIR]
#   apt install ./target/debian/ctx_*.deb
#
#   /usr/bin/ctx, /usr/bin/ctx-broker
#   /usr/lib/ctx/libctx_interposer.so, libctx_route.so, ctx-shim   (ctx-broker and ctx run
#                                                   find them in ../lib/ctx from bin/)
#   /lib/systemd/system/ctx-broker.{service,socket}  enabled at install (the socket: activation)
#   /etc/ctx/contexts.toml                          a conffile (0600 root), the repo's
#   /usr/share/man/man1/ctx*.1.gz, bash/zsh/fish completions, /usr/share/doc/ctx/
#   (README, copyright, changelog.Debian.gz from scripts/debian/changelog, whose newest
#   entry is the package's version: Cargo.toml's plus a revision)
#   postinst: group ctx, /var/lib/ctx (0711), /var/log/ctx (0750 root:adm)
#   prerm remove: stops the units, and without systemd any broker of /usr/bin/ctx-broker
#   postrm purge: those, the enablement, and the group if the package made it
#
# The binaries are stripped copies; target/release is only read. --no-build skips
# `cargo build --release` (DIR must hold a release build then). DIR defaults to
# target/release, the package goes to --out (default target/debian). CTX_DEB_MAINTAINER
# sets the Maintainer field ("Name <address>").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

from=$repo/target/release
out=$repo/target/debian
build=1

die() { echo "deb.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --no-build) build=0; shift ;;
        --from) from=${2:?--from needs a directory}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (a Debian system has it)"
command -v strip >/dev/null || die "strip is missing: apt-get install binutils"

if [ $build -eq 1 ]; then
    (cd "$repo" && cargo build --release --workspace --quiet)
fi
for f in ctx ctx-broker libctx_interposer.so libctx_route.so ctx-shim; do
    [ -e "$from/$f" ] || die "$from/$f is missing: build with \`cargo build --release\` first"
done

upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$upstream" ] || die "no version in $repo/Cargo.toml [workspace.package]"
# The package's version is its changelog's newest entry: the release plus the packaging's
# own revision (-1, -2, ...), which must be of this release.
changelog=$repo/scripts/debian/changelog
version=$(sed -n '1s/^ctx (\([^)]*\)) .*/\1/p' "$changelog")
[ -n "$version" ] || die "$changelog does not start with an entry \`ctx (VERSION) ...\`"
[ "${version%-*}" = "$upstream" ] && [ "$version" != "$upstream" ] ||
    die "$changelog's newest entry is $version, Cargo.toml's version is $upstream: add an entry for $upstream-1"
# Whoever publishes the package sets their own address; the default is the one the
# project's commits are made under.
maintainer=${CTX_DEB_MAINTAINER:-ctx maintainers <maintainers@users.noreply.b-seed-c781f525.example>}
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
root=$stage/root

# --- the tree: install.sh's, with prefix /usr and the units where packages put them -------
bash "$repo/scripts/install.sh" --destdir "$root" --prefix /usr --from "$from" \
    --unit-dir /lib/systemd/system >/dev/null
# Made by postinst instead (they hold state that outlives a remove), and dpkg keeps its own
# list of the files.
rm -rf "$root/var" "$root/usr/share/ctx"
# Everything under /etc is a conffile; the reference copy is documentation.
install -d "$root/usr/share/doc/ctx/examples"
mv "$root/etc/ctx/contexts.toml.example" "$root/usr/share/doc/ctx/examples/contexts.toml"
# Debian's place for zsh completions of packages.
install -d "$root/usr/share/zsh/vendor-completions"
mv "$root/usr/share/zsh/site-functions/_ctx" "$root/usr/share/zsh/vendor-completions/_ctx"
rmdir "$root/usr/share/zsh/site-functions"
gzip -9n "$root"/usr/share/man/man1/*.1
# As dh_strip does: debug symbols and the compilers' version notes go.
for f in usr/bin/ctx usr/bin/ctx-broker usr/lib/ctx/libctx_interposer.so \
    usr/lib/ctx/libctx_route.so usr/lib/ctx/ctx-shim; do
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/$f"
done
gzip -9n -c "$repo/README.md" >"$root/usr/share/doc/ctx/README.md.gz"
gzip -9n -c "$changelog" >"$root/usr/share/doc/ctx/changelog.Debian.gz"
install -m 0644 "$repo/scripts/debian/copyright" "$root/usr/share/doc/ctx/copyright"
chmod 0644 "$root/usr/share/doc/ctx/README.md.gz" "$root/usr/share/doc/ctx/changelog.Debian.gz"
# What lintian reports of this package that is so by design, each with its reason.
install -D -m 0644 "$repo/scripts/debian/lintian-overrides" "$root/usr/share/lintian/overrides/ctx"

# --- control ----------------------------------------------------------------------------
install -d -m 0755 "$root/DEBIAN"
for s in postinst prerm postrm; do
    install -m 0755 "$repo/scripts/debian/$s" "$root/DEBIAN/$s"
done
echo /etc/ctx/contexts.toml >"$root/DEBIAN/conffiles"
# What `dpkg --verify` checks the installed files against (conffiles have their own).
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0r md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# The newest glibc symbol version the binaries use is the glibc they need.
glibc=$(objdump -T "$root"/usr/bin/* "$root"/usr/lib/ctx/* 2>/dev/null |
    grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
cat >"$root/DEBIAN/control" <<EOF
Package: ctx
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: libc6 (>= ${glibc:-2.34}), passwd
Suggests: systemd
Section: admin
Priority: optional
Description: named execution contexts for AI agents
 A root broker (ctx-broker) runs each process launch of an AI agent in a named
 execution context of its own uid, credentials, limits and isolation; an
 LD_PRELOAD interposer routes every launch of the agent there, and the ctx CLI
 runs commands in contexts and operates the broker.
EOF

install -d "$out"
deb="$out/ctx_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
echo "$deb"
