#!/usr/bin/env bash
# The whole test suite, with the real servers it needs.
#
# Installs what is missing (Debian packages, as root), starts PostgreSQL and
# Redis on 127.0.0.1 in a scratch directory, builds once in release mode,
# runs every test (unit, integration, doc), and stops the servers again.
# With CI=true a server that fails to start fails the run; tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

need_pkgs=()
command -v pg_dump >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    log "missing ${need_pkgs[*]}; install them (the database tests need real servers)"
  fi
fi

scratch=$(mktemp -d /tmp/larder-test.XXXXXX)
chmod 755 "$scratch"
pg_pid=""
redis_pid=""
cleanup() {
  [ -n "$pg_pid" ] && kill "$pg_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  sleep 0.5
  rm -rf "$scratch"
}
trap cleanup EXIT

# PostgreSQL: a throwaway cluster with trust auth, TCP on loopback only.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$pg_bin" ]; then
  pg_port=${LARDER_TEST_PG_PORT:-55432}
  mkdir -p "$scratch/pg"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$scratch/pg"
    as_pg=(runuser -u postgres --)
  fi
  "${as_pg[@]}" "$pg_bin/initdb" -D "$scratch/pg/data" -U postgres --auth=trust -E UTF8 >"$scratch/pg/initdb.log" 2>&1
  "${as_pg[@]}" "$pg_bin/postgres" -D "$scratch/pg/data" -p "$pg_port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$scratch/pg" -c fsync=off >"$scratch/pg/server.log" 2>&1 &
  pg_pid=$!
  for _ in $(seq 1 100); do
    "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q && break
    sleep 0.1
  done
  if "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q; then
    export LARDER_TEST_PG="host=127.0.0.1 port=$pg_port user=postgres"
    export LARDER_TEST_PG_BIN="$pg_bin"
    log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port"
  else
    cat "$scratch/pg/server.log" >&2 || true
    log "PostgreSQL did not start"
  fi
fi

# Redis: no persistence of its own, loopback only.
if command -v redis-server >/dev/null; then
  redis_port=${LARDER_TEST_REDIS_PORT:-56379}
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$scratch" >"$scratch/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  if redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
    export LARDER_TEST_REDIS="127.0.0.1:$redis_port"
    log "Redis $(redis-server --version | awk '{print $3}') on 127.0.0.1:$redis_port"
  else
    log "Redis did not start"
  fi
fi

if [ "${CI:-}" = true ]; then
  [ -n "${LARDER_TEST_PG:-}" ] || { log "CI=true but PostgreSQL is not running"; exit 1; }
  [ -n "${LARDER_TEST_REDIS:-}" ] || { log "CI=true but Redis is not running"; exit 1; }
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
