#!/usr/bin/env bash
# Builds larder and runs a real backup and restore on a local repository:
# two days of a database dump, a listing, a bit-exact restore, and a full
# verification. Uses a throwaway PostgreSQL with pg_dump when the server is
# installed, and a generated SQL dump otherwise. Leaves nothing behind
# unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

# The first build takes about ten minutes on two cores; cargo shows each
# crate as it compiles (a progress bar on a terminal).
if [ ! -x target/release/larder ]; then
  echo "building larder in release mode (the first time takes several minutes)..." >&2
fi
cargo build --release
larder=$PWD/target/release/larder
work=$(mktemp -d /tmp/larder-quickstart.XXXXXX)
. scripts/lib/servers.sh
cleanup() {
  stop_servers
  if [ "${KEEP:-}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

export LARDER_REPO=$work/repo
export LARDER_CACHE_DIR=$work/cache
export LARDER_PASSWORD=${LARDER_PASSWORD:-quickstart-passphrase}

use_pg=false
if start_postgres "$work/pg" "${QUICKSTART_PG_PORT:-55499}" 2>/dev/null; then
  use_pg=true
  pg="$LARDER_TEST_PG_BIN"
  conn=(-h 127.0.0.1 -p "${QUICKSTART_PG_PORT:-55499}" -U postgres)
  "$pg/createdb" "${conn[@]}" shop
  "$pg/pgbench" "${conn[@]}" -i -q -s 5 shop >/dev/null 2>&1
  dump_cmd="$pg/pg_dump ${conn[*]} --format=custom -Z0 shop"
  change_day() { "$pg/pgbench" "${conn[@]}" -n -t 500 shop >/dev/null 2>&1; }
else
  echo "(no PostgreSQL server installed: using a generated SQL dump instead of pg_dump)"
  gen() { awk -v seed="$1" 'BEGIN { srand(seed); print "COPY public.orders (id, customer, amount) FROM stdin;";
          for (i = 0; i < 400000; i++) printf "%d\tcustomer-%d\t%.2f\n", i, int(rand()*50000), rand()*1000; print "\\." }'; }
  gen 1 > "$work/day.sql"
  dump_cmd="cat $work/day.sql"
  change_day() { gen 1 | awk 'NR % 997 == 0 { $3 = "999.99" } { print }' OFS='\t' > "$work/day.sql"; }
fi

step "larder init"
"$larder" init

step "larder backup --source shop --kind postgres --stdin-name shop.dump --command \"$dump_cmd\""
"$larder" backup --source shop --kind postgres --stdin-name shop.dump --command "$dump_cmd"

change_day
step "larder backup ... (next day: only the changed chunks are stored)"
"$larder" backup --source shop --kind postgres --stdin-name shop.dump --command "$dump_cmd"

step "larder snapshots"
"$larder" snapshots

step "larder restore latest --target $work/restored"
"$larder" restore latest --target "$work/restored"
if $use_pg; then
  step "pg_restore --list $work/restored/shop.dump | head -5"
  "$pg/pg_restore" --list "$work/restored/shop.dump" | head -5
fi
step "larder cat latest | cmp - $work/restored/shop.dump"
"$larder" cat latest | cmp - "$work/restored/shop.dump" && echo "identical"

step "larder check --read-data"
"$larder" check --read-data

echo
echo "quickstart finished: the repository at $LARDER_REPO holds two encrypted, deduplicated snapshots."
