#!/usr/bin/env bash
# Runs every test: unit, storage (SQLite and PostgreSQL) and end-to-end (real processes behind
# nginx). Starts what the tests need when it is missing: PostgreSQL on 127.0.0.1:5432 (trust auth),
# Redis on 127.0.0.1:6379, the nginx and haproxy binaries, and Node.js with npm for the
# matrix-js-sdk test (Debian packages; the test installs its npm packages itself with `npm ci`).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Keep the packages' own service from starting on port 80: the tests run nginx themselves.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.ganglion
  chmod +x /usr/sbin/policy-rc.d.ganglion
  [ -e /usr/sbin/policy-rc.d ] || cp /usr/sbin/policy-rc.d.ganglion /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d.ganglion
fi

# matrix-js-sdk (pinned in tests/js/package.json) is built for Node 20 and later.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  log "warning: Node $(node --version 2>/dev/null || echo missing) is older than 20; the matrix-js-sdk test may fail"
fi

# A local S3 (moto) for the media store's S3 backend tests.
if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto (local S3 for the media tests)"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' || log "moto could not be installed: the S3 variants will be skipped"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping

log "building the ganglion binary (the end-to-end tests run it)"
cargo build -p ganglion

# A real Synapse for the differential tests (same requests to both servers, same room state), in a
# venv kept with the build output so later runs reuse it.
synapse_venv="${CARGO_TARGET_DIR:-$PWD/target}/synapse-venv"
if [ ! -x "$synapse_venv/bin/python" ] || ! "$synapse_venv/bin/python" -c 'import synapse' >/dev/null 2>&1; then
  log "installing matrix-synapse into $synapse_venv (the reference for the differential tests)"
  python3 -m venv "$synapse_venv"
  "$synapse_venv/bin/pip" install --quiet --disable-pip-version-check matrix-synapse
fi
export TEST_SYNAPSE_PYTHON="$synapse_venv/bin/python"

# mautrix-python, a real bridge framework, for the application service tests.
mautrix_venv="${CARGO_TARGET_DIR:-$PWD/target}/mautrix-venv"
if [ ! -x "$mautrix_venv/bin/python" ] || ! "$mautrix_venv/bin/python" -c 'import mautrix, aiohttp' >/dev/null 2>&1; then
  log "installing mautrix into $mautrix_venv (the bridge framework of the application service tests)"
  python3 -m venv "$mautrix_venv"
  "$mautrix_venv/bin/pip" install --quiet --disable-pip-version-check mautrix aiohttp
fi
export TEST_MAUTRIX_PYTHON="$mautrix_venv/bin/python"

# matrix-sdk's encryption tests are a workspace of their own (see tests/sdk-e2ee/Cargo.toml);
# they share the target directory, so they find the ganglion binary built above.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  log "running the tests"
  cargo nextest run --workspace --no-fail-fast --no-tests=pass "$@" || status=$?
  log "running the matrix-sdk encryption tests (tests/sdk-e2ee)"
  cargo nextest run --manifest-path tests/sdk-e2ee/Cargo.toml --no-fail-fast --no-tests=pass "$@" || status=$?
else
  log "running the tests"
  cargo test --workspace --no-fail-fast "$@" || status=$?
  log "running the matrix-sdk encryption tests (tests/sdk-e2ee)"
  cargo test --manifest-path tests/sdk-e2ee/Cargo.toml --no-fail-fast "$@" || status=$?
fi
exit "$status"
