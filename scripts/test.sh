#!/usr/bin/env bash
# Runs every test: lint, unit tests of the pure logic, in-server tests (cargo pgrx test),
# then installs the extension into the system PostgreSQL 15 and runs the multi-node
# scenario tests against real clusters. Fast suites first.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
step() { echo; echo "=== $* ($(date +%T))"; }

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit tests (mmr-core)"
cargo test -p mmr-core --release

step "in-server tests (cargo pgrx test)"
mkdir -p target/pgrx-test
chown postgres target/pgrx-test
rm -rf target/pgrx-test/data
cargo pgrx test pg15 --runas postgres --pgdata "$PWD/target/pgrx-test/data"

step "install into the system PostgreSQL"
cargo pgrx install --pg-config "$PG_CONFIG"

step "multi-node scenario tests"
cargo test -p mmr-tests -- --test-threads=1 ${MMR_TEST_FILTER:-}
