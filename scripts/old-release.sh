#!/usr/bin/env bash
# Builds a released mmr from its commit into a PostgreSQL 15 tree of its own, for the
# upgrade test (tests/tests/upgrade.rs): a copy of the system PostgreSQL 15
# (/usr/lib/postgresql/15 and /usr/share/postgresql/15, which PostgreSQL finds relative
# to its binaries) with that release's mmr installed into it. Cached, so CI builds it
# once: MMR_RELEASE_CACHE (default /var/cache/mmr-ci) holds one tree per version.
#
#   scripts/old-release.sh 0.1.0 5718995   -> prints the tree's bin directory
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1
commit=$2
cache=${MMR_RELEASE_CACHE:-/var/cache/mmr-ci}
tree=$cache/mmr-$version
bin=$tree/usr/lib/postgresql/15/bin
if [[ -f $tree/.done ]]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$cache"
rm -rf "$tree" "$cache/src-$version"
mkdir -p "$cache/src-$version"
git archive "$commit" | tar -x -C "$cache/src-$version"
# Its own target directory: the release's build must not churn the working one.
(cd "$cache/src-$version" &&
    CARGO_TARGET_DIR=$cache/target-$version cargo pgrx package \
        --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir "$cache/pkg-$version") >&2
scripts/pg-tree.sh "$tree"
cp -a "$cache/pkg-$version"/usr/. "$tree/usr/"
touch "$tree/.done"
echo "$bin"
