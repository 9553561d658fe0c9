#!/usr/bin/env bash
# Installs what building and testing mmr needs, on Debian (bookworm), idempotently:
# PostgreSQL 15 with server headers, clang for bindgen, libpq, and cargo-pgrx 0.18.0
# initialised against the system PostgreSQL. Safe to run again: it skips what is there.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.0
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang libpq-dev pkg-config sudo util-linux procps)

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_ apt-get update -q
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
    echo "setup: installing cargo-pgrx ${PGRX_VERSION}"
    cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

if ! grep -qs "pg15 = \"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    echo "setup: cargo pgrx init --pg15 ${PG_CONFIG}"
    cargo pgrx init --pg15 "${PG_CONFIG}"
fi
