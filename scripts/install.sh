#!/usr/bin/env bash
# Installs shalloc under a prefix: the command, the shared and static libraries (with the
# libshalloc.so.0 SONAME link), the header, a pkg-config file, systemd user units, the man page and
# shell completions.
#
#   scripts/install.sh [--from target/release] PREFIX
#
# Build first (`cargo build --release`). C programs then build with
#   cc prog.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs shalloc)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
from="$root/target/release"
if [ "${1:-}" = "--from" ]; then from=$2; shift 2; fi
prefix=${1:?usage: scripts/install.sh [--from DIR] PREFIX}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
for f in shalloc libshalloc.so libshalloc.a; do
  [ -f "$from/$f" ] || { echo "install.sh: $from/$f is missing: run cargo build --release" >&2; exit 1; }
done
install -d "$prefix/bin" "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$from/shalloc" "$prefix/bin/shalloc"
install -m 0755 "$from/libshalloc.so" "$prefix/lib/libshalloc.so.$version"
ln -sf "libshalloc.so.$version" "$prefix/lib/libshalloc.so.0"
ln -sf "libshalloc.so.0" "$prefix/lib/libshalloc.so"
install -m 0644 "$from/libshalloc.a" "$prefix/lib/libshalloc.a"
install -m 0644 "$root/include/shalloc.h" "$prefix/include/shalloc.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/pkg/shalloc.pc.in" > "$prefix/lib/pkgconfig/shalloc.pc"
install -d "$prefix/lib/systemd/user"
for unit in shalloc.socket shalloc.service; do
  sed -e "s|@BINDIR@|$prefix/bin|" "$root/pkg/$unit.in" > "$prefix/lib/systemd/user/$unit"
done
install -d "$prefix/share/man/man1" "$prefix/share/bash-completion/completions" \
  "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d"
"$prefix/bin/shalloc" manpage > "$prefix/share/man/man1/shalloc.1"
"$prefix/bin/shalloc" completions bash > "$prefix/share/bash-completion/completions/shalloc"
"$prefix/bin/shalloc" completions zsh > "$prefix/share/zsh/site-functions/_shalloc"
"$prefix/bin/shalloc" completions fish > "$prefix/share/fish/vendor_completions.d/shalloc.fish"
echo "installed shalloc $version under $prefix"
