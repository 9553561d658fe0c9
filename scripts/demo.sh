#!/usr/bin/env bash
# Three local masters replicating, concurrent conflicting writers, a partition healed,
# and a report. Data lives under target/; nothing outside the repository is touched
# except installing the extension into the system PostgreSQL 15.
# MMR_DEMO_SECS=N sets how long writers run; MMR_DEMO_KEEP=1 keeps the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
cargo run -q --release -p mmr-tests --bin demo
