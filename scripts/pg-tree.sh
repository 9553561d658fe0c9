#!/usr/bin/env bash
# Copies the system PostgreSQL 15 (binaries, libraries, share) into ROOT, without mmr:
# a second PostgreSQL installation that finds its files relative to its binaries, for
# installing another mmr build (an old release, a package) next to the system's.
#
#   scripts/pg-tree.sh ROOT    -> ROOT/usr/lib/postgresql/15/bin/postgres, ...
set -euo pipefail
root=$1
mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
rm -f "$root"/usr/share/postgresql/15/extension/mmr* "$root"/usr/lib/postgresql/15/lib/mmr.so
