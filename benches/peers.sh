#!/usr/bin/env bash
# End-to-end comparison of larder, restic and bupstash on real dump streams.
#
# Usage: benches/peers.sh            (from anywhere; run as root)
#
# Inputs (generated once with a throwaway PostgreSQL cluster, then cached in
# $LARDER_BENCH_DIR/inputs, default /tmp/larder-peers/inputs):
#   pgbench  pg_dump -Fp of a pgbench database (scale $PGBENCH_SCALE, default
#            20) as day 1; day 2 after `pgbench -t $PGBENCH_TX` (default 4000)
#            scattered TPC-B updates.
#   append   pg_dump -Fp of a table of md5 text + random bytea rows
#            ($APPEND_ROWS, default 1e6); day 2 = day 1 + $APPEND_PCT % rows.
# For every tool x input: a fresh encrypted repository, day 1 and day 2
# backed up from stdin, day 2 restored (and streamed out) and compared with
# cmp. Each step is measured with GNU time (wall, user+sys, peak RSS) and
# `du -sb` of the repository.
#
# Every tool's sequence runs PEERS_RUNS times (default 3), the tools taking
# turns within each run, and each row reports the median wall and CPU time
# over the runs (peak RSS: the largest): wall times on a small virtual
# machine swing by more than the differences measured.
#
# Other knobs: PEERS_TOOLS="larder restic bupstash", PEERS_RUNS, LARDER_BIN,
# PG_PORT (default 55500), and those listed in benches/lib.sh.
# Output: a markdown table on stdout and in
# $LARDER_BENCH_DIR/results-peers-<timestamp>.md (and results-peers.md).
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOOLS=(${PEERS_TOOLS:-larder restic bupstash})
RUNS=${PEERS_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "PEERS_RUNS must be a positive whole number, not '$RUNS'"

need jq awk du cmp stat "$GNU_TIME"
for t in "${TOOLS[@]}"; do
    case $t in
    larder) need_larder ;;
    restic) need restic ;;
    bupstash) command -v bupstash >/dev/null 2>&1 \
        || die "bupstash is not on PATH: install it with 'cargo install bupstash --locked' (or set PEERS_TOOLS)" ;;
    *) die "unknown tool $t (known: larder restic bupstash)" ;;
    esac
done

mkdir -p "$BENCH_DIR"
started=$(date +%s)
RUN_DIR=$(mktemp -d "$BENCH_DIR/peers-run.XXXXXX")
cleanup_push "rm -rf '$RUN_DIR'"
BENCH_TMP=$RUN_DIR/tmp
mkdir -p "$BENCH_TMP"

# Freeze the larder binary: someone may rebuild target/ while this runs.
if [[ " ${TOOLS[*]} " == *" larder "* ]]; then
    cp -p "$LARDER" "$RUN_DIR/larder"
    LARDER=$RUN_DIR/larder
fi

ensure_inputs
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
MACHINE=$(machine_info)

ROWS=()   # markdown rows of the step table
SUMMARY=() # markdown rows of the per-repository summary

# over_runs TAG FIELD: the median of FIELD (wall, cpu) over the runs'
# TAG-r1..TAG-rN, or the largest for rss.
over_runs() {
    local run
    for run in $(seq "$RUNS"); do time_field "$1-r$run" "$2"; done | sort -g | awk -v k="$2" '
        { v[NR] = $1 }
        END {
            if (k == "rss") { print v[NR]; exit }
            if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (k == "wall") printf "%.3f\n", m; else printf "%.2f\n", m
        }'
}

# row TOOL INPUT STEP INPUT_BYTES TAG REPO_BYTES ADDED_DU ADDED_TOOL VERIFIED
# (TAG without its run suffix: times are over all runs, sizes the last run's)
row() {
    local wall cpu rss
    wall=$(over_runs "$5" wall)
    cpu=$(over_runs "$5" cpu)
    rss=$(over_runs "$5" rss)
    local added_du=- added_tool=-
    [[ $7 != - ]] && added_du=$(mb "$7")
    [[ $8 != - && $8 != null && -n $8 ]] && added_tool=$(mb "$8")
    ROWS+=("| $1 | $2 | $3 | $(mb "$4") | $wall | $cpu | $(rss_mib "$rss") | $(mb "$6") | $added_du | $added_tool | $(mbps "$4" "$wall") | $9 |")
    log "$1 $2 $3: ${wall}s wall, ${cpu}s cpu, $(rss_mib "$rss") MiB rss, repo $(mb "$6") MB"
}

# verify TOOL INPUT STEP FILE EXPECTED
verify() {
    if cmp -s "$4" "$5"; then
        echo ok
    else
        echo "error: $1 $2 $3: output differs from $5: $(cmp "$4" "$5" 2>&1 | head -n 1)" >&2
        echo FAIL
    fi
}

# Sizes and verdicts of each tool's last run, by tool and step.
declare -A R0 R1 R2 A1 A2 RESTORED VERDICT
failures=0
for input in "${INPUT_NAMES[@]}"; do
    dir=$(input_dir "$input")
    d1=$dir/day1.sql d2=$dir/day2.sql
    s1=$(file_bytes "$d1") s2=$(file_bytes "$d2")
    for run in $(seq "$RUNS"); do
        for tool in "${TOOLS[@]}"; do
            t=$tool-$input
            repo=$RUN_DIR/$t/repo
            mkdir -p "$(dirname "$repo")"
            log "== $tool / $input (run $run of $RUNS)"
            "${tool}_init" "$repo"
            R0[$t]=$(du_bytes "$repo")

            "${tool}_backup" "$repo" "$d1" "$t-d1-r$run"
            R1[$t]=$(du_bytes "$repo")
            A1[$t]=-
            declare -F "${tool}_added" >/dev/null && A1[$t]=$("${tool}_added" "$t-d1-r$run")

            "${tool}_backup" "$repo" "$d2" "$t-d2-r$run"
            R2[$t]=$(du_bytes "$repo")
            A2[$t]=-
            declare -F "${tool}_added" >/dev/null && A2[$t]=$("${tool}_added" "$t-d2-r$run")

            out=$RUN_DIR/$t/restored.sql
            if declare -F "${tool}_restore" >/dev/null; then
                "${tool}_restore" "$repo" "$out" "$t-restore-r$run"
                v=$(verify "$tool" "$input" restore "$out" "$d2")
                [[ $v == ok ]] || failures=$((failures + 1))
                [[ ${VERDICT[$t-restore]:-ok} == ok ]] && VERDICT[$t-restore]=$v
                rm -f "$out"
            fi
            "${tool}_cat" "$repo" "$out" "$t-cat-r$run" "$t-d2-r$run"
            v=$(verify "$tool" "$input" cat "$out" "$d2")
            [[ $v == ok ]] || failures=$((failures + 1))
            [[ ${VERDICT[$t-cat]:-ok} == ok ]] && VERDICT[$t-cat]=$v
            rm -f "$out"
            RESTORED[$t]=$(du_bytes "$repo")
            rm -rf "$repo" "$repo.aux"
        done
    done
    for tool in "${TOOLS[@]}"; do
        t=$tool-$input
        r0=${R0[$t]} r1=${R1[$t]} r2=${R2[$t]}
        row "$tool" "$input" "backup day 1" "$s1" "$t-d1" "$r1" $((r1 - r0)) "${A1[$t]}" -
        row "$tool" "$input" "backup day 2" "$s2" "$t-d2" "$r2" $((r2 - r1)) "${A2[$t]}" -
        if declare -F "${tool}_restore" >/dev/null; then
            row "$tool" "$input" "restore day 2" "$s2" "$t-restore" "${RESTORED[$t]}" - - "${VERDICT[$t-restore]}"
        fi
        row "$tool" "$input" "cat day 2" "$s2" "$t-cat" "${RESTORED[$t]}" - - "${VERDICT[$t-cat]}"
        SUMMARY+=("| $tool | $input | $(mb "$s1") | $(mb $((r1 - r0))) | $(pct $((r1 - r0)) "$s1") | $(mb $((r2 - r1))) | $(pct $((r2 - r1)) $((r1 - r0))) | $(mb "$r2") |")
    done
done

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))

report() {
    echo "# larder vs restic vs bupstash: dump streams"
    echo
    echo "$MACHINE"
    echo "- load (1, 5, 15 min) before measuring: $load_start; at the end: $load_end"
    echo "- script: benches/peers.sh, total run time ${elapsed}s"
    for t in "${TOOLS[@]}"; do echo "- $("${t}_version")"; done
    echo "- pgbench input: scale $PGBENCH_SCALE, day 2 after pgbench -c $PGBENCH_CLIENTS -t $PGBENCH_TX; append input: $APPEND_ROWS rows, day 2 +$APPEND_PCT %"
    echo "- larder: default init, opened with $(larder_keying) (stream chunker 4K:16K:64K, zstd 1); restic: repo v2, --compression auto; bupstash: defaults, new-key"
    echo
    echo "MB = 10^6 bytes. 'repo MB' is du -sb of the repository after the step; 'added (du)' is its growth;"
    echo "'added (tool)' is what the tool reports (larder bytes_added; restic data_added, which is before compression)."
    echo "Wall and CPU s are medians over $RUNS run(s) of each tool's whole sequence, the tools taking turns in each"
    echo "run; peak RSS is the largest of the runs; sizes are the last run's."
    echo "MB/s = input (or restored) bytes / wall time. Peak RSS from GNU time. 'restore' is larder/restic restore"
    echo "into a directory; 'cat' is larder cat, restic dump, bupstash get (bupstash has no separate restore for a"
    echo "stdin item). Every restored stream is compared with the day-2 dump by cmp."
    echo
    echo "| tool | input | step | data MB | wall s | CPU s | peak RSS MiB | repo MB | added MB (du) | added MB (tool) | MB/s | verified |"
    echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "| tool | input | day 1 MB | day 1 stored MB | stored % of input | day 2 added MB | day 2 added % of day 1 stored | repo after day 2 MB |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${SUMMARY[@]}"
    if ((failures > 0)); then
        echo
        echo "**$failures restore verification(s) FAILED**"
    fi
}

stamp=$(date +%Y%m%dT%H%M%S)
report | tee "$BENCH_DIR/results-peers-$stamp.md"
cp "$BENCH_DIR/results-peers-$stamp.md" "$BENCH_DIR/results-peers.md"
log "results in $BENCH_DIR/results-peers-$stamp.md"
((failures == 0)) || die "$failures verification(s) failed"
