#!/usr/bin/env bash
# larder prune vs restic prune: the same daily dump series, the same
# retention policy, one run.
#
# Usage: benches/prune.sh                                     (from anywhere)
#        PRUNE_MB=20 PRUNE_DAYS=12 benches/prune.sh           (a quick run)
#        LARDER_BIN=/path/to/larder PRUNE_TOOLS=larder benches/prune.sh
#
# Input (generated once by a small seeded Python generator embedded below,
# then cached in $LARDER_BENCH_DIR/inputs/prune-mb<MB>-m<MUT>-a<APP>-s<SEED>-g<hash>/
# as day001.sql, day002.sql, ...; default bench dir /tmp/larder-peers): a
# synthetic pg_dump --inserts style "database dump" of one orders table.
#   day 1   $PRUNE_MB MB (default 300) of INSERT lines: names, e-mails,
#           cities, statuses, amounts, timestamps, a 16-hex-digit token and a
#           note of 3-14 words from a 3,000-word vocabulary (zstd -1: about
#           3.6x, so compressible but not trivially).
#   day n   day n-1 with $PRUNE_MUTATE_PCT % (default 3) of the rows rewritten
#           in place, in runs of 1-200 consecutive rows (batch updates of
#           related rows), and $PRUNE_APPEND_PCT % (default 1) new rows
#           appended. Every day has its own seed, so a longer series starts
#           with the days of a shorter one and shares its cache directory.
# Inputs take about 1.2 * PRUNE_MB * PRUNE_DAYS MB of disk (about 15 GB at
# the defaults), the repositories a few GB more.
#
# For every tool, in a fresh encrypted repository:
#   1. back up day 1 .. day $PRUNE_DAYS from stdin (a pipe), one snapshot per
#      day, backdated to 03:00 UTC on consecutive days from $PRUNE_START
#      (larder backup --time, restic backup --time; host "bench"); the total
#      backup time is shown as context only
#   2. forget with $PRUNE_POLICY (default --keep-daily 7 --keep-weekly 4
#      --keep-monthly 3), timed; the script runs with TZ=UTC and larder
#      forget gets --utc, so both tools count days in UTC
#   3. prune with each tool's defaults, timed (wall, user+sys, peak RSS from
#      GNU time): larder prune repacks packs more than 10 % unused (a per-pack
#      threshold); restic prune --max-unused 5% allows at most 5 % of the
#      remaining repository to stay unused (a repository-wide limit)
#   4. du -sb of the repository before and after prune (caches live in
#      REPO.aux and are not counted; du -sb includes the directory entries,
#      about 1 MB for either tool's 256 fan-out directories, so the file
#      bytes after prune are shown as well); what is left unused afterwards,
#      from a dry run that does not change the repository: larder prune
#      --dry-run --max-unused 0 --json (bytes_total - bytes_rewritten: every
#      byte of a pack that is not a live blob, pack headers included; its
#      bytes_unused counts only packs with no live blob at all), restic prune
#      --dry-run --max-unused unlimited ("unused size after prune")
#   5. the newest snapshot streamed out (larder cat latest, restic dump
#      latest /db.sql) and compared with the newest input by cmp; then
#      larder check --read-data and restic check --read-data, pass or fail
# Repositories: larder init --kdf-memory 64 --kdf-passes 3 (the defaults:
# Argon2id runs on every command; stream chunker 4K:16K:64K, zstd 1, 16 MiB
# packs); restic repository v2, --compression auto, otherwise defaults
# (chunks of 512 KiB - 8 MiB, about 1 MiB on average). Both tools draw a
# random chunker secret at init, so chunk boundaries, and with them the
# repository sizes, differ from run to run on the same input (restic's
# large chunks more so: 45.0 and 54.6 MB after the 12 days of a 20 MB quick
# run in two runs; larder 13.2 and 13.3 MB).
#
# Knobs: PRUNE_MB (300), PRUNE_DAYS (40), PRUNE_TOOLS ("larder restic"),
# PRUNE_MUTATE_PCT (3), PRUNE_APPEND_PCT (1), PRUNE_SEED (42), PRUNE_START
# (2026-01-01, the day of the first snapshot), PRUNE_POLICY (the forget
# arguments, the same for both tools), PRUNE_KEEP_RUN=1 to keep the run
# directory with the repositories, LARDER_BIN, LARDER_BENCH_DIR (see
# benches/lib.sh).
# Output: markdown on stdout and in $LARDER_BENCH_DIR/results-prune-<timestamp>.md
# (and results-prune.md); progress on stderr.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export TZ=UTC
read -r -a TOOLS <<<"${PRUNE_TOOLS:-larder restic}"
PRUNE_MB=${PRUNE_MB:-300}
PRUNE_DAYS=${PRUNE_DAYS:-40}
PRUNE_MUTATE_PCT=${PRUNE_MUTATE_PCT:-3}
PRUNE_APPEND_PCT=${PRUNE_APPEND_PCT:-1}
PRUNE_SEED=${PRUNE_SEED:-42}
PRUNE_START=${PRUNE_START:-2026-01-01}
PRUNE_POLICY=${PRUNE_POLICY:---keep-daily 7 --keep-weekly 4 --keep-monthly 3}
PRUNE_KEEP_RUN=${PRUNE_KEEP_RUN:-0}
read -r -a POLICY <<<"$PRUNE_POLICY"
LARDER_INIT=(--kdf-memory 64 --kdf-passes 3)

need jq awk du cmp stat sha256sum python3 "$GNU_TIME"
((${#TOOLS[@]} > 0)) || die "PRUNE_TOOLS is empty"
for t in "${TOOLS[@]}"; do
    case $t in
    larder) need_larder ;;
    restic) need restic ;;
    *) die "unknown tool $t (known: larder restic)" ;;
    esac
done
[[ $PRUNE_MB =~ ^[0-9]+([.][0-9]+)?$ ]] || die "PRUNE_MB must be a number of MB"
if ! [[ $PRUNE_DAYS =~ ^[0-9]+$ ]] || ((PRUNE_DAYS < 2 || PRUNE_DAYS > 999)); then die "PRUNE_DAYS must be 2..999"; fi
date -u -d "$PRUNE_START" +%F >/dev/null 2>&1 || die "PRUNE_START '$PRUNE_START' is not a date"

# ---- input generator ---------------------------------------------------------------
# python3 - OUTDIR MB DAYS MUTATE_PCT APPEND_PCT SEED
# Writes dayNNN.sql for the days not yet recorded in OUTDIR/.days (the state
# is rebuilt from day 1 every time: it is all in memory).
GEN_PY=$(
    cat <<'PY'
import os, random, sys, time

out, mb, days = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
mut_pct, app_pct, seed = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
done_path = os.path.join(out, ".days")
have = int(open(done_path).read().strip() or 0) if os.path.exists(done_path) else 0

r = random.Random(seed)
def word(lo, hi):
    return "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(lo, hi)))
WORDS = [word(3, 10) for _ in range(3000)]
FIRST = [word(3, 8).capitalize() for _ in range(400)]
LAST = [word(4, 10).capitalize() for _ in range(800)]
CITIES = [r.choice(WORDS).capitalize() for _ in range(300)]
DOMAINS = ["example.com", "mail.test", "corp.invalid", "shop.example", "post.test"]
STATUS = ["new", "paid", "packed", "shipped", "delivered", "returned", "cancelled"]
EPOCH = 1577836800  # 2020-01-01

def ts(t):
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(t))

def row(r, i, day):
    f, l = r.choice(FIRST), r.choice(LAST)
    created = EPOCH + i * 37 + r.randrange(37)
    updated = created + r.randrange(86400 * 30) + day * 86400
    note = " ".join(r.choice(WORDS) for _ in range(r.randint(3, 14)))
    return ("INSERT INTO public.orders (id, customer, email, city, status, amount, items, token, "
            "created_at, updated_at, note) VALUES (%d, '%s %s', '%s.%s%d@%s', '%s', '%s', %d.%02d, "
            "%d, '%08x%08x', '%s', '%s', '%s');\n"
            % (i, f, l, f.lower(), l.lower(), r.randrange(100), r.choice(DOMAINS), r.choice(CITIES),
               r.choice(STATUS), r.randrange(5, 2000), r.randrange(100), r.randint(1, 12),
               r.getrandbits(32), r.getrandbits(32), ts(created), ts(updated), note))

HEAD = ("--\n-- PostgreSQL database dump (synthetic, benches/prune.sh)\n--\n\n"
        "SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n")
TAIL = "\n--\n-- PostgreSQL database dump complete\n--\n"

def write(day):
    if day <= have:
        return
    p = os.path.join(out, "day%03d.sql" % day)
    with open(p + ".part", "w") as fh:
        fh.write(HEAD)
        fh.writelines(rows)
        fh.write(TAIL)
    os.replace(p + ".part", p)
    with open(done_path + ".part", "w") as fh:
        fh.write("%d\n" % day)
    os.replace(done_path + ".part", done_path)
    print("day %d: %d rows, %d bytes" % (day, len(rows), os.path.getsize(p)), file=sys.stderr)

rg = random.Random(seed * 1000 + 1)
rows, size, target = [], 0, int(mb * 1e6)
while size < target:
    s = row(rg, len(rows) + 1, 0)
    rows.append(s)
    size += len(s)
write(1)
for day in range(2, days + 1):
    rg = random.Random(seed * 1000 + day)
    n = len(rows)
    todo = int(n * mut_pct / 100)
    while todo > 0:  # runs of consecutive rows rewritten in place
        run = min(todo, rg.randint(1, 200))
        start = rg.randrange(n - run + 1)
        for k in range(start, start + run):
            rows[k] = row(rg, k + 1, day)
        todo -= run
    for _ in range(max(1, int(n * app_pct / 100))):
        rows.append(row(rg, len(rows) + 1, day))
    write(day)
PY
)
gen_hash=$(printf '%s' "$GEN_PY" | sha256sum | cut -c1-8)
IN_DIR=$BENCH_DIR/inputs/prune-mb$PRUNE_MB-m$PRUNE_MUTATE_PCT-a$PRUNE_APPEND_PCT-s$PRUNE_SEED-g$gen_hash
day_file() { printf '%s/day%03d.sql' "$IN_DIR" "$1"; }
day_time() { date -u -d "$PRUNE_START + $(($1 - 1)) days" +%F; } # DAY -> YYYY-MM-DD

mkdir -p "$IN_DIR"
have=0
[[ -s $IN_DIR/.days ]] && have=$(tr -dc 0-9 <"$IN_DIR/.days")
have=${have:-0}
if ((have < PRUNE_DAYS)); then
    log "generating the dump series in $IN_DIR (days $((have + 1))..$PRUNE_DAYS of ${PRUNE_MB} MB + growth)"
    python3 - "$IN_DIR" "$PRUNE_MB" "$PRUNE_DAYS" "$PRUNE_MUTATE_PCT" "$PRUNE_APPEND_PCT" "$PRUNE_SEED" <<<"$GEN_PY" \
        || die "the input generator failed"
else
    log "inputs cached in $IN_DIR ($have days)"
fi
for ((d = 1; d <= PRUNE_DAYS; d++)); do [[ -f $(day_file "$d") ]] || die "input $(day_file "$d") is missing (remove $IN_DIR/.days to regenerate)"; done
NEWEST=$(day_file "$PRUNE_DAYS")
IN_TOTAL=0
for ((d = 1; d <= PRUNE_DAYS; d++)); do IN_TOTAL=$((IN_TOTAL + $(file_bytes "$(day_file "$d")"))); done

# ---- run directory ---------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
started=$(date +%s)
RUN_DIR=$(mktemp -d "$BENCH_DIR/prune-run.XXXXXX")
if ((PRUNE_KEEP_RUN)); then
    cleanup_push "log 'kept the run directory $RUN_DIR (PRUNE_KEEP_RUN=1)'"
else
    cleanup_push "rm -rf '$RUN_DIR'"
fi
BENCH_TMP=$RUN_DIR/tmp
mkdir -p "$BENCH_TMP"

# Freeze the larder binary: someone may rebuild target/ while this runs.
if [[ " ${TOOLS[*]} " == *" larder "* ]]; then
    mkdir -p "$RUN_DIR/bin"
    cp -p "$LARDER" "$RUN_DIR/bin/larder"
    LARDER=$RUN_DIR/bin/larder
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
MACHINE=$(machine_info)

# ---- per-tool operations ------------------------------------------------------------
# TOOL_OP REPO TAG [ARGS]: output to $BENCH_TMP/TAG.out, stderr to TAG.err,
# GNU time to TAG.time (see measure in lib.sh). larder_e / restic_e (lib.sh)
# put the cache in REPO.aux/cache.
larder_backup_day() { # REPO TAG FILE DATE
    larder_e "$1"
    # shellcheck disable=SC2002
    cat "$3" | measure "$2" "${LE[@]}" backup --source db --host bench --stdin --stdin-name db.sql \
        --time "${4}T03:00:00Z" --quiet --json >"$BENCH_TMP/$2.out"
}
restic_backup_day() {
    restic_e "$1"
    # shellcheck disable=SC2002
    cat "$3" | measure "$2" "${RE[@]}" backup --stdin --stdin-filename db.sql --host bench \
        --time "$4 03:00:00" --compression auto --json --quiet >"$BENCH_TMP/$2.out"
}
larder_count() { larder_e "$1"; "${LE[@]}" snapshots --json | jq length; }
restic_count() { restic_e "$1"; "${RE[@]}" snapshots --json | jq length; }
larder_forget() { larder_e "$1"; measure "$2" "${LE[@]}" forget "${POLICY[@]}" --utc --json >"$BENCH_TMP/$2.out"; }
restic_forget() { restic_e "$1"; measure "$2" "${RE[@]}" forget "${POLICY[@]}" --json >"$BENCH_TMP/$2.out"; }
larder_prune() { larder_e "$1"; measure "$2" "${LE[@]}" prune --json >"$BENCH_TMP/$2.out"; }
restic_prune() { restic_e "$1"; measure "$2" "${RE[@]}" prune >"$BENCH_TMP/$2.out"; }
larder_prune_dry() { larder_e "$1"; measure "$2" "${LE[@]}" prune --dry-run --max-unused 0 --json >"$BENCH_TMP/$2.out"; }
restic_prune_dry() { restic_e "$1"; measure "$2" "${RE[@]}" prune --dry-run --max-unused unlimited >"$BENCH_TMP/$2.out"; }
larder_cat_latest() { larder_e "$1"; measure "$2" "${LE[@]}" cat latest --source db --quiet >"$3"; }
restic_cat_latest() { restic_e "$1"; measure "$2" "${RE[@]}" dump --quiet latest /db.sql >"$3"; }
larder_check() { larder_e "$1"; measure "$2" "${LE[@]}" check --read-data --json >"$BENCH_TMP/$2.out"; }
restic_check() { restic_e "$1"; measure "$2" "${RE[@]}" check --read-data >"$BENCH_TMP/$2.out"; }

# restic's byte counts ("4.612 MiB") -> bytes
restic_bytes() {
    awk -v v="$1" -v u="$2" 'BEGIN { m = 1; if (u == "KiB") m = 1024; else if (u == "MiB") m = 1048576;
        else if (u == "GiB") m = 1073741824; else if (u == "TiB") m = 1099511627776; printf "%.0f\n", v * m }'
}
# unused bytes left after prune, from the tool's dry run ("-" if unknown).
# larder: with --max-unused 0 every pack not wholly live is planned for
# repacking, so bytes_rewritten is all live bytes and the rest of bytes_total
# is dead (pending packs would count too; after a finished prune there are none).
larder_unused() { jq -r 'if .bytes_total == null then "-" else .bytes_total - .bytes_rewritten end' "$BENCH_TMP/$1.out" 2>/dev/null || echo -; }
restic_unused() {
    local v u
    read -r v u < <(sed -n 's/^unused size after prune: *\([0-9.]*\) \([KMGT]*i*B\).*/\1 \2/p' "$BENCH_TMP/$1.out" | tail -n 1) || true
    if [[ -n ${v:-} ]]; then restic_bytes "$v" "$u"; else echo -; fi
}
# one line of what the tool says its prune did
larder_prune_note() {
    jq -r '"packs \(.packs_total) total, \(.packs_unused) unused (\(.bytes_unused) B), \(.packs_repacked) repacked (\(.bytes_repacked) B, \(.bytes_rewritten) B of live blobs rewritten), \(.packs_deleted) deleted, bytes_freed \(.bytes_freed), pending \(.pending_packs) packs / \(.pending_bytes) B, generations: \([.generations[]? | .status] | join(",")), waited \(.waited_s) s, duration_s \(.duration_s), requests \(.requests | tojson), warnings \(.warnings | length)"' \
        "$BENCH_TMP/$1.out" 2>/dev/null || echo "(no JSON summary)"
}
restic_prune_note() {
    grep -E '^(to repack|this removes|to delete|total prune|remaining|unused size after prune):' "$BENCH_TMP/$1.out" \
        | sed 's/  */ /g' | paste -sd ';' - | sed 's/;/; /g' || echo "(no summary)"
}
larder_version_line() { larder_version; }
restic_version_line() { restic_version; }

# ---- driver ------------------------------------------------------------------------------
ROWS=() CTX=() NOTES=() FAILS=()
failures=0
# try TAG FN ARGS...: run a measured step; "ok" or "FAIL (exit N)" in STATUS
try() {
    local tag=$1 rc=0
    shift
    "$@" || rc=$?
    if ((rc == 0)); then
        STATUS=ok
    else
        STATUS="**FAIL** (exit $rc)"
        failures=$((failures + 1))
        FAILS+=("$tag: exit $rc: $(tail -n 5 "$BENCH_TMP/$tag.err" 2>/dev/null | tr '\n' ' ' | sed 's/|/\\|/g' | cut -c1-400)")
    fi
}
tf() { if [[ -s $BENCH_TMP/$1.time ]]; then time_field "$1" "$2"; else echo -; fi; }
rss_or() { local k; k=$(tf "$1" rss); if [[ $k == - ]]; then echo -; else rss_mib "$k"; fi; }
files_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d\n", s }'; }
mb_or() { if [[ $1 == - || -z $1 ]]; then echo -; else mb "$1"; fi; }

for tool in "${TOOLS[@]}"; do
    repo=$RUN_DIR/$tool/repo
    mkdir -p "$(dirname "$repo")"
    log "== $tool: init"
    if [[ $tool == larder ]]; then
        larder_init "$repo" "${LARDER_INIT[@]}"
    else
        restic_init "$repo"
    fi

    bwall=0 bcpu=0 brss=0
    for ((d = 1; d <= PRUNE_DAYS; d++)); do
        tag=$tool-backup-$d
        "${tool}_backup_day" "$repo" "$tag" "$(day_file "$d")" "$(day_time "$d")" \
            || die "$tool backup of day $d failed (stderr in $BENCH_TMP/$tag.err)"
        read -r bwall bcpu brss < <(awk -v w="$bwall" -v c="$bcpu" -v r="$brss" \
            -v w1="$(time_field "$tag" wall)" -v c1="$(time_field "$tag" cpu)" -v r1="$(time_field "$tag" rss)" \
            'BEGIN { printf "%.2f %.2f %d\n", w + w1, c + c1, (r1 > r ? r1 : r) }')
        ((d % 10 == 0 || d == PRUNE_DAYS)) && log "$tool: backed up $d/$PRUNE_DAYS days (${bwall}s wall so far), repo $(mb "$(du_bytes "$repo")") MB"
    done
    r_backup=$(du_bytes "$repo")
    n_before=$("${tool}_count" "$repo")

    log "$tool: forget ${POLICY[*]}"
    try "$tool-forget" "${tool}_forget" "$repo" "$tool-forget"
    forget_status=$STATUS
    n_after=$("${tool}_count" "$repo")
    r_before=$(du_bytes "$repo")

    log "$tool: prune"
    try "$tool-prune" "${tool}_prune" "$repo" "$tool-prune"
    prune_status=$STATUS
    r_after=$(du_bytes "$repo")
    f_after=$(files_bytes "$repo")
    NOTES+=("$tool prune: $("${tool}_prune_note" "$tool-prune")")
    if [[ $tool == larder && $prune_status == ok ]]; then
        w=$(jq -r '(.warnings // []) | length' "$BENCH_TMP/$tool-prune.out" 2>/dev/null || echo 0)
        [[ $w != 0 ]] && NOTES+=("larder prune warnings: $(jq -c '.warnings' "$BENCH_TMP/$tool-prune.out" | head -c 500)")
        p=$(jq -r '.pending_packs - .packs_deleted' "$BENCH_TMP/$tool-prune.out" 2>/dev/null || echo 0)
        [[ $p != 0 ]] && NOTES+=("larder prune left $p pending pack(s) undeleted (phase two deferred)")
    fi
    odd=$(grep -v '^{' "$BENCH_TMP/$tool-prune.err" 2>/dev/null | grep -v '^[[:space:]]*$' | head -n 5 | tr '\n' ' ' || true)
    [[ $tool == larder && -n $odd ]] && NOTES+=("larder prune stderr: $odd")

    log "$tool: prune --dry-run (what is left unused)"
    try "$tool-prune-dry" "${tool}_prune_dry" "$repo" "$tool-prune-dry"
    unused_left=-
    [[ $STATUS == ok ]] && unused_left=$("${tool}_unused" "$tool-prune-dry")
    r_dry=$(du_bytes "$repo")
    ((r_dry == r_after)) || NOTES+=("$tool: the dry run changed the repository size ($r_after -> $r_dry bytes)")

    log "$tool: restore the newest snapshot"
    out=$RUN_DIR/$tool/newest.sql
    try "$tool-restore" "${tool}_cat_latest" "$repo" "$tool-restore" "$out"
    restore_status=$STATUS
    if [[ $restore_status == ok ]]; then
        if cmp -s "$out" "$NEWEST"; then
            restore_status=ok
        else
            restore_status="**differs**"
            failures=$((failures + 1))
            FAILS+=("$tool restore: differs from $NEWEST: $(cmp "$out" "$NEWEST" 2>&1 | head -n 1)")
        fi
    fi
    rm -f "$out"

    log "$tool: check --read-data"
    try "$tool-check" "${tool}_check" "$repo" "$tool-check"
    check_status=$STATUS
    if [[ $tool == larder && $check_status == ok ]]; then
        probs=$(jq -r '(.problems // []) | length' "$BENCH_TMP/$tool-check.out" 2>/dev/null || echo '?')
        if [[ $probs != 0 ]]; then
            check_status="**$probs problem(s)**"
            failures=$((failures + 1))
            FAILS+=("larder check: $(jq -c '.problems' "$BENCH_TMP/$tool-check.out" | head -c 500)")
        fi
    fi
    r_final=$(du_bytes "$repo")

    fwall=$(tf "$tool-forget" wall)
    [[ $forget_status == ok ]] || fwall="$fwall $forget_status"
    pwall=$(tf "$tool-prune" wall)
    [[ $prune_status == ok ]] || pwall="$pwall $prune_status"
    ROWS+=("| $tool | $n_before / $n_after | $(mb "$r_before") / $(mb "$r_after") | $fwall | $pwall | $(tf "$tool-prune" cpu) | $(rss_or "$tool-prune") | $restore_status | $check_status |")
    freed=$((r_before - r_after))
    CTX+=("| $tool | $(mb "$IN_TOTAL") | $bwall | $bcpu | $(rss_mib "$brss") | $(mb "$r_backup") | $(mb "$f_after") | $(mb "$freed") | $(pct "$freed" "$r_before") | $(mb_or "$unused_left") | $(if [[ $unused_left == - ]]; then echo -; else pct "$unused_left" "$f_after"; fi) | $(tf "$tool-restore" wall) | $(tf "$tool-check" wall) | $(rss_or "$tool-check") |")
    [[ $r_final == "$r_after" ]] || NOTES+=("$tool: the repository changed size after prune ($r_after -> $r_final bytes) during dry run/restore/check")
    if [[ $tool == larder ]]; then
        larder_e "$repo"
        st=$("${LE[@]}" stats --json 2>/dev/null | jq -r '"stats total_bytes \(.total_bytes), \(.snapshots) snapshots, dedup \(.dedup_ratio), compression \(.compression_ratio)"' || echo "stats failed")
        NOTES+=("larder after prune: du $r_after B; $st; prune duration_s vs GNU time wall: $(jq -r '.duration_s' "$BENCH_TMP/$tool-prune.out" 2>/dev/null || echo -) vs $(tf "$tool-prune" wall) (the difference is startup: Argon2id key derivation, 64 MiB x 3)")
    fi
    log "$tool: snapshots $n_before -> $n_after, repo $(mb "$r_before") -> $(mb "$r_after") MB, prune $(tf "$tool-prune" wall)s wall, $(tf "$tool-prune" cpu)s cpu, $(rss_or "$tool-prune") MiB; restore $restore_status, check $check_status"
    ((PRUNE_KEEP_RUN)) || rm -rf "$repo" "$repo.aux"
done

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))
first_day=$(day_time 1)
last_day=$(day_time "$PRUNE_DAYS")

report() {
    echo "# larder prune vs restic prune: $PRUNE_DAYS daily dumps, one retention policy"
    echo
    echo "$MACHINE"
    echo "- load (1, 5, 15 min) before measuring: $load_start; at the end: $load_end"
    echo "- script: benches/prune.sh, total run time ${elapsed}s (input generation not included)"
    for t in "${TOOLS[@]}"; do echo "- $("${t}_version_line")"; done
    echo "- input: synthetic pg_dump --inserts style orders table, day 1 $(mb "$(file_bytes "$(day_file 1)")") MB, day $PRUNE_DAYS $(mb "$(file_bytes "$NEWEST")") MB, $(mb "$IN_TOTAL") MB in all; each day rewrites $PRUNE_MUTATE_PCT % of the rows (runs of 1-200 rows) and appends $PRUNE_APPEND_PCT % (seed $PRUNE_SEED; $IN_DIR)"
    echo "- snapshots: one per day at 03:00 UTC, $first_day .. $last_day, streamed from a pipe; policy: forget ${POLICY[*]} (larder also --utc; TZ=UTC for both)"
    echo "- prune defaults: larder repacks packs more than 10 % unused (per pack); restic --max-unused 5% (at most 5 % of the repository left unused)"
    echo "- larder init ${LARDER_INIT[*]} (Argon2id on every command; stream chunker 4K:16K:64K, zstd 1, 16 MiB packs); restic repo v2, --compression auto, default chunker (~1 MiB chunks)"
    echo
    echo "MB = 10^6 bytes; repository sizes are du -sb (caches excluded), 'before' is after forget. Wall, CPU (user+sys)"
    echo "and peak RSS are GNU time's for the tool's process; larder's include its Argon2id key derivation at startup."
    echo "Each repository has its own random chunker secret, so sizes vary somewhat between runs. 'restore ok': the newest snapshot (larder cat latest,"
    echo "restic dump latest) equals the newest input (cmp); 'check ok': check --read-data after prune exited 0."
    echo
    echo "| tool | snapshots before / after | repo MB before / after prune | forget wall s | prune wall s | prune CPU s | prune peak RSS MiB | restore ok | check ok |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Context: the $PRUNE_DAYS backups (sum of wall and CPU, largest peak RSS); the repository's file bytes after"
    echo "prune (du -sb also counts ~1 MB of directory entries); what prune freed (du); what is left unused after"
    echo "prune (a dry run: larder --max-unused 0, pack bytes that are not live blobs, pack headers included;"
    echo "restic --max-unused unlimited, its 'unused size after prune'); restore and check times."
    echo
    echo "| tool | input MB | backups wall s | backups CPU s | backup peak RSS MiB | repo MB after backups | repo file MB after prune | freed MB | freed % | unused left MB | unused left % | restore wall s | check wall s | check peak RSS MiB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${CTX[@]}"
    md_list "What the tools reported:" "${NOTES[@]}"
    if ((failures > 0)); then
        md_list "**$failures failure(s):**" "${FAILS[@]}"
    fi
}

stamp=$(date +%Y%m%dT%H%M%S)
report | tee "$BENCH_DIR/results-prune-$stamp.md"
cp "$BENCH_DIR/results-prune-$stamp.md" "$BENCH_DIR/results-prune.md"
log "results in $BENCH_DIR/results-prune-$stamp.md"
((failures == 0)) || die "$failures step(s) failed"
