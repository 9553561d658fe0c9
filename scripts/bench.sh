#!/usr/bin/env bash
# Benchmarks (release build): capture overhead vs an unreplicated table, apply catch-up
# and lag vs PostgreSQL's native logical replication, measured in one run.
# Writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
cargo run -q --release -p mmr-tests --bin bench
