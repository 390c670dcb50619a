# Throwaway PostgreSQL and Redis servers on 127.0.0.1, for tests and demos.
# Source this file; call start_postgres DIR PORT / start_redis DIR PORT, and
# stop_servers on exit. On success they export:
#   LARDER_TEST_PG="host=127.0.0.1 port=PORT user=postgres", LARDER_TEST_PG_BIN
#   LARDER_TEST_REDIS="127.0.0.1:PORT"

_pg_pid=""
_redis_pid=""

_log() { printf '== %s\n' "$*" >&2; }

start_postgres() {
  local dir=$1 port=$2 bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$bin" ] || { _log "PostgreSQL server binaries not found"; return 1; }
  mkdir -p "$dir"
  local as_pg=()
  if [ "$(id -u)" = 0 ]; then
    chmod 755 "$(dirname "$dir")"
    chown postgres "$dir"
    as_pg=(runuser -u postgres --)
  fi
  "${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  "${as_pg[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$dir" -c fsync=off >"$dir/server.log" 2>&1 &
  _pg_pid=$!
  for _ in $(seq 1 100); do
    "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q && break
    sleep 0.1
  done
  "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q || { cat "$dir/server.log" >&2; return 1; }
  export LARDER_TEST_PG="host=127.0.0.1 port=$port user=postgres"
  export LARDER_TEST_PG_BIN="$bin"
  _log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

start_redis() {
  local dir=$1 port=$2
  command -v redis-server >/dev/null || { _log "redis-server not found"; return 1; }
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
  _redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 || { cat "$dir/redis.log" >&2; return 1; }
  export LARDER_TEST_REDIS="127.0.0.1:$port"
  _log "Redis $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port"
}

stop_servers() {
  local pid
  for pid in $_pg_pid $_redis_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $_pg_pid $_redis_pid; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  _pg_pid=""
  _redis_pid=""
}
