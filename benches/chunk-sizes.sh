#!/usr/bin/env bash
# The data behind larder's default chunk-size profile for dump streams.
#
# Usage: benches/chunk-sizes.sh      (from anywhere; run as root)
#
# Uses the same cached day-1/day-2 dump pairs as benches/peers.sh (pgbench
# scattered updates, and an append-mostly table; see benches/lib.sh). For
# each candidate average chunk size AVG it runs
#   larder init --chunker stream=AVG/4:AVG:AVG*4
#   larder backup --stdin < day1.sql; larder backup --stdin < day2.sql
# in a fresh repository and reports stored bytes after day 1, bytes added by
# day 2 (larder's bytes_added and du growth), the number of blobs, wall
# times and peak RSS. restic (its own CDC, ~1 MiB average, compression auto)
# is run the same way as a reference.
#
# Knobs: CHUNK_AVGS (default "4K 8K 16K 32K 64K 128K 256K 512K 1M"), CHUNK_RESTIC=0
# to skip restic, CHUNK_VERIFY=0 not to cat day 2 back and cmp it (first
# repetition only), CHUNK_REPEAT (default 3: every profile in that many fresh
# repositories, i.e. chunker seeds, since boundaries on low-entropy dumps
# depend on the seed),
# LARDER_BIN, LARDER_BENCH_DIR, and the input knobs in benches/lib.sh.
# Output: markdown on stdout and in
# $LARDER_BENCH_DIR/results-chunk-sizes-<timestamp>.md (and results-chunk-sizes.md).
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AVGS=(${CHUNK_AVGS:-4K 8K 16K 32K 64K 128K 256K 512K 1M})
CHUNK_RESTIC=${CHUNK_RESTIC:-1}
CHUNK_VERIFY=${CHUNK_VERIFY:-1}
CHUNK_REPEAT=${CHUNK_REPEAT:-3}
DEFAULT_STREAM_AVG=16K # larder's built-in stream profile is 4K:16K:64K

need jq awk du cmp stat "$GNU_TIME"
need_larder
((CHUNK_RESTIC)) && need restic

# to_bytes 16K -> 16384
to_bytes() {
    local s=$1 n u
    n=${s%%[KkMm]*}
    u=${s#"$n"}
    case ${u^^} in
    "") echo "$n" ;;
    K) echo $((n * 1024)) ;;
    M) echo $((n * 1024 * 1024)) ;;
    *) die "bad size $s" ;;
    esac
}
# to_spec 16384 -> 16K
to_spec() {
    local b=$1
    if ((b % (1024 * 1024) == 0)); then echo "$((b / 1024 / 1024))M"
    elif ((b % 1024 == 0)); then echo "$((b / 1024))K"
    else echo "$b"; fi
}

mkdir -p "$BENCH_DIR"
started=$(date +%s)
RUN_DIR=$(mktemp -d "$BENCH_DIR/chunk-run.XXXXXX")
cleanup_push "rm -rf '$RUN_DIR'"
BENCH_TMP=$RUN_DIR/tmp
mkdir -p "$BENCH_TMP"
cp -p "$LARDER" "$RUN_DIR/larder" # freeze: target/ may be rebuilt meanwhile
LARDER=$RUN_DIR/larder

ensure_inputs
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
MACHINE=$(machine_info)

# One line per run in $BENCH_TMP/<input>-<profile>.runs:
# stored1 added2 repo_after_day2 blobs1 blobs2_new blobs2_reused wall1 wall2 rss_kib mean_chunk_kib
# For restic, stored1/added2 are du growth (its data_added is before compression).
record() { # FILE TAG1 TAG2 STORED1 ADDED2 REPO2 BN1 BN2 BR2 S1
    local rss rss2
    rss=$(time_field "$2" rss)
    rss2=$(time_field "$3" rss)
    ((rss2 > rss)) && rss=$rss2
    printf '%s %s %s %s %s %s %s %s %s %s\n' "$4" "$5" "$6" "$7" "$8" "$9" \
        "$(time_field "$2" wall)" "$(time_field "$3" wall)" "$rss" \
        "$(awk -v b="${10}" -v n="$7" 'BEGIN { printf "%.1f", (n > 0 ? b / n / 1024 : 0) }')" >>"$1"
}
# aggregate FILE INPUT NAME S2 VERIFIED -> one markdown row (means over runs;
# ranges min..max where seeds make a difference)
aggregate() {
    awk -v input="$2" -v name="$3" -v s2="$4" -v verified="$5" '
    function mb(x) { return sprintf("%.1f", x / 1e6) }
    function range(lo, hi, fmt) { return sprintf(fmt, lo) ".." sprintf(fmt, hi) }
    {
        n++
        for (i = 1; i <= 10; i++) sum[i] += $i
        p = $1 > 0 ? 100 * $2 / $1 : 0
        psum += p
        if (n == 1 || p < pmin) pmin = p
        if (n == 1 || p > pmax) pmax = p
        if (n == 1 || $10 < cmin) cmin = $10
        if (n == 1 || $10 > cmax) cmax = $10
        if (n == 1 || $2 < amin) amin = $2
        if (n == 1 || $2 > amax) amax = $2
        if ($9 > rss) rss = $9
    }
    END {
        w2 = sum[8] / n
        printf "| %s | %s | %d | %s | %s (%s) | %.1f (%s) | %s | %.0f | %.0f / %s | %.0f | %.1f (%s) | %.2f | %.2f | %.1f | %.0f | %s |\n",
            input, name, n, mb(sum[1] / n), mb(sum[2] / n), range(amin / 1e6, amax / 1e6, "%.1f"),
            psum / n, range(pmin, pmax, "%.1f"), mb(sum[3] / n),
            sum[4] / n, sum[5] / n, (sum[6] == 0 && $6 == "-") ? "-" : sprintf("%.0f", sum[6] / n),
            (sum[4] + sum[5]) / n, sum[10] / n, range(cmin, cmax, "%.0f"),
            sum[7] / n, w2, s2 / 1e6 / (w2 > 0 ? w2 : 0.005), rss / 1024, verified
    }' "$1"
}

ROWS=()
failures=0
for input in "${INPUT_NAMES[@]}"; do
    dir=$(input_dir "$input")
    d1=$dir/day1.sql d2=$dir/day2.sql
    s1=$(file_bytes "$d1") s2=$(file_bytes "$d2")
    for avg in "${AVGS[@]}"; do
        a=$(to_bytes "$avg")
        spec="stream=$(to_spec $((a / 4))):$(to_spec "$a"):$(to_spec $((a * 4)))"
        runs=$BENCH_TMP/$input-$avg.runs
        verified=-
        for ((rep = 1; rep <= CHUNK_REPEAT; rep++)); do
            repo=$RUN_DIR/larder-$input-$avg-$rep/repo
            mkdir -p "$(dirname "$repo")"
            larder_init "$repo" --chunker "$spec" # fresh repository: fresh chunker seed
            t1=$input-$avg-$rep-d1 t2=$input-$avg-$rep-d2
            larder_backup "$repo" "$d1" "$t1"
            larder_backup "$repo" "$d2" "$t2"
            o1=$BENCH_TMP/$t1.out o2=$BENCH_TMP/$t2.out
            record "$runs" "$t1" "$t2" "$(jq -r .bytes_added "$o1")" "$(jq -r .bytes_added "$o2")" \
                "$(du_bytes "$repo")" "$(jq -r .blobs_new "$o1")" "$(jq -r .blobs_new "$o2")" \
                "$(jq -r .blobs_reused "$o2")" "$s1"
            if ((CHUNK_VERIFY && rep == 1)); then
                larder_cat "$repo" "$RUN_DIR/out.sql" "$input-$avg-cat"
                if cmp -s "$RUN_DIR/out.sql" "$d2"; then verified=ok; else verified=FAIL; failures=$((failures + 1)); fi
                rm -f "$RUN_DIR/out.sql"
            fi
            rm -rf "$repo" "$repo.aux"
        done
        name="larder ${spec#stream=}"
        [[ $avg == "$DEFAULT_STREAM_AVG" ]] && name="$name (default)"
        ROWS+=("$(aggregate "$runs" "$input" "$name" "$s2" "$verified")")
        log "$input $spec: ${ROWS[-1]}"
    done
    if ((CHUNK_RESTIC)); then
        runs=$BENCH_TMP/$input-restic.runs
        sum() { jq -r "select(.message_type==\"summary\") | .$2" "$BENCH_TMP/$1.out"; }
        for ((rep = 1; rep <= CHUNK_REPEAT; rep++)); do
            repo=$RUN_DIR/restic-$input-$rep/repo
            mkdir -p "$(dirname "$repo")"
            restic_init "$repo" # fresh repository: fresh chunker polynomial
            r0=$(du_bytes "$repo")
            t1=$input-restic-$rep-d1 t2=$input-restic-$rep-d2
            restic_backup "$repo" "$d1" "$t1"
            r1=$(du_bytes "$repo")
            restic_backup "$repo" "$d2" "$t2"
            r2=$(du_bytes "$repo")
            record "$runs" "$t1" "$t2" $((r1 - r0)) $((r2 - r1)) "$r2" "$(sum "$t1" data_blobs)" \
                "$(sum "$t2" data_blobs)" - "$s1"
            rm -rf "$repo" "$repo.aux"
        done
        ROWS+=("$(aggregate "$runs" "$input" "restic 0.14 (reference: 512K:1M:8M, compression auto; du growth)" "$s2" -)")
        log "$input restic: ${ROWS[-1]}"
    fi
done

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))

report() {
    echo "# larder stream chunk sizes on pg_dump day-over-day pairs"
    echo
    echo "$MACHINE"
    echo "- load (1, 5, 15 min) before measuring: $load_start; at the end: $load_end"
    echo "- script: benches/chunk-sizes.sh, total run time ${elapsed}s"
    echo "- $(larder_version); $( ((CHUNK_RESTIC)) && restic_version)"
    [[ " ${INPUT_NAMES[*]} " == *" pgbench "* ]] && echo "- pgbench: scale $PGBENCH_SCALE, day 1 $(mb "$(file_bytes "$PGB_DIR/day1.sql")") MB, day 2 after pgbench -c $PGBENCH_CLIENTS -t $PGBENCH_TX"
    [[ " ${INPUT_NAMES[*]} " == *" append "* ]] && echo "- append: $APPEND_ROWS rows (md5 text + 48 random bytes), day 1 $(mb "$(file_bytes "$APP_DIR/day1.sql")") MB, day 2 +$APPEND_PCT % rows"
    echo "- every profile: min = avg/4, max = avg*4; zstd 1; 16 MiB packs; default KDF"
    echo
    echo "MB = 10^6 bytes. Every row is the mean over 'runs' fresh repositories (each has its own random"
    echo "chunker seed); ranges are min..max over those runs. 'day 1 stored' and 'day 2 added' are larder's"
    echo "bytes_added (compressed, encrypted blobs plus pack headers, index and snapshot; equal to du growth"
    echo "within 0.1 MB); for restic they are du -sb growth. 'repo' is du -sb after day 2."
    echo "Blobs: new on day 1; new / reused on day 2; total stored. Mean chunk = day-1 size / day-1 new blobs."
    echo "Wall times include opening the repository (Argon2id, 64 MiB x 3). Peak RSS is the largest of all backups."
    echo
    echo "| input | profile min:avg:max | runs | day 1 stored MB | day 2 added MB (range) | day 2 added % of day 1 (range) | repo after day 2 MB | blobs day 1 | blobs day 2 new / reused | blobs total | mean chunk KiB (range) | day 1 wall s | day 2 wall s | day 2 MB/s | peak RSS MiB | cat verified |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    printf '%s\n' "${ROWS[@]}"
    if ((failures > 0)); then
        echo
        echo "**$failures verification(s) FAILED**"
    fi
}

stamp=$(date +%Y%m%dT%H%M%S)
report | tee "$BENCH_DIR/results-chunk-sizes-$stamp.md"
cp "$BENCH_DIR/results-chunk-sizes-$stamp.md" "$BENCH_DIR/results-chunk-sizes.md"
log "results in $BENCH_DIR/results-chunk-sizes-$stamp.md"
((failures == 0)) || die "$failures verification(s) failed"
