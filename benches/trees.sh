#!/usr/bin/env bash
# Side-by-side comparison of larder, restic and bupstash on a file tree.
#
# Usage: benches/trees.sh            (from anywhere)
#        TREE_FILES=20000 benches/trees.sh
#
# Input (generated once by benches/trees-gen.py, seeded, then cached in
# $LARDER_BENCH_DIR/inputs/tree-f<N>-s<SEED>-g<generator hash>/day1, default
# bench dir /tmp/larder-peers): a knowledge-base-like tree of $TREE_FILES
# files (default 50,000) over ~2,000 leaf directories: small YAML-like notes
# (180 B to 6 KB), 1.5% markdown/JSON documents (8-256 KiB) and one large
# attachment per 1,000 files (2-7 MiB: CSV/log exports, database-like pages,
# incompressible "PDF/PNG/ZIP"); about 360 MB at 50,000 files.
#
# For every tool, in a fresh repository and on a fresh copy of the day-1 tree
# at the same absolute path ($RUN_DIR/kb):
#   1. first backup                 wall, CPU, peak RSS (GNU time), du -sb of the repo
#   2. re-scan of the unchanged tree (second backup, parent/stat cache in use)
#   3. day 2: trees-gen.py day2 modifies 1% of the files in place (line appended
#      or changed) and adds a few; backup again; du growth
#   4. one-file restore of a small note changed on day 2, checked with cmp
#      (larder/restic restore --include /abs/path; bupstash get --pick)
#   5. cat of the same file: larder cat --json with its tree-pack cache
#      (<cache>/<repo-id>-<tag>/packs) removed (cold), then again (warm);
#      restic dump with its tree-pack cache (<cache>/<repo-id>/data) removed,
#      then again; bupstash get --pick (it keeps no data cache)
# Repositories use each tool's defaults: larder init (files profile
# 256K:1M:4M, zstd 1; then `key export`, and every later command opens with
# that key file, as bupstash does with its key; LARDER_BENCH_KEY_FILE=0 for
# the passphrase and Argon2id on every command); restic repo v2,
# --compression auto; bupstash new-key (no passphrase KDF), zstd:3, a
# per-job send log (so re-scans use its stat cache). Caches, keys and send
# logs live in REPO.aux and are not counted in the repository size.
#
# Knobs: TREES_TOOLS="larder restic bupstash", TREES_RUNS (1; 3 reports the
# medians of three runs, the tools taking turns), TREE_FILES (50000), TREE_SEED
# (42), TREES_LARDER_INIT (extra `larder init` arguments, such as
# "--kdf-memory 8 --kdf-passes 1" to see larder without its per-command
# Argon2id cost; default none), TREES_DROP_CACHES=1 to drop the page cache
# (root; system-wide) before each tool's first backup (default: the tree was
# just copied, so it is in the page cache for every tool), LARDER_BIN,
# LARDER_BENCH_DIR.
# Output: markdown on stdout and in $LARDER_BENCH_DIR/results-trees-<timestamp>.md
# (and results-trees.md).
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOOLS=(${TREES_TOOLS:-larder restic bupstash})
RUNS=${TREES_RUNS:-1}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "TREES_RUNS must be a positive whole number, not '$RUNS'"
TREE_FILES=${TREE_FILES:-50000}
TREE_SEED=${TREE_SEED:-42}
TREES_DROP_CACHES=${TREES_DROP_CACHES:-0}
TREES_LARDER_INIT=${TREES_LARDER_INIT:-} # extra `larder init` args, e.g. "--kdf-memory 8 --kdf-passes 1"
GEN=$_lib_dir/trees-gen.py

need jq awk du cmp stat sha256sum python3 "$GNU_TIME"
for t in "${TOOLS[@]}"; do
    case $t in
    larder) need_larder ;;
    restic) need restic ;;
    bupstash) command -v bupstash >/dev/null 2>&1 \
        || die "bupstash is not on PATH: install it with 'cargo install bupstash --locked' (or set TREES_TOOLS)" ;;
    *) die "unknown tool $t (known: larder restic bupstash)" ;;
    esac
done
[[ $TREE_FILES =~ ^[0-9]+$ ]] && ((TREE_FILES >= 100)) || die "TREE_FILES must be a number >= 100"

mkdir -p "$BENCH_DIR"
started=$(date +%s)
RUN_DIR=$(mktemp -d "$BENCH_DIR/trees-run.XXXXXX")
cleanup_push "rm -rf '$RUN_DIR'"
BENCH_TMP=$RUN_DIR/tmp
mkdir -p "$BENCH_TMP"

# Freeze the larder binary: someone may rebuild target/ while this runs.
if [[ " ${TOOLS[*]} " == *" larder "* ]]; then
    cp -p "$LARDER" "$RUN_DIR/larder"
    LARDER=$RUN_DIR/larder
fi

# ---- input ----------------------------------------------------------------
gen_hash=$(sha256sum "$GEN" | cut -c1-8)
TREE_IN=$BENCH_DIR/inputs/tree-f$TREE_FILES-s$TREE_SEED-g$gen_hash
if [[ ! -f $TREE_IN/.complete ]]; then
    rm -rf "$TREE_IN"
    mkdir -p "$TREE_IN"
    log "generating the day-1 tree ($TREE_FILES files) in $TREE_IN/day1"
    python3 "$GEN" day1 "$TREE_IN/day1" --files "$TREE_FILES" --seed "$TREE_SEED" >"$TREE_IN/day1.json"
    touch "$TREE_IN/.complete"
else
    log "tree cached in $TREE_IN"
fi
T_FILES=$(jq -r .files "$TREE_IN/day1.json")
T_DIRS=$(jq -r .dirs "$TREE_IN/day1.json")
T_BYTES=$(jq -r .bytes "$TREE_IN/day1.json")
T_LARGE=$(jq -r .large "$TREE_IN/day1.json")
T_MEDIUM=$(jq -r .medium "$TREE_IN/day1.json")
WORK=$RUN_DIR/kb # the tree every tool backs up (same absolute path for all)

# fresh_tree: a new copy of day 1 at $WORK (not measured)
fresh_tree() {
    rm -rf "$WORK"
    cp -a "$TREE_IN/day1" "$WORK"
    sync
    if ((TREES_DROP_CACHES)); then
        echo 3 >/proc/sys/vm/drop_caches || die "cannot drop caches (TREES_DROP_CACHES=1 needs root)"
    fi
}

# ---- per-tool operations ----------------------------------------------------
# tr_<tool>_<op> REPO TAG: run one measured step; write notes to $BENCH_TMP/TAG.notes.
# Restore/cat steps write the file they produced to $BENCH_TMP/TAG.file.
PROBE="" # relative path of the probed small file (set after day 2)

jsonl_last() { grep '^{' "$1" | tail -n 1; } # last JSON line of a file

larder_reqs() { # JSON -> "GET g, PUT p, LIST l, down X KB"
    jq -r '.requests | "GET \(.get), PUT \(.put), LIST \(.list), up \(.bytes_up / 1000 | floor) kB, down \(.bytes_down / 1000 | floor) kB"' <<<"$1"
}

tr_larder_init() { larder_init "$1" $TREES_LARDER_INIT; } # word-split on purpose
tr_larder_backup() {
    larder_e "$1"
    measure "$2" "${LE[@]}" backup --source kb "$WORK" --quiet --json >"$BENCH_TMP/$2.out" || return
    local j
    j=$(cat "$BENCH_TMP/$2.out")
    echo "$(jq -r '"read \(.bytes_read / 1e6 * 10 | floor / 10) MB; files new/changed/unchanged \(.files_new)/\(.files_changed)/\(.files_unchanged); bytes_added \(.bytes_added / 1e6 * 100 | floor / 100) MB; blobs new/reused \(.blobs_new)/\(.blobs_reused)"' <<<"$j"); $(larder_reqs "$j")" >"$BENCH_TMP/$2.notes"
}
tr_larder_restore() {
    local d=$RUN_DIR/restore-$2
    rm -rf "$d"
    larder_e "$1"
    measure "$2" "${LE[@]}" restore latest --target "$d" --include "$WORK/$PROBE" --quiet --json >"$BENCH_TMP/$2.out" || return
    local j
    j=$(cat "$BENCH_TMP/$2.out")
    echo "$(jq -r '"files \(.files), dirs \(.dirs)"' <<<"$j"); $(larder_reqs "$j")" >"$BENCH_TMP/$2.notes"
    mv "$d$WORK/$PROBE" "$BENCH_TMP/$2.file" 2>/dev/null \
        || echo "; restored file not at TARGET$WORK/$PROBE: $(cd "$d" && find . -type f | head -n 3 | tr '\n' ' ')" >>"$BENCH_TMP/$2.notes"
    rm -rf "$d"
}
tr_larder_cat() { # REPO TAG cold|warm
    larder_e "$1"
    if [[ $3 == cold ]]; then
        local p n=0
        for p in "$1.aux/cache"/*/packs; do [[ -d $p ]] && { rm -rf "$p"; n=$((n + 1)); }; done
        ((n == 1)) || echo "(expected one <cache>/<repo-id>-<tag>/packs dir, removed $n) " >"$BENCH_TMP/$2.pre"
    fi
    measure "$2" "${LE[@]}" cat latest "$WORK/$PROBE" --json >"$BENCH_TMP/$2.file" || return
    local j
    j=$(jsonl_last "$BENCH_TMP/$2.err")
    {
        cat "$BENCH_TMP/$2.pre" 2>/dev/null || true
        if [[ -n $j ]]; then
            jq -r '"\(.bytes) B; GET \(.requests.get), bytes_down \(.requests.bytes_down), LIST \(.requests.list)"' <<<"$j"
        else
            echo "no JSON summary on stderr"
        fi
        [[ $3 == cold ]] && echo "; tree-pack cache removed" || echo "; cache warm"
    } | tr -d '\n' >"$BENCH_TMP/$2.notes"
    echo "$j" >"$BENCH_TMP/$2.json"
}

tr_restic_init() { restic_init "$1"; }
tr_restic_backup() {
    restic_e "$1"
    measure "$2" "${RE[@]}" backup "$WORK" --compression auto --json --quiet >"$BENCH_TMP/$2.out" || return
    jq -r 'select(.message_type=="summary") | "files new/changed/unmodified \(.files_new)/\(.files_changed)/\(.files_unmodified); data_added (before compression) \(.data_added / 1e6 * 100 | floor / 100) MB"' \
        "$BENCH_TMP/$2.out" >"$BENCH_TMP/$2.notes"
}
tr_restic_restore() {
    local d=$RUN_DIR/restore-$2
    rm -rf "$d"
    restic_e "$1"
    measure "$2" "${RE[@]}" restore latest --target "$d" --include "$WORK/$PROBE" --quiet >"$BENCH_TMP/$2.out" || return
    echo "files restored: $(find "$d" -type f | wc -l)" >"$BENCH_TMP/$2.notes"
    mv "$d$WORK/$PROBE" "$BENCH_TMP/$2.file" 2>/dev/null || echo "; restored file missing" >>"$BENCH_TMP/$2.notes"
    rm -rf "$d"
}
tr_restic_cat() { # REPO TAG cold|warm
    restic_e "$1"
    local note="cache: index+snapshots cached, tree packs cached"
    if [[ $3 == cold ]]; then
        rm -rf "$1.aux/cache"/*/data
        note="cache: index+snapshots cached, tree-pack cache (<cache>/<id>/data) removed"
    fi
    measure "$2" "${RE[@]}" dump --quiet latest "$WORK/$PROBE" >"$BENCH_TMP/$2.file" || return
    echo "$note; data packs are never cached" >"$BENCH_TMP/$2.notes"
}

BUP_ID=""
tr_bupstash_init() { bupstash_init "$1"; }
tr_bupstash_backup() {
    bupstash_e "$1" # sets BUPSTASH_SEND_LOG (stat cache) and the query cache in REPO.aux
    measure "$2" "${BE[@]}" put --no-progress --print-stats name=kb "$WORK" >"$BENCH_TMP/$2.out" || return
    BUP_ID=$(tail -n 1 "$BENCH_TMP/$2.out")
    grep -E 'sent|added' "$BENCH_TMP/$2.err" | tr '\n' ';' | sed 's/;$//; s/;/; /g' >"$BENCH_TMP/$2.notes"
}
tr_bupstash_restore() {
    bupstash_e "$1"
    measure "$2" "${BE[@]}" get --no-progress --pick "$PROBE" "id=$BUP_ID" >"$BENCH_TMP/$2.file" || return
    echo "get --pick (bupstash has no restore command)" >"$BENCH_TMP/$2.notes"
}
tr_bupstash_cat() {
    bupstash_e "$1"
    measure "$2" "${BE[@]}" get --no-progress --pick "$PROBE" "id=$BUP_ID" >"$BENCH_TMP/$2.file" || return
    echo "get --pick again (no data cache)" >"$BENCH_TMP/$2.notes"
}

# ---- driver -------------------------------------------------------------------
declare -A WALL CPU RSS ADDED REPO OK
declare -A WALLS CPUS # every run's values, space-separated
RUN=1
ROWS=()
FAILS=()
ODD=() # larder stderr besides JSON, and warnings
failures=0

# median_of "V1 V2 ..." DECIMALS
median_of() {
    tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk -v d="$2" '
        { v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.*f\n", d, m }'
}

# step TOOL STEP KEY REPO FN [ARGS...]: run FN REPO TAG ARGS, record a row
# (on the last of the runs, with the medians over all of them).
step() {
    local tool=$1 name=$2 key=$3 repo=$4 fn=$5
    shift 5
    local tag=$tool-$key before after rc=0
    before=$(du_bytes "$repo")
    "$fn" "$repo" "$tag" "$@" || rc=$?
    after=$(du_bytes "$repo")
    REPO[$tool/$key]=$after
    if ((rc != 0)); then
        failures=$((failures + 1))
        local err
        err=$(tail -n 5 "$BENCH_TMP/$tag.err" 2>/dev/null | tr '\n' ' ' | sed 's/|/\\|/g' || true)
        FAILS+=("$tool $name: exit $rc: $err")
        ROWS+=("| $tool | $name | - | - | - | $(mb "$after") | - | **FAILED** (exit $rc): $err |")
        log "$tool $name FAILED (exit $rc)"
        return 0
    fi
    local wall cpu rss notes added=-
    wall=$(time_field "$tag" wall)
    cpu=$(time_field "$tag" cpu)
    rss=$(time_field "$tag" rss)
    notes=$(cat "$BENCH_TMP/$tag.notes" 2>/dev/null | tr '\n' ' ' | sed 's/|/\\|/g; s/ *$//' || true)
    case $key in d1 | rescan | d2) added=$(mb $((after - before))); ADDED[$tool/$key]=$((after - before)) ;; esac
    if [[ -f $BENCH_TMP/$tag.file ]]; then
        if cmp -s "$BENCH_TMP/$tag.file" "$WORK/$PROBE"; then
            notes="verified ok; $notes"
            OK[$tool/$key]=1
        else
            notes="**content differs**: $(cmp "$BENCH_TMP/$tag.file" "$WORK/$PROBE" 2>&1 | head -n 1); $notes"
            failures=$((failures + 1))
            FAILS+=("$tool $name: restored content differs from $WORK/$PROBE")
            OK[$tool/$key]=0
        fi
    fi
    if [[ $tool == larder ]]; then
        # Anything larder printed besides its JSON summary, and any warnings.
        local odd w
        odd=$(grep -v '^{' "$BENCH_TMP/$tag.err" | grep -v '^[[:space:]]*$' | head -n 5 | tr '\n' ' ' || true)
        [[ -n $odd ]] && ODD+=("$tool $name: stderr: $odd")
        w=$(jq -r '(.warnings // []) | length' "$BENCH_TMP/$tag.out" 2>/dev/null || echo 0)
        if [[ -n $w && $w != 0 ]]; then
            notes="$notes; **$w warning(s)**"
            ODD+=("$tool $name: warnings: $(jq -c '.warnings' "$BENCH_TMP/$tag.out" | head -c 500)")
        fi
    fi
    # Every run but the last only records its times; the last reports the
    # medians (and the largest RSS) of all of them.
    WALLS[$tool/$key]+=" $wall"
    CPUS[$tool/$key]+=" $cpu"
    ((rss > ${RSS[$tool/$key]:-0})) && RSS[$tool/$key]=$rss
    if ((RUN < RUNS)); then
        log "$tool $name (run $RUN of $RUNS): ${wall}s wall, ${cpu}s cpu"
        return 0
    fi
    ((RUNS > 1)) && log "$tool $name: wall times of the runs:${WALLS[$tool/$key]}"
    wall=$(median_of "${WALLS[$tool/$key]}" 3)
    cpu=$(median_of "${CPUS[$tool/$key]}" 2)
    rss=${RSS[$tool/$key]}
    WALL[$tool/$key]=$wall CPU[$tool/$key]=$cpu
    ROWS+=("| $tool | $name | $wall | $cpu | $(rss_mib "$rss") | $(mb "$after") | $added | $notes |")
    log "$tool $name: ${wall}s wall, ${cpu}s cpu, $(rss_mib "$rss") MiB rss, repo $(mb "$after") MB, added $added MB"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
uptime_start=$(uptime)
busy_start=$(ps -eo pcpu=,comm= --sort=-pcpu | head -n 4 | awk '{printf "%s%s %s%%", (NR>1?", ":""), $2, $1}' || true)
MACHINE=$(machine_info)
DAY2_JSON=""
TOOL_LOAD=() # 1-minute load average as each tool starts

for RUN in $(seq "$RUNS"); do
for tool in "${TOOLS[@]}"; do
    log "== $tool (run $RUN of $RUNS)"
    TOOL_LOAD+=("$tool $(cut -d' ' -f1 /proc/loadavg)")
    repo=$RUN_DIR/repos/$tool
    mkdir -p "$(dirname "$repo")"
    fresh_tree
    "tr_${tool}_init" "$repo"
    step "$tool" "first backup" d1 "$repo" "tr_${tool}_backup"
    step "$tool" "re-scan (unchanged)" rescan "$repo" "tr_${tool}_backup"
    python3 "$GEN" day2 "$WORK" --seed "$TREE_SEED" >"$BENCH_TMP/$tool-day2.json"
    sync
    if [[ -z $DAY2_JSON ]]; then
        DAY2_JSON=$BENCH_TMP/$tool-day2.json
    elif ! cmp -s "$DAY2_JSON" "$BENCH_TMP/$tool-day2.json"; then
        die "day-2 modification differs between tools (generator not deterministic?)"
    fi
    PROBE=$(jq -r .probe "$DAY2_JSON")
    step "$tool" "day-2 backup (1% changed)" d2 "$repo" "tr_${tool}_backup"
    step "$tool" "one-file restore" restore "$repo" "tr_${tool}_restore"
    if [[ $tool == bupstash ]]; then
        step "$tool" "cat one file" cat "$repo" "tr_${tool}_cat"
    else
        step "$tool" "cat one file (cold)" catcold "$repo" "tr_${tool}_cat" cold
        step "$tool" "cat one file (warm)" catwarm "$repo" "tr_${tool}_cat" warm
    fi
    [[ $tool == larder ]] && LARDER_CACHE_MB=$(mb "$(du_bytes "$repo.aux/cache")")
    [[ $tool == restic ]] && RESTIC_CACHE_MB=$(mb "$(du_bytes "$repo.aux/cache")")
    rm -rf "$repo" "$repo.aux"
done
done
rm -rf "$WORK"

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
uptime_end=$(uptime)
elapsed=$(($(date +%s) - started))

# ---- larder's targets -----------------------------------------------------------
has() { [[ -n ${WALL[$1]:-} ]]; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
verdict() { if "$@"; then echo "met"; else echo "**NOT met**"; fi; }
targets() {
    local r
    if ! has larder/d1; then
        echo "larder did not complete its first backup; no targets can be evaluated."
        return
    fi
    echo "| larder target | measured | status |"
    echo "| --- | --- | --- |"
    if has larder/rescan; then
        local br fu
        br=$(jq -r .bytes_read "$BENCH_TMP/larder-rescan.out")
        fu=$(jq -r .files_unchanged "$BENCH_TMP/larder-rescan.out")
        local ratio
        ratio=$(awk -v a="${WALL[larder/rescan]}" -v b="${WALL[larder/d1]}" 'BEGIN { printf "%.3f", a / b }')
        echo "| re-scan reads no file content | bytes_read $br, files_unchanged $fu of $T_FILES | $(verdict test "$br" = 0) |"
        echo "| re-scan < 1/10 of first backup time | ${WALL[larder/rescan]} s vs ${WALL[larder/d1]} s (ratio $ratio) | $(verdict lt "$ratio" 0.1) |"
    fi
    for k in d1 rescan; do
        local what="first backup"
        [[ $k == rescan ]] && what="re-scan"
        if has "larder/$k" && has "bupstash/$k"; then
            echo "| $what at least as fast as bupstash | ${WALL[larder/$k]} s vs ${WALL[bupstash/$k]} s | $(verdict le "${WALL[larder/$k]}" "${WALL[bupstash/$k]}") |"
        fi
    done
    if has larder/restore && has bupstash/restore; then
        echo "| one-file restore faster than bupstash | ${WALL[larder/restore]} s vs ${WALL[bupstash/restore]} s (get --pick) | $(verdict lt "${WALL[larder/restore]}" "${WALL[bupstash/restore]}") |"
    fi
    local maxr=0 k
    for k in "${!RSS[@]}"; do
        [[ $k == larder/* ]] && ((RSS[$k] > maxr)) && maxr=${RSS[$k]}
    done
    echo "| peak RSS < 150 MiB | $(rss_mib "$maxr") MiB (max over larder's steps) | $(verdict lt "$maxr" $((150 * 1024))) |"
    if has larder/d2 && has restic/d2; then
        echo "| day 2 stores no more than restic | $(mb "${ADDED[larder/d2]}") MB vs $(mb "${ADDED[restic/d2]}") MB (du growth) | $(verdict le "${ADDED[larder/d2]}" "${ADDED[restic/d2]}") |"
    fi
    if has larder/catwarm && [[ -s $BENCH_TMP/larder-catwarm.json ]]; then
        local g
        g=$(jq -r .requests.get "$BENCH_TMP/larder-catwarm.json")
        # GETs besides the data: config, and the key object unless a key file opened it
        local meta=2
        [[ $LARDER_BENCH_KEY_FILE == 1 ]] && meta=1
        echo "| warm cat = 1 data read (GET == $((meta + 1)): config$([[ $meta == 2 ]] && echo ", key object") and the data) | GET $g | $(verdict test "$g" = $((meta + 1))) |"
    fi
}

report() {
    echo "# larder vs restic vs bupstash: file trees"
    echo
    echo "$MACHINE"
    echo "- load (1, 5, 15 min) before measuring: $load_start; at the end: $load_end"
    echo "- uptime before: \`${uptime_start# }\`; after: \`${uptime_end# }\`"
    echo "- busiest processes at the start (ps %CPU, lifetime average): $busy_start"
    echo "- 1-minute load as each tool started: $(IFS=,; echo "${TOOL_LOAD[*]}" | sed 's/,/, /g')"
    [[ -n ${GLIBC_TUNABLES:-} ]] && echo "- environment: GLIBC_TUNABLES=$GLIBC_TUNABLES (applies to every tool)"
    echo "- script: benches/trees.sh (TREE_FILES=$TREE_FILES TREE_SEED=$TREE_SEED), total run time ${elapsed}s"
    for t in "${TOOLS[@]}"; do echo "- $("${t}_version")"; done
    echo "- tree: $T_FILES files ($T_MEDIUM medium, $T_LARGE large), $T_DIRS leaf dirs, $(mb "$T_BYTES") MB of file content;" \
        "day 2: $(jq '.modified | length' "$DAY2_JSON") notes modified, $(jq '.added | length' "$DAY2_JSON") added;" \
        "probed file: $PROBE ($(stat -c %s "$TREE_IN/day1/$PROBE") B on day 1)"
    echo "- page cache: $([[ $TREES_DROP_CACHES == 1 ]] && echo "dropped before each tool's first backup" || echo "warm (the tree is copied just before each tool's first backup)")"
    echo "- larder: init ${TREES_LARDER_INIT:-with defaults}, opened with $(larder_keying); restic: repo v2, --compression auto; bupstash: new-key, send log (stat cache)"
    [[ -n ${LARDER_CACHE_MB:-} ]] && echo "- cache size at the end (not in repo MB): larder ${LARDER_CACHE_MB} MB${RESTIC_CACHE_MB:+, restic ${RESTIC_CACHE_MB} MB}"
    echo
    echo "MB = 10^6 bytes. 'repo MB' is du -sb of the repository after the step; 'added MB' its growth during the step."
    echo "Wall/CPU (user+sys)/peak RSS from GNU time; with TREES_RUNS=$RUNS, wall and CPU are medians over the runs"
    echo "(the tools taking turns in each run), peak RSS the largest, sizes and notes the last run's."
    echo "Restored and cat'ed files are compared with cmp."
    echo
    echo "| tool | step | wall s | CPU s | peak RSS MiB | repo MB | added MB | notes |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    targets
    md_list "larder oddities:" "${ODD[@]}"
    ((failures == 0)) || md_list "**$failures failure(s):**" "${FAILS[@]}"
}

stamp=$(date +%Y%m%dT%H%M%S)
report | tee "$BENCH_DIR/results-trees-$stamp.md"
cp "$BENCH_DIR/results-trees-$stamp.md" "$BENCH_DIR/results-trees.md"
log "results in $BENCH_DIR/results-trees-$stamp.md"
((failures == 0)) || die "$failures step(s) failed"
