#!/usr/bin/env bash
# Day-over-day storage of compressed dumps, `pg_dump | gzip` and
# `pg_dump -Fc` (zlib inside the archive, pg_dump's default): larder
# unpacking them (the default), larder storing them as they come
# (--no-unpack), and restic when installed, side by side in one run.
#
# Usage: benches/gzip.sh   (from anywhere; run as root)
#
# Input: the pgbench pair of benches/lib.sh (PGBENCH_SCALE default 30 here,
# PGBENCH_TX default 2000, and distinct account fillers: pgbench's blank
# ones make gzip's output repeat itself, which no real table does; set
# PGBENCH_FILLER= for those), each day gzipped with `gzip -6` (cached next to
# the plain dumps), and the same two days dumped with `pg_dump -Fc`. Every
# mode gets a fresh repository; day 1 and day 2 are backed up from stdin,
# day 2 is streamed back out with `cat` and compared with the original
# byte for byte. The plain dumps are backed up too, as
# the reference for what deduplication can achieve on this data.
# Output: a markdown table on stdout and in $LARDER_BENCH_DIR/results-gzip.md.
set -euo pipefail
export PGBENCH_SCALE=${PGBENCH_SCALE:-30} PGBENCH_TX=${PGBENCH_TX:-2000} BENCH_INPUTS=pgbench
export PGBENCH_FILLER=${PGBENCH_FILLER-md5}
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_larder
need jq gzip cmp "$GNU_TIME"
mkdir -p "$BENCH_DIR"
RUN_DIR=$(mktemp -d "$BENCH_DIR/gzip-run.XXXXXX")
cleanup_push "rm -rf '$RUN_DIR'"
BENCH_TMP=$RUN_DIR/tmp
mkdir -p "$BENCH_TMP"
cp -p "$LARDER" "$RUN_DIR/larder-bin"
LARDER=$RUN_DIR/larder-bin

ensure_inputs
for d in day1 day2; do
    [[ -f $PGB_DIR/$d.sql.gz ]] || gzip -6 -c "$PGB_DIR/$d.sql" >"$PGB_DIR/$d.sql.gz"
done
MACHINE=$(machine_info)

# mode_backup MODE REPO FILE TAG: larder modes accept exit 3 (warnings).
mode_backup() {
    local extra=()
    [[ $1 == larder-raw ]] && extra=(--no-unpack)
    case $1 in
    larder*)
        larder_e "$2"
        local rc=0
        "$GNU_TIME" -f '%e %U %S %M' -o "$BENCH_TMP/$4.time" -- "${LE[@]}" backup --source db \
            --stdin --stdin-name dump.sql.gz --quiet --json "${extra[@]}" <"$3" \
            >"$BENCH_TMP/$4.out" 2>"$BENCH_TMP/$4.err" || rc=$?
        ((rc == 0 || rc == 3)) || { cat "$BENCH_TMP/$4.err" >&2; die "$1 backup failed ($rc)"; }
        ;;
    restic) restic_backup "$2" "$3" "$4" ;;
    esac
}
mode_cat() {
    case $1 in
    larder*) larder_cat "$2" "$3" "$4" ;;
    restic) restic_cat "$2" "$3" "$4" "$5" ;;
    esac
}

MODES=(larder larder-raw)
command -v restic >/dev/null 2>&1 && MODES+=(restic)
ROWS=()
for input in gz fc; do
    for mode in "${MODES[@]}" plain; do
        [[ $input == fc && $mode == plain ]] && continue
        repo=$RUN_DIR/$input-$mode/repo
        mkdir -p "$(dirname "$repo")"
        log "== $input $mode"
        if [[ $mode == plain ]]; then
            larder_init "$repo"
            f1=$PGB_DIR/day1.sql f2=$PGB_DIR/day2.sql
            r0=$(du_bytes "$repo")
            larder_backup "$repo" "$f1" plain-d1
            r1=$(du_bytes "$repo")
            larder_backup "$repo" "$f2" plain-d2
            r2=$(du_bytes "$repo")
            ROWS+=("| plain SQL | larder (reference) | $(mb "$(file_bytes "$f2")") | $(mb $((r1 - r0))) | $(mb $((r2 - r1))) | $(pct $((r2 - r1)) $((r1 - r0))) | $(time_field plain-d2 wall) | $(rss_mib "$(time_field plain-d2 rss)") | - | - |")
            continue
        fi
        case $mode in larder*) larder_init "$repo" ;; restic) restic_init "$repo" ;; esac
        if [[ $input == gz ]]; then
            f1=$PGB_DIR/day1.sql.gz f2=$PGB_DIR/day2.sql.gz label="pg_dump \\| gzip -6"
        else
            f1=$PGB_DIR/day1.dump f2=$PGB_DIR/day2.dump label="pg_dump -Fc"
        fi
        tag=$input-$mode
        r0=$(du_bytes "$repo")
        mode_backup "$mode" "$repo" "$f1" "$tag-d1"
        r1=$(du_bytes "$repo")
        mode_backup "$mode" "$repo" "$f2" "$tag-d2"
        r2=$(du_bytes "$repo")
        out=$RUN_DIR/$tag/day2.out
        mode_cat "$mode" "$repo" "$out" "$tag-cat" "$tag-d2"
        v=FAIL
        cmp -s "$out" "$f2" && v=exact
        rm -f "$out"
        ROWS+=("| $label | $mode | $(mb "$(file_bytes "$f2")") | $(mb $((r1 - r0))) | $(mb $((r2 - r1))) | $(pct $((r2 - r1)) $((r1 - r0))) | $(time_field "$tag-d2" wall) | $(rss_mib "$(time_field "$tag-d2" rss)") | $(time_field "$tag-cat" wall) | $v |")
    done
done

{
    echo "Machine: $MACHINE"
    echo "Input: pgbench scale $PGBENCH_SCALE${PGBENCH_FILLER:+ (fillers: $PGBENCH_FILLER)}, $PGBENCH_TX transactions between the days, pg_dump -Fp | gzip -6 and pg_dump -Fc; larder $("$LARDER" --version | cut -d' ' -f2)"
    echo
    echo "| input | mode | day-2 input MB | day 1 stored MB | day 2 stored MB | day 2 / day 1 % | day-2 backup s | RSS MiB | cat day 2 s | cat |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
} | tee "$BENCH_DIR/results-gzip.md"
