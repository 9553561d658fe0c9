#!/usr/bin/env bash
# `make package`: a Debian package of mmr for PostgreSQL 15 (amd64), installable with
#   apt install ./target/package/mmr_<version>_amd64.deb
# on a machine with the postgresql-15 package and no Rust. It holds the shared library,
# the control file, the install script of this version and every upgrade script in
# sql/. `--debug` packages a debug build (the tests use it: no release build needed).
# Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--profile release)
[[ ${1:-} == --debug ]] && profile=(--debug)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=target/package
root=$out/root
rm -rf "$root"
mkdir -p "$root/DEBIAN"
cargo pgrx package "${profile[@]}" --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir "$root" >&2
size=$(du -sk "$root/usr" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: postgresql-15-mmr
Version: $version
Architecture: $arch
Maintainer: mmr developers <mmr@localhost>
Depends: postgresql-15, libc6
Installed-Size: $size
Section: database
Priority: optional
Description: multi-master replication for PostgreSQL 15
 mmr turns several PostgreSQL servers into a multi-master group: every server
 accepts writes, changes travel to the others asynchronously (or synchronously
 when a transaction asks), and conflicts are resolved the same way everywhere.
 Add mmr to shared_preload_libraries, restart, then CREATE EXTENSION mmr.
EOF
deb=$out/mmr_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"
