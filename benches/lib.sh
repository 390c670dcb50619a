# shellcheck shell=bash
# Shared helpers for benches/peers.sh and benches/chunk-sizes.sh.
# Sourced, not run. Callers must have `set -euo pipefail`.
#
# Environment (all optional):
#   LARDER_BENCH_DIR   work dir, inputs are cached here   [/tmp/larder-peers]
#   LARDER_BIN         larder binary                      [<repo>/target/release/larder]
#   PG_BIN             PostgreSQL server/client binaries  [/usr/lib/postgresql/15/bin]
#   PG_PORT            port of the throwaway cluster      [55500]
#   PGBENCH_SCALE      pgbench -i -s                      [20]
#   PGBENCH_TX         pgbench -t (transactions/client)   [4000]
#   PGBENCH_CLIENTS    pgbench -c                         [1]
#   PGBENCH_FILLER     "md5": give every account row a distinct filler
#                      (pgbench's own is blanks, which no real table is)  []
#   APPEND_ROWS        rows of the append-mostly table    [1000000]
#   APPEND_PCT         % rows appended on day 2           [1]
#   BENCH_INPUTS       which input pairs to use           ["pgbench append"]

BENCH_DIR=${LARDER_BENCH_DIR:-/tmp/larder-peers}
_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$_lib_dir/.." && pwd)
LARDER=${LARDER_BIN:-$REPO_ROOT/target/release/larder}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${PG_PORT:-55500}
PGBENCH_SCALE=${PGBENCH_SCALE:-20}
PGBENCH_TX=${PGBENCH_TX:-4000}
PGBENCH_CLIENTS=${PGBENCH_CLIENTS:-1}
PGBENCH_FILLER=${PGBENCH_FILLER:-}
APPEND_ROWS=${APPEND_ROWS:-1000000}
APPEND_PCT=${APPEND_PCT:-1}
GNU_TIME=/usr/bin/time

die() { echo "error: $*" >&2; exit 1; }

# md_list TITLE ITEM...: a markdown bullet list under TITLE; nothing when
# there are no items.
md_list() {
    local title=$1 item
    shift
    (($# > 0)) || return 0
    printf '\n%s\n\n' "$title"
    for item in "$@"; do echo "- $item"; done
}
log() { echo "[$(date +%T)] $*" >&2; }

# ---- cleanup stack: commands run in reverse order on exit ----------------
_CLEANUP=()
cleanup_push() { _CLEANUP+=("$1"); }
_run_cleanup() {
    local rc=$? i
    set +e
    for ((i = ${#_CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${_CLEANUP[$i]}"
    done
    _CLEANUP=()
    return $rc
}
trap _run_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need() {
    local c
    for c in "$@"; do
        if [[ $c == */* ]]; then
            [[ -x $c ]] || die "required program $c is missing"
        else
            command -v "$c" >/dev/null 2>&1 || die "required program '$c' is not on PATH"
        fi
    done
}

need_larder() {
    [[ -x $LARDER ]] || die "larder binary $LARDER is missing: run 'cargo build --release' in $REPO_ROOT (or set LARDER_BIN)"
}

# ---- measurement ----------------------------------------------------------
# measure TAG CMD...  -- runs CMD under GNU time; stdin/stdout are inherited.
# Writes $BENCH_TMP/TAG.time with "wall user sys maxrss_kib".
# Non-zero exit of CMD is reported with its stderr (kept in TAG.err) and fatal.
measure() {
    local tag=$1
    shift
    local tf=$BENCH_TMP/$tag.time ef=$BENCH_TMP/$tag.err rc=0 t0 t1
    # GNU time's %e has 10 ms steps; a command opened with a key file takes
    # about that long, so the wall time is taken here to the millisecond.
    t0=$(date +%s%N)
    "$GNU_TIME" -f '%e %U %S %M' -o "$tf" -- "$@" 2>"$ef" || rc=$?
    t1=$(date +%s%N)
    if ((rc != 0)); then
        echo "error: '$*' exited with $rc; stderr:" >&2
        tail -n 30 "$ef" >&2
        return "$rc"
    fi
    awk -v ns=$((t1 - t0)) 'END { $1 = sprintf("%.3f", ns / 1e9); print }' "$tf" >"$tf.ms"
    mv "$tf.ms" "$tf"
}
# time_field TAG wall|user|sys|rss|cpu
time_field() {
    local f=$BENCH_TMP/$1.time
    # GNU time may prefix "Command exited with non-zero status"; take last line.
    tail -n 1 "$f" | awk -v k="$2" '{
        if (k=="wall") print $1; else if (k=="user") print $2; else if (k=="sys") print $3;
        else if (k=="rss") print $4; else if (k=="cpu") printf "%.2f\n", $2+$3 }'
}
du_bytes() { du -sb "$1" | cut -f1; }
file_bytes() { stat -c %s "$1"; }
# mbps BYTES SECONDS
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s <= 0) s = 0.005; printf "%.1f", b / 1e6 / s }'; }
# human BYTES -> MB with one decimal (10^6)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.1f", 100 * a / b }'; }
rss_mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

machine_info() {
    echo "- date (start of measurements): $(date -Is)"
    echo "- host: $(uname -srm), nproc $(nproc), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
}

# ---- throwaway PostgreSQL cluster ----------------------------------------
_PG_DIR=""
_PG_PID=""
pg_start() {
    need "$PG_BIN/initdb" "$PG_BIN/pg_ctl" "$PG_BIN/psql" "$PG_BIN/pg_dump" "$PG_BIN/pgbench" runuser
    id postgres >/dev/null 2>&1 || die "user 'postgres' is missing (PostgreSQL refuses to run as root)"
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null \
        || ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$PG_PORT\$"; then
        die "port $PG_PORT is in use; set PG_PORT"
    fi
    _PG_DIR=$BENCH_DIR/pg
    rm -rf "$_PG_DIR"
    mkdir -p "$_PG_DIR/sock"
    chown -R postgres: "$_PG_DIR"
    cleanup_push pg_stop
    log "initdb (throwaway cluster in $_PG_DIR, port $PG_PORT)"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$_PG_DIR/data" -U postgres -A trust \
        -E UTF8 --locale=C -N >"$_PG_DIR/initdb.log" 2>&1 \
        || { cat "$_PG_DIR/initdb.log" >&2; die "initdb failed"; }
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$_PG_DIR/data" -l "$_PG_DIR/server.log" -w \
        -o "-p $PG_PORT -k $_PG_DIR/sock -c listen_addresses='' -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB \
            -c max_wal_size=4GB" start >/dev/null \
        || { tail -20 "$_PG_DIR/server.log" >&2; die "could not start PostgreSQL"; }
    _PG_PID=$(head -n 1 "$_PG_DIR/data/postmaster.pid")
    log "postgres running, pid $_PG_PID"
}
pg_stop() {
    [[ -n $_PG_DIR && -d $_PG_DIR ]] || return 0
    if [[ -n $_PG_PID ]] && kill -0 "$_PG_PID" 2>/dev/null; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 \
            || kill -TERM "$_PG_PID" 2>/dev/null
        local i
        for i in $(seq 50); do kill -0 "$_PG_PID" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$_PG_PID" 2>/dev/null && kill -KILL "$_PG_PID" 2>/dev/null
        log "postgres (pid $_PG_PID) stopped"
    fi
    rm -rf "$_PG_DIR"
    _PG_DIR="" _PG_PID=""
}
pg_as() { runuser -u postgres -- "$@"; }
psql_q() { pg_as "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$_PG_DIR/sock" -p "$PG_PORT" -U postgres "$@"; }
pg_dump_plain() { # DB OUTFILE [pg_dump format, default p]
    pg_as "$PG_BIN/pg_dump" "-F${3:-p}" -h "$_PG_DIR/sock" -p "$PG_PORT" -U postgres "$1" >"$2.part"
    mv "$2.part" "$2"
}

# ---- inputs ---------------------------------------------------------------
# Sets PGB_DIR / APP_DIR (each holding day1.sql and day2.sql; PGB_DIR also
# day1.dump and day2.dump, pg_dump -Fc with its default zlib compression)
# and INPUT_NAMES.
ensure_inputs() {
    PGB_DIR=$BENCH_DIR/inputs/pgbench-s$PGBENCH_SCALE-t$PGBENCH_TX-c$PGBENCH_CLIENTS${PGBENCH_FILLER:+-$PGBENCH_FILLER}
    APP_DIR=$BENCH_DIR/inputs/append-r$APPEND_ROWS-p$APPEND_PCT
    INPUT_NAMES=(${BENCH_INPUTS:-pgbench append})
    local need_pgb=0 need_app=0 i
    for i in "${INPUT_NAMES[@]}"; do
        case $i in
        pgbench) [[ -f $PGB_DIR/.complete && -f $PGB_DIR/day2.dump ]] || need_pgb=1 ;;
        append) [[ -f $APP_DIR/.complete ]] || need_app=1 ;;
        *) die "unknown input '$i' in BENCH_INPUTS (known: pgbench append)" ;;
        esac
    done
    if ((need_pgb == 0 && need_app == 0)); then
        log "inputs cached in $BENCH_DIR/inputs"
        return 0
    fi
    pg_start
    if ((need_pgb)); then
        rm -rf "$PGB_DIR"
        mkdir -p "$PGB_DIR"
        log "pgbench -i -s $PGBENCH_SCALE"
        psql_q -c 'CREATE DATABASE bench'
        pg_as "$PG_BIN/pgbench" -h "$_PG_DIR/sock" -p "$PG_PORT" -U postgres -i -q \
            -s "$PGBENCH_SCALE" bench >"$PGB_DIR/pgbench-init.log" 2>&1 \
            || { cat "$PGB_DIR/pgbench-init.log" >&2; die "pgbench -i failed"; }
        if [[ $PGBENCH_FILLER == md5 ]]; then
            log "distinct fillers"
            psql_q -d bench -c "UPDATE pgbench_accounts SET filler = md5(aid::text) || md5((aid * 7)::text)" \
                -c 'VACUUM FULL pgbench_accounts'
        fi
        log "pg_dump day 1"
        pg_dump_plain bench "$PGB_DIR/day1.sql"
        pg_dump_plain bench "$PGB_DIR/day1.dump" c
        log "pgbench -t $PGBENCH_TX -c $PGBENCH_CLIENTS (scattered updates)"
        pg_as "$PG_BIN/pgbench" -h "$_PG_DIR/sock" -p "$PG_PORT" -U postgres \
            -c "$PGBENCH_CLIENTS" -t "$PGBENCH_TX" --random-seed=42 bench \
            >"$PGB_DIR/pgbench-run.log" 2>&1 \
            || { cat "$PGB_DIR/pgbench-run.log" >&2; die "pgbench run failed"; }
        log "pg_dump day 2"
        pg_dump_plain bench "$PGB_DIR/day2.sql"
        pg_dump_plain bench "$PGB_DIR/day2.dump" c
        psql_q -c 'DROP DATABASE bench'
        touch "$PGB_DIR/.complete"
    fi
    if ((need_app)); then
        rm -rf "$APP_DIR"
        mkdir -p "$APP_DIR"
        local extra=$((APPEND_ROWS * APPEND_PCT / 100))
        log "append-mostly table: $APPEND_ROWS rows, then +$extra"
        psql_q -c 'CREATE DATABASE events'
        # md5 text plus 48 random bytes of bytea per row: hex in the dump,
        # so zstd gets roughly 2x and no more.
        local row="i, timestamptz '2024-01-01 00:00:00+00' + i * interval '7 seconds',
                   md5(random()::text),
                   decode(md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex')"
        psql_q -d events <<SQL
CREATE TABLE events (id bigint PRIMARY KEY, created timestamptz NOT NULL,
                     note text NOT NULL, payload bytea NOT NULL);
SELECT setseed(0.42) \g /dev/null
INSERT INTO events SELECT $row FROM generate_series(1, $APPEND_ROWS) AS i;
SQL
        log "pg_dump day 1"
        pg_dump_plain events "$APP_DIR/day1.sql"
        psql_q -d events <<SQL
SELECT setseed(0.43) \g /dev/null
INSERT INTO events SELECT $row FROM generate_series($APPEND_ROWS + 1, $APPEND_ROWS + $extra) AS i;
SQL
        log "pg_dump day 2"
        pg_dump_plain events "$APP_DIR/day2.sql"
        psql_q -c 'DROP DATABASE events'
        touch "$APP_DIR/.complete"
    fi
    pg_stop
}
input_dir() { case $1 in pgbench) echo "$PGB_DIR" ;; append) echo "$APP_DIR" ;; *) die "no input $1" ;; esac; }

# ---- per-tool operations ---------------------------------------------------
# Every tool gets: TOOL_init REPO, TOOL_backup REPO INPUT TAG (JSON/ids to
# $BENCH_TMP/TAG.out), TOOL_restore REPO OUTFILE TAG, TOOL_cat REPO OUTFILE TAG.
# State that is not the repository (caches, keys) lives in REPO.aux and is
# not counted in the repository size.
export LARDER_PASSWORD=${LARDER_PASSWORD:-larder-bench-passphrase}
export RESTIC_PASSWORD=${RESTIC_PASSWORD:-larder-bench-passphrase}

# env prefixes (env execs the tool, so GNU time measures the tool itself)
# With LARDER_BENCH_KEY_FILE=1 (the default) every command after `init`
# opens the repository with an exported key file (`larder key export`), as
# bupstash always does with its key; 0 keeps the passphrase and its
# Argon2id run on every command.
LARDER_BENCH_KEY_FILE=${LARDER_BENCH_KEY_FILE:-1}
larder_e() {
    LE=(env LARDER_REPO="$1" LARDER_CACHE_DIR="$1.aux/cache")
    [[ -f $1.aux/key ]] && LE+=(LARDER_KEY_FILE="$1.aux/key")
    LE+=("$LARDER")
}
larder_init() { # REPO [extra init args]
    mkdir -p "$1.aux"
    larder_e "$1"
    "${LE[@]}" init --quiet --json "${@:2}" >"$1.aux/init.json"
    if [[ $LARDER_BENCH_KEY_FILE == 1 ]]; then
        "${LE[@]}" key export "$1.aux/key" --quiet >/dev/null
    fi
}
larder_keying() { # how larder opened its repositories, for the results
    if [[ $LARDER_BENCH_KEY_FILE == 1 ]]; then
        echo "key file (larder key export; no Argon2id per command, as bupstash)"
    else
        echo "passphrase (Argon2id on every command)"
    fi
}
larder_backup() {
    larder_e "$1"
    # shellcheck disable=SC2002
    cat "$2" | measure "$3" "${LE[@]}" backup --source db --stdin --stdin-name dump.sql \
        --quiet --json >"$BENCH_TMP/$3.out"
}
larder_restore() {
    local d=$2.d
    rm -rf "$d"
    larder_e "$1"
    measure "$3" "${LE[@]}" restore latest --target "$d" --quiet --json >"$BENCH_TMP/$3.out"
    mv "$d/dump.sql" "$2"
    rm -rf "$d"
}
larder_cat() {
    larder_e "$1"
    measure "$3" "${LE[@]}" cat latest --quiet >"$2"
}
larder_added() { jq -r '.bytes_added' "$BENCH_TMP/$1.out"; }
larder_version() {
    local dirty=""
    [[ -n $(git -C "$REPO_ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && dirty=", src/ has uncommitted edits"
    echo "$("$LARDER" --version) (binary built $(date -r "$LARDER" +'%F %T'), sha256 $(sha256sum "$LARDER" | cut -c1-12); git $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$dirty)"
}

restic_e() { RE=(env RESTIC_REPOSITORY="$1" restic --cache-dir "$1.aux/cache"); }
restic_init() {
    mkdir -p "$1.aux"
    restic_e "$1"
    "${RE[@]}" init --repository-version 2 >"$1.aux/init.log" 2>&1 \
        || { cat "$1.aux/init.log" >&2; return 1; }
}
restic_backup() {
    restic_e "$1"
    # shellcheck disable=SC2002
    cat "$2" | measure "$3" "${RE[@]}" backup --stdin --stdin-filename dump.sql \
        --compression auto --json --quiet >"$BENCH_TMP/$3.out"
}
restic_restore() {
    local d=$2.d
    rm -rf "$d"
    restic_e "$1"
    measure "$3" "${RE[@]}" restore latest --target "$d" --quiet >"$BENCH_TMP/$3.out"
    mv "$d/dump.sql" "$2"
    rm -rf "$d"
}
restic_cat() {
    restic_e "$1"
    measure "$3" "${RE[@]}" dump --quiet latest /dump.sql >"$2"
}
# restic 0.14's data_added counts blob bytes before compression.
restic_added() { jq -r 'select(.message_type=="summary") | .data_added' "$BENCH_TMP/$1.out"; }
restic_version() { restic version | cut -d' ' -f1-2; }

bupstash_e() {
    BE=(env BUPSTASH_REPOSITORY="$1" BUPSTASH_KEY="$1.aux/key" BUPSTASH_SEND_LOG="$1.aux/send.log"
        BUPSTASH_QUERY_CACHE="$1.aux/query-cache" bupstash)
}
bupstash_init() {
    mkdir -p "$1.aux"
    bupstash_e "$1"
    { "${BE[@]}" init && "${BE[@]}" new-key -o "$1.aux/key"; } >"$1.aux/init.log" 2>&1 \
        || { cat "$1.aux/init.log" >&2; return 1; }
}
bupstash_backup() {
    bupstash_e "$1"
    # shellcheck disable=SC2002
    cat "$2" | measure "$3" "${BE[@]}" put --no-progress name=dump.sql - >"$BENCH_TMP/$3.out"
}
bupstash_cat() {
    bupstash_e "$1"
    local id
    id=$(tail -n 1 "$BENCH_TMP/${4:?}.out")
    measure "$3" "${BE[@]}" get "id=$id" >"$2"
}
bupstash_version() { bupstash version 2>&1 | head -n 1; }
