#!/usr/bin/env bash
# Benchmarks (release build): capture overhead vs an unreplicated table, apply catch-up,
# lag and write capacity vs PostgreSQL's native logical replication, measured in one
# run. Writes docs/benchmarks.md and draws docs/benchmarks.png (matplotlib, installed
# into target/bench-venv from PyPI on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
out="${MMR_BENCH_OUT:-docs/benchmarks.md}"
MMR_BENCH_OUT="$out" cargo run -q --release -p mmr-tests --bin bench
venv=target/bench-venv
if ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q matplotlib
fi
"$venv/bin/python" scripts/chart.py "${out%.md}.json" "${out%.md}.png"
echo "chart drawn: ${out%.md}.png"
