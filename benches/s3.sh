#!/usr/bin/env bash
# larder and restic side by side against an S3 server (SeaweedFS) on
# loopback, with every HTTP request counted.
#
# Usage: benches/s3.sh               (from anywhere)
#        S3_TREE_FILES=0 benches/s3.sh                 (dump streams only)
#        PGBENCH_SCALE=20 S3_TREE_FILES=2000 benches/s3.sh   (a quick run)
#
# S3 server: the one named by LARDER_TEST_S3_ENDPOINT, LARDER_TEST_S3_BUCKET,
# LARDER_TEST_S3_ACCESS_KEY and LARDER_TEST_S3_SECRET_KEY (as exported by
# start_s3 in scripts/lib/servers.sh); when LARDER_TEST_S3_ENDPOINT is unset,
# a throwaway `weed mini` is started with start_s3 on port $S3_PORT (default
# 19012; SeaweedFS also takes its fixed ports 8888, 9333, ...) and stopped at
# the end. Each tool and part gets its own prefix in the bucket,
# bench-<timestamp>-<tool>-{dump,tree}; at the end the objects under this
# run's prefixes, and nothing else, are deleted (S3_KEEP=1 keeps them).
#
# Request counting: both tools talk to benches/s3-count-proxy.py, a
# forwarding proxy on 127.0.0.1 that relays every request unchanged to the
# server and counts requests by S3 operation (GET, ranged GET, PUT, multipart
# parts, LIST, HEAD, DELETE, others), answers other than 2xx, and bytes up
# (payload) and down (response bodies). larder's own counts (the `requests`
# object of its --json summaries) are checked against the proxy's. The proxy
# costs some CPU on every request and byte, and both tools pay it; S3_PROXY=0
# talks to the server directly (no proxy counts, larder's own still shown).
#
# Parts (each step timed with GNU time: wall, user+sys, peak RSS):
#   dump  pg_dump -Fp of a pgbench database (scale $PGBENCH_SCALE, default 100,
#         about 1 GB; day 2 after `pgbench -t $PGBENCH_TX`), made once with a
#         throwaway PostgreSQL cluster and cached by benches/lib.sh in
#         $LARDER_BENCH_DIR/inputs. Fresh repository; init; day 1 and day 2
#         backed up from stdin (a pipe); day 2 streamed out (larder cat,
#         restic dump) with a new, empty cache directory, then with the cache
#         the backups left; every stream out is compared with cmp.
#   tree  the knowledge-base tree of benches/trees.sh ($S3_TREE_FILES files,
#         default 50,000, about 360 MB; generated once by benches/trees-gen.py
#         and cached under the same name trees.sh uses). Fresh repository;
#         init; backup; then one small file ($S3_PROBE, default a note picked
#         from the sorted list) is cat'ed (larder cat, restic dump): with a new
#         empty cache directory (cold), with that same cache again (warm), with
#         the cache the backup left, and for restic with --no-cache.
# Repositories: larder init $S3_LARDER_INIT (default "--kdf-memory 64
# --kdf-passes 3", the defaults: Argon2id runs on every command); restic repo
# v2, --compression auto, -o s3.region=$S3_REGION, otherwise defaults.
#
# Knobs: S3_TOOLS ("larder restic"), S3_PARTS ("dump tree"), PGBENCH_SCALE
# (100), PGBENCH_TX (4000), S3_TREE_FILES (50000), TREE_SEED (42), S3_PROBE
# (path of the probed file relative to the tree), S3_PROXY (1), S3_KEEP (0),
# S3_PORT (19012), S3_REGION (us-east-1), S3_LARDER_INIT, LARDER_BIN,
# LARDER_BENCH_DIR, PG_PORT and the rest of benches/lib.sh.
# Output: markdown on stdout and in $LARDER_BENCH_DIR/results-s3-<timestamp>.md
# (and results-s3.md); the raw per-step numbers (GNU time, the proxy's
# counts, larder's summaries) as JSON lines in results-s3-<timestamp>.jsonl.
set -euo pipefail
: "${PGBENCH_SCALE:=100}" # about 1 GB of dump; lib.sh's own default is 20
export BENCH_INPUTS=pgbench
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOOLS=(${S3_TOOLS:-larder restic})
PARTS=(${S3_PARTS:-dump tree})
S3_TREE_FILES=${S3_TREE_FILES:-50000}
TREE_SEED=${TREE_SEED:-42}
S3_PROXY=${S3_PROXY:-1}
S3_KEEP=${S3_KEEP:-0}
S3_PORT=${S3_PORT:-19012}
S3_REGION=${S3_REGION:-us-east-1}
S3_LARDER_INIT=${S3_LARDER_INIT:---kdf-memory 64 --kdf-passes 3}
PROXY_PY=$_lib_dir/s3-count-proxy.py
GEN=$_lib_dir/trees-gen.py

need jq awk cmp stat curl python3 sha256sum "$GNU_TIME"
for t in "${TOOLS[@]}"; do
    case $t in
    larder)
        # The binary may be briefly missing while it is being rebuilt.
        for _ in $(seq 120); do [[ -x $LARDER ]] && break; sleep 5; done
        need_larder
        ;;
    restic) need restic ;;
    *) die "unknown tool $t (known: larder restic)" ;;
    esac
done
for p in "${PARTS[@]}"; do
    case $p in dump | tree) ;; *) die "unknown part $p (known: dump tree)" ;; esac
done
[[ " ${PARTS[*]} " == *" tree "* ]] && { [[ $S3_TREE_FILES =~ ^[0-9]+$ ]] && ((S3_TREE_FILES >= 100)) || die "S3_TREE_FILES must be a number >= 100"; }

mkdir -p "$BENCH_DIR"
started=$(date +%s)
stamp=$(date +%Y%m%dT%H%M%S)
RUN_DIR=$(mktemp -d "$BENCH_DIR/s3-run.XXXXXX")
cleanup_push "rm -rf '$RUN_DIR'"
BENCH_TMP=$RUN_DIR/tmp
mkdir -p "$BENCH_TMP"
RAW=$BENCH_DIR/results-s3-$stamp.jsonl
: >"$RAW"

# Freeze the larder binary: someone may rebuild target/ while this runs.
if [[ " ${TOOLS[*]} " == *" larder "* ]]; then
    cp -p "$LARDER" "$RUN_DIR/larder"
    LARDER=$RUN_DIR/larder
fi

# ---- S3 server, proxy, prefixes ----------------------------------------------
if [[ -z ${LARDER_TEST_S3_ENDPOINT:-} ]]; then
    # shellcheck source=scripts/lib/servers.sh
    source "$REPO_ROOT/scripts/lib/servers.sh"
    cleanup_push stop_servers
    log "starting a throwaway SeaweedFS on 127.0.0.1:$S3_PORT"
    start_s3 "$RUN_DIR/s3" "$S3_PORT" || die "could not start SeaweedFS"
    S3_ORIGIN="throwaway weed mini started by this script (SeaweedFS $SEAWEEDFS_VERSION)"
else
    S3_ORIGIN="existing server"
fi
S3_ENDPOINT=${LARDER_TEST_S3_ENDPOINT%/}
S3_BUCKET=${LARDER_TEST_S3_BUCKET:-larder-test}
S3_AK=${LARDER_TEST_S3_ACCESS_KEY:?LARDER_TEST_S3_ACCESS_KEY is not set}
S3_SK=${LARDER_TEST_S3_SECRET_KEY:?LARDER_TEST_S3_SECRET_KEY is not set}
S3_CURL=(curl -sS --max-time 60 --aws-sigv4 "aws:amz:$S3_REGION:s3" -u "$S3_AK:$S3_SK"
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD')
code=$("${S3_CURL[@]}" -o /dev/null -w '%{http_code}' -I "$S3_ENDPOINT/$S3_BUCKET" || true)
[[ $code == 200 ]] || die "bucket $S3_BUCKET at $S3_ENDPOINT answers HEAD with '$code'"

PROXY_PID=""
if ((S3_PROXY)); then
    [[ $S3_ENDPOINT == http://* ]] || die "the counting proxy forwards plain http:// only (set S3_PROXY=0)"
    python3 "$PROXY_PY" --upstream "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
        --port-file "$RUN_DIR/proxy.port" --out "$RUN_DIR/proxy-counts.json" \
        >"$RUN_DIR/proxy.log" 2>&1 &
    PROXY_PID=$!
    cleanup_push "kill $PROXY_PID 2>/dev/null; wait $PROXY_PID 2>/dev/null"
    for _ in $(seq 100); do [[ -s $RUN_DIR/proxy.port ]] && break; sleep 0.1; done
    [[ -s $RUN_DIR/proxy.port ]] || { cat "$RUN_DIR/proxy.log" >&2; die "the counting proxy did not start"; }
    PROXY=http://127.0.0.1:$(cat "$RUN_DIR/proxy.port")
    EP=$PROXY
    log "counting proxy $PROXY -> $S3_ENDPOINT (pid $PROXY_PID)"
else
    EP=$S3_ENDPOINT
fi
# proxy_take: the proxy's counts since the previous take, as JSON ({} without a proxy)
proxy_take() {
    if ((S3_PROXY)); then
        curl -sS --max-time 30 "$PROXY/__proxy__/take"
    else
        echo '{}'
    fi
}

export AWS_ENDPOINT_URL=$EP AWS_ACCESS_KEY_ID=$S3_AK AWS_SECRET_ACCESS_KEY=$S3_SK
export AWS_REGION=$S3_REGION AWS_DEFAULT_REGION=$S3_REGION
PREFIX_BASE=bench-${stamp,,}
PREFIXES=() # every prefix this run created objects under

# s3_purge PREFIX: delete the objects under PREFIX/ (directly at the server)
s3_purge() {
    local p=$1 keys k n=0 round
    for round in $(seq 1000); do
        keys=$("${S3_CURL[@]}" "$S3_ENDPOINT/$S3_BUCKET/?list-type=2&prefix=$p%2F" |
            grep -o '<Key>[^<]*</Key>' | sed 's/<Key>//; s/<\/Key>//') || true
        [[ -n $keys ]] || break
        while IFS= read -r k; do
            [[ $k == "$p/"* ]] || continue
            "${S3_CURL[@]}" -X DELETE "$S3_ENDPOINT/$S3_BUCKET/$k" >/dev/null && n=$((n + 1))
        done <<<"$keys"
    done
    log "deleted $n objects under s3://$S3_BUCKET/$p/"
}
purge_all() {
    local p
    ((S3_KEEP)) && { log "keeping ${PREFIXES[*]:-nothing} in s3://$S3_BUCKET (S3_KEEP=1)"; return 0; }
    for p in "${PREFIXES[@]}"; do s3_purge "$p"; done
}
cleanup_push purge_all

# ---- per-tool operations -----------------------------------------------------
# op_TOOL_OP TAG PREFIX CACHE [ARGS]: one measured command; output to TAG.out,
# data to TAG.file, stderr to TAG.err. CACHE is a cache directory ("none":
# restic --no-cache).
larder_s3() { LE=(env LARDER_REPO="s3://$S3_BUCKET/$1" LARDER_CACHE_DIR="$2" "$LARDER"); }
restic_s3() {
    RE=(env RESTIC_REPOSITORY="s3:$EP/$S3_BUCKET/$1" restic -o "s3.region=$S3_REGION")
    if [[ $2 == none ]]; then RE+=(--no-cache); else RE+=(--cache-dir "$2"); fi
}

op_larder_init() {
    larder_s3 "$2" "$3"
    measure "$1" "${LE[@]}" init --quiet --json $S3_LARDER_INIT >"$BENCH_TMP/$1.out" # word-split on purpose
}
op_restic_init() {
    restic_s3 "$2" "$3"
    measure "$1" "${RE[@]}" init --repository-version 2 >"$BENCH_TMP/$1.out"
}
op_larder_backup_stdin() { # ... INPUT
    larder_s3 "$2" "$3"
    # shellcheck disable=SC2002
    cat "$4" | measure "$1" "${LE[@]}" backup --source db --stdin --stdin-name dump.sql \
        --quiet --json >"$BENCH_TMP/$1.out"
}
op_restic_backup_stdin() {
    restic_s3 "$2" "$3"
    # shellcheck disable=SC2002
    cat "$4" | measure "$1" "${RE[@]}" backup --stdin --stdin-filename dump.sql \
        --compression auto --json --quiet >"$BENCH_TMP/$1.out"
}
op_larder_cat_stream() {
    larder_s3 "$2" "$3"
    measure "$1" "${LE[@]}" cat latest --source db --json >"$BENCH_TMP/$1.file"
}
op_restic_cat_stream() {
    restic_s3 "$2" "$3"
    measure "$1" "${RE[@]}" dump --quiet latest /dump.sql >"$BENCH_TMP/$1.file"
}
op_larder_backup_tree() { # ... DIR
    larder_s3 "$2" "$3"
    measure "$1" "${LE[@]}" backup --source kb "$4" --quiet --json >"$BENCH_TMP/$1.out"
}
op_restic_backup_tree() {
    restic_s3 "$2" "$3"
    measure "$1" "${RE[@]}" backup "$4" --compression auto --json --quiet >"$BENCH_TMP/$1.out"
}
op_larder_cat_file() { # ... ABS_PATH
    larder_s3 "$2" "$3"
    measure "$1" "${LE[@]}" cat latest --source kb "$4" --json >"$BENCH_TMP/$1.file"
}
op_restic_cat_file() {
    restic_s3 "$2" "$3"
    measure "$1" "${RE[@]}" dump --quiet latest "$4" >"$BENCH_TMP/$1.file"
}

# larder_self TAG: larder's own `requests` object for the step ({} if none):
# backups print their summary on stdout, cat on stderr.
larder_self() {
    local j=""
    [[ -s $BENCH_TMP/$1.out ]] && j=$(jq -c -s 'last | .requests // empty' "$BENCH_TMP/$1.out" 2>/dev/null || true)
    [[ -z $j ]] && j=$(grep '^{' "$BENCH_TMP/$1.err" 2>/dev/null | tail -n 1 | jq -c '.requests // empty' 2>/dev/null || true)
    echo "${j:-{\}}"
}

# ---- summaries of the proxy's counts ---------------------------------------------
# Tab-separated: requests GET range PUT parts LIST HEAD DELETE other up down
# non-2xx (by op) errors other-detail
PROXY_JQ='
def n($o): (.by_op[$o].n // 0);
def known: ["get","get_range","put","put_part","put_copy","list","head","head_bucket","delete","delete_multi","mpu_abort"];
if (.requests // null) == null then ["-","-","-","-","-","-","-","-","-","-","-","-","-","-"] else
[ .requests,
  n("get") + n("get_range"), n("get_range"),
  n("put") + n("put_part") + n("put_copy"), n("put_part"),
  n("list"), n("head") + n("head_bucket"),
  n("delete") + n("delete_multi") + n("mpu_abort"),
  ([.by_op | to_entries[] | select(.key as $k | known | index($k) | not) | .value.n] | add // 0),
  ([.by_op[] | .up] | add // 0),
  ([.by_op[] | .down] | add // 0),
  ([.by_op | to_entries[] | .key as $k | .value.non2xx | to_entries[] | "\($k) \(.key)x\(.value)"] | join(", ") | if . == "" then "-" else . end),
  .errors,
  ([.by_op | to_entries[] | select(.key as $k | known | index($k) | not) | "\(.key) \(.value.n)"] | join(", ") | if . == "" then "-" else . end)
] end | map(tostring) | @tsv'

# The proxy counts that larder's own counters should equal. A multipart upload
# is one PUT to larder (HEAD, POST, parts, POST on the wire); bytes down are
# the 2xx GET bodies.
EXPECT_JQ='
def n($o): (.by_op[$o].n // 0);
def f($o; $k): (.by_op[$o][$k] // 0);
{ get: (n("get") + n("get_range")),
  put: (n("put") + n("mpu_create")),
  list: n("list"),
  delete: (n("delete") + n("delete_multi")),
  bytes_up: (f("put"; "up") + f("put_part"; "up")),
  bytes_down: (f("get"; "down_ok") + f("get_range"; "down_ok")) }'

# hbytes BYTES: 1.2 GB / 3.4 MB / 5.6 kB / 78 B (10^3 units)
hbytes() {
    awk -v b="$1" 'BEGIN {
        if (b == "-" || b == "") { print "-"; exit }
        if (b >= 1e9) printf "%.2f GB\n", b / 1e9; else if (b >= 1e6) printf "%.1f MB\n", b / 1e6;
        else if (b >= 1e3) printf "%.1f kB\n", b / 1e3; else printf "%d B\n", b }'
}
per_gb() { awk -v r="$1" -v b="$2" 'BEGIN { if (r == "-" || b <= 0) print "-"; else printf "%.1f\n", r / (b / 1e9) }'; }

# ---- driver ------------------------------------------------------------------------
DUMP_ROWS=() TREE_ROWS=() CHECK_ROWS=() FAILS=() ODD=()
failures=0

# step PART TOOL NAME TAG DATA_BYTES EXPECTED_FILE FN ARGS...
# Runs FN TAG ARGS between two proxy takes, then records a row.
step() {
    local part=$1 tool=$2 name=$3 tag=$4 data=$5 expected=$6 fn=$7
    shift 7
    local rc=0
    proxy_take >/dev/null
    "$fn" "$tag" "$@" || rc=$?
    proxy_take >"$BENCH_TMP/$tag.proxy"
    local wall=- cpu=- rss=- verified=- self='{}'
    if ((rc == 0)); then
        wall=$(time_field "$tag" wall)
        cpu=$(time_field "$tag" cpu)
        rss=$(time_field "$tag" rss)
    else
        failures=$((failures + 1))
        FAILS+=("$tool $part $name: exit $rc: $(tail -n 5 "$BENCH_TMP/$tag.err" 2>/dev/null | tr '\n' ' ' | sed 's/|/\\|/g')")
        verified="**FAILED** (exit $rc)"
    fi
    if ((rc == 0)) && [[ $expected != - ]]; then
        if cmp -s "$BENCH_TMP/$tag.file" "$expected"; then
            verified=ok
        else
            verified="**differs**"
            failures=$((failures + 1))
            FAILS+=("$tool $part $name: output differs from $expected: $(cmp "$BENCH_TMP/$tag.file" "$expected" 2>&1 | head -n 1)")
        fi
    fi
    rm -f "$BENCH_TMP/$tag.file"
    [[ $tool == larder ]] && self=$(larder_self "$tag")

    local req get rng put parts list head del other up down non2xx errs otherd
    IFS=$'\t' read -r req get rng put parts list head del other up down non2xx errs otherd \
        < <(jq -r "$PROXY_JQ" "$BENCH_TMP/$tag.proxy")
    [[ $errs != - && $errs != 0 ]] && non2xx="$non2xx; **$errs failed exchange(s)**"
    [[ $otherd != - ]] && non2xx="$non2xx; other: $otherd"
    non2xx=${non2xx#-; }

    # larder's own counts, checked against the proxy's
    if [[ $tool == larder && $self != '{}' ]]; then
        local sg sp sl sd su sdn match=- exp
        read -r sg sp sl sd su sdn < <(jq -r '"\(.get) \(.put) \(.list) \(.delete) \(.bytes_up) \(.bytes_down)"' <<<"$self")
        if ((S3_PROXY)); then
            exp=$(jq -c "$EXPECT_JQ" "$BENCH_TMP/$tag.proxy")
            local diff
            diff=$(jq -rn --argjson s "$self" --argjson e "$exp" \
                '[$e | keys[] as $k | select($s[$k] != $e[$k]) | "\($k) larder \($s[$k]) vs proxy \($e[$k])"] | join("; ")')
            if [[ -z $diff ]]; then
                match=yes
            else
                match="**no**: $diff"
                ODD+=("larder $part $name: its own counts differ from the proxy's: $diff")
            fi
            CHECK_ROWS+=("| $part | $name | $sg / $sp / $sl / $sd | $(jq -r '"\(.get) / \(.put) / \(.list) / \(.delete)"' <<<"$exp") | $su / $sdn | $(jq -r '"\(.bytes_up) / \(.bytes_down)"' <<<"$exp") | $match |")
        else
            CHECK_ROWS+=("| $part | $name | $sg / $sp / $sl / $sd | - | $su / $sdn | - | (no proxy) |")
        fi
    fi
    if [[ $tool == larder ]]; then
        local odd w
        odd=$(grep -v '^{' "$BENCH_TMP/$tag.err" 2>/dev/null | grep -v '^[[:space:]]*$' | head -n 5 | tr '\n' ' ' || true)
        [[ -n $odd ]] && ODD+=("larder $part $name: stderr: $odd")
        w=$(jq -r '(.warnings // []) | length' "$BENCH_TMP/$tag.out" 2>/dev/null || echo 0)
        [[ -n $w && $w != 0 ]] && ODD+=("larder $part $name: warnings: $(jq -c '.warnings' "$BENCH_TMP/$tag.out" | head -c 500)")
    fi

    local getc="$get" putc="$put" mbps_=- rpg=-
    [[ $rng != - && $rng != 0 ]] && getc="$get ($rng)"
    [[ $parts != - && $parts != 0 ]] && putc="$put ($parts parts)"
    if [[ $data != - && $wall != - ]]; then
        mbps_=$(mbps "$data" "$wall")
        rpg=$(per_gb "$req" "$data")
    fi
    local rssm=-
    [[ $rss != - ]] && rssm=$(rss_mib "$rss")
    local datam=-
    [[ $data != - ]] && datam=$(mb "$data")
    if [[ $part == dump ]]; then
        DUMP_ROWS+=("| $tool | $name | $datam | $wall | $cpu | $rssm | $mbps_ | $req | $getc | $putc | $list | $head | $del | $other | $(hbytes "$up") | $(hbytes "$down") | $rpg | ${non2xx:--} | $verified |")
    else
        TREE_ROWS+=("| $tool | $name | $wall | $cpu | $rssm | $req | $getc | $putc | $list | $head | $del | $other | $(hbytes "$up") | $(hbytes "$down") | ${non2xx:--} | $verified |")
    fi
    jq -cn --arg tool "$tool" --arg part "$part" --arg step "$name" --arg wall "$wall" --arg cpu "$cpu" \
        --arg rss_kib "$rss" --arg data "$data" --arg verified "$verified" --argjson rc "$rc" \
        --argjson proxy "$(cat "$BENCH_TMP/$tag.proxy")" --argjson larder_requests "$self" \
        '{tool: $tool, part: $part, step: $step, rc: $rc, wall_s: $wall, cpu_s: $cpu, rss_kib: $rss_kib,
          data_bytes: $data, verified: $verified, larder_requests: $larder_requests, proxy: $proxy}' >>"$RAW"
    log "$tool $part $name: ${wall}s wall, ${cpu}s cpu, ${rssm} MiB rss, $req requests (GET $getc, PUT $putc, LIST $list, HEAD $head), up $(hbytes "$up"), down $(hbytes "$down")${verified:+, $verified}"
}

# ---- inputs ----------------------------------------------------------------------
D1="" D2="" S1=0 S2=0
if [[ " ${PARTS[*]} " == *" dump "* ]]; then
    ensure_inputs
    D1=$PGB_DIR/day1.sql D2=$PGB_DIR/day2.sql
    S1=$(file_bytes "$D1") S2=$(file_bytes "$D2")
fi
TREE="" PROBE=""
if [[ " ${PARTS[*]} " == *" tree "* ]]; then
    gen_hash=$(sha256sum "$GEN" | cut -c1-8)
    TREE_IN=$BENCH_DIR/inputs/tree-f$S3_TREE_FILES-s$TREE_SEED-g$gen_hash
    if [[ ! -f $TREE_IN/.complete ]]; then
        rm -rf "$TREE_IN"
        mkdir -p "$TREE_IN"
        log "generating the tree ($S3_TREE_FILES files) in $TREE_IN/day1"
        python3 "$GEN" day1 "$TREE_IN/day1" --files "$S3_TREE_FILES" --seed "$TREE_SEED" >"$TREE_IN/day1.json"
        touch "$TREE_IN/.complete"
    else
        log "tree cached in $TREE_IN"
    fi
    # Both tools back up the cached tree in place (neither writes to it).
    TREE=$TREE_IN/day1
    if [[ -n ${S3_PROBE:-} ]]; then
        PROBE=$S3_PROBE
    else # a small note from the middle of the sorted list
        PROBE=$(cd "$TREE" && find . -type f -name '*.yaml' -size -3k | LC_ALL=C sort |
            awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }')
        PROBE=${PROBE#./}
    fi
    [[ -f $TREE/$PROBE ]] || die "probe file $TREE/$PROBE is missing"
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
busy_start=$(ps -eo pcpu=,comm= --sort=-pcpu | head -n 4 | awk '{printf "%s%s %s%%", (NR>1?", ":""), $2, $1}' || true)
MACHINE=$(machine_info)
TOOL_LOAD=()

for part in "${PARTS[@]}"; do
    for tool in "${TOOLS[@]}"; do
        prefix=$PREFIX_BASE-$tool-$part
        PREFIXES+=("$prefix")
        aux=$RUN_DIR/$tool-$part
        mkdir -p "$aux"
        TOOL_LOAD+=("$tool/$part $(cut -d' ' -f1 /proc/loadavg)")
        log "== $tool / $part: s3://$S3_BUCKET/$prefix"
        step "$part" "$tool" init "$tool-$part-init" - - "op_${tool}_init" "$prefix" "$aux/cache"
        if [[ $part == dump ]]; then
            step dump "$tool" "backup day 1" "$tool-d1" "$S1" - "op_${tool}_backup_stdin" "$prefix" "$aux/cache" "$D1"
            step dump "$tool" "backup day 2" "$tool-d2" "$S2" - "op_${tool}_backup_stdin" "$prefix" "$aux/cache" "$D2"
            step dump "$tool" "cat day 2 (new cache dir)" "$tool-cat" "$S2" "$D2" \
                "op_${tool}_cat_stream" "$prefix" "$aux/cache-fresh"
            step dump "$tool" "cat day 2 (the backup's cache)" "$tool-cat-bcache" "$S2" "$D2" \
                "op_${tool}_cat_stream" "$prefix" "$aux/cache"
        else
            step tree "$tool" backup "$tool-tree" - - "op_${tool}_backup_tree" "$prefix" "$aux/cache" "$TREE"
            step tree "$tool" "cat file: cold (new cache dir)" "$tool-cold" - "$TREE/$PROBE" \
                "op_${tool}_cat_file" "$prefix" "$aux/cache-fresh" "$TREE/$PROBE"
            step tree "$tool" "cat file: warm (same cache again)" "$tool-warm" - "$TREE/$PROBE" \
                "op_${tool}_cat_file" "$prefix" "$aux/cache-fresh" "$TREE/$PROBE"
            step tree "$tool" "cat file: the backup's cache" "$tool-bcache" - "$TREE/$PROBE" \
                "op_${tool}_cat_file" "$prefix" "$aux/cache" "$TREE/$PROBE"
            if [[ $tool == restic ]]; then
                step tree "$tool" "cat file: --no-cache" "$tool-nocache" - "$TREE/$PROBE" \
                    "op_${tool}_cat_file" "$prefix" none "$TREE/$PROBE"
            fi
        fi
        rm -rf "$aux"
    done
done

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))
proxy_totals='{}'
((S3_PROXY)) && proxy_totals=$(curl -sS --max-time 30 "$PROXY/__proxy__/counts" || echo '{}')

report() {
    echo "# larder vs restic on S3 (SeaweedFS on loopback)"
    echo
    echo "$MACHINE"
    echo "- load (1, 5, 15 min) before measuring: $load_start; at the end: $load_end"
    echo "- busiest processes at the start (ps %CPU, lifetime average): $busy_start"
    echo "- 1-minute load as each tool started: $(IFS=,; echo "${TOOL_LOAD[*]}" | sed 's/,/, /g')"
    echo "- script: benches/s3.sh (parts: ${PARTS[*]}), total run time ${elapsed}s"
    for t in "${TOOLS[@]}"; do echo "- $("${t}_version")"; done
    echo "- S3: $S3_ENDPOINT, bucket $S3_BUCKET, region $S3_REGION ($S3_ORIGIN); prefixes $PREFIX_BASE-<tool>-<part>$( ((S3_KEEP)) && echo ", kept" || echo ", deleted at the end")"
    if ((S3_PROXY)); then
        echo "- requests counted by benches/s3-count-proxy.py (Python, one upstream connection per request); both tools go through it, and it costs CPU on the same 2 cores"
    else
        echo "- no proxy (S3_PROXY=0): tools talk to the server directly; only larder's own counts"
    fi
    echo "- larder: init $S3_LARDER_INIT (stream chunker and pack size defaults); restic: repo v2, --compression auto, -o s3.region=$S3_REGION"
    [[ -n $D1 ]] && echo "- dump input: $PGB_DIR (pgbench scale $PGBENCH_SCALE, day 2 after pgbench -t $PGBENCH_TX): day 1 $(mb "$S1") MB, day 2 $(mb "$S2") MB"
    [[ -n $TREE ]] && echo "- tree input: $TREE ($(jq -r '"\(.files) files, \(.dirs) leaf dirs, \(.bytes / 1e6 * 10 | floor / 10) MB"' "$TREE_IN/day1.json")); probed file: $PROBE ($(stat -c %s "$TREE/$PROBE") B)"
    echo
    echo "MB = 10^6 bytes, GB = 10^9. Wall/CPU (user+sys)/peak RSS from GNU time; the machine is shared, so timings are noisy."
    echo "Requests are the proxy's: GET (of them ranged), PUT (of them multipart parts), LIST pages, HEAD, DELETE, other"
    echo "(multipart create/complete, bucket queries). 'up' is payload sent in request bodies, 'down' all response bodies."
    echo "req/GB = requests per 10^9 bytes of data backed up or streamed out. 'non-2xx' lists answers other than 2xx by"
    echo "operation (404 on a HEAD or 412 on a conditional PUT are expected answers, 5xx would mean retries)."
    echo "Both tools key their chunkers per repository (larder a secret seed, restic a random polynomial), so on"
    echo "repetitive input the bytes stored, and the GETs needed to read them back, differ from one fresh repository to the next."
    if ((${#DUMP_ROWS[@]} > 0)); then
        echo
        echo "## Dump stream (pgbench, stdin)"
        echo
        echo "| tool | step | data MB | wall s | CPU s | peak RSS MiB | MB/s | requests | GET (range) | PUT | LIST | HEAD | DELETE | other | up | down | req/GB | non-2xx | verified |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        printf '%s\n' "${DUMP_ROWS[@]}"
    fi
    if ((${#TREE_ROWS[@]} > 0)); then
        echo
        echo "## File tree"
        echo
        echo "| tool | step | wall s | CPU s | peak RSS MiB | requests | GET (range) | PUT | LIST | HEAD | DELETE | other | up | down | non-2xx | verified |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        printf '%s\n' "${TREE_ROWS[@]}"
    fi
    if ((${#CHECK_ROWS[@]} > 0)); then
        echo
        echo "## larder's own request counts against the proxy's"
        echo
        echo "larder counts a request when it makes one through its storage layer (retries inside the S3 client are not"
        echo "seen); a multipart upload is one PUT to it. Proxy side: GET = whole + ranged, PUT = PUT + multipart creates,"
        echo "bytes up = PUT payloads, bytes down = 2xx GET bodies. init prints no counts."
        echo
        echo "| part | step | larder GET / PUT / LIST / DELETE | proxy GET / PUT / LIST / DELETE | larder bytes up / down | proxy bytes up / down | match |"
        echo "| --- | --- | --- | --- | --- | --- | --- |"
        printf '%s\n' "${CHECK_ROWS[@]}"
    fi
    if ((S3_PROXY)); then
        echo
        echo "Proxy totals for the run: $(jq -r '"\(.requests) requests, \(.errors) failed exchanges, statuses \(.status | to_entries | map("\(.key) x\(.value)") | join(", "))"' <<<"$proxy_totals")"
    fi
    md_list "Anomalies:" "${ODD[@]}"
    ((failures == 0)) || md_list "**$failures failure(s):**" "${FAILS[@]}"
}

report | tee "$BENCH_DIR/results-s3-$stamp.md"
cp "$BENCH_DIR/results-s3-$stamp.md" "$BENCH_DIR/results-s3.md"
log "results in $BENCH_DIR/results-s3-$stamp.md, raw numbers in $RAW"
((failures == 0)) || die "$failures step(s) failed"
