//! Real dumps from PostgreSQL and Redis servers on 127.0.0.1, started by the
//! test command (`scripts/test.sh`). With `CI=true` a missing server fails
//! the test instead of skipping it.

use std::process::{Command, Output};

use crate::support::*;

/// `pg_dump`-style connection arguments from `LARDER_TEST_PG`
/// ("host=… port=… user=…").
pub(crate) fn pg_args(settings: &str) -> Vec<String> {
    let mut args = Vec::new();
    for pair in settings.split_whitespace() {
        let (key, value) = pair.split_once('=').unwrap();
        let flag = match key {
            "host" => "-h",
            "port" => "-p",
            "user" => "-U",
            other => panic!("unexpected setting {other}"),
        };
        args.push(flag.to_string());
        args.push(value.to_string());
    }
    args
}

pub(crate) fn pg_tool(tool: &str) -> String {
    match std::env::var("LARDER_TEST_PG_BIN") {
        Ok(dir) => format!("{dir}/{tool}"),
        Err(_) => tool.to_string(),
    }
}

pub(crate) fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh database filled by `pgbench -i`, dropped afterwards.
struct PgDatabase {
    name: String,
    conn: Vec<String>,
}

impl PgDatabase {
    fn create(settings: &str, name: &str) -> PgDatabase {
        let conn = pg_args(settings);
        let _ = Command::new(pg_tool("dropdb"))
            .args(&conn)
            .args(["--if-exists", name])
            .output();
        run_ok(Command::new(pg_tool("createdb")).args(&conn).arg(name));
        run_ok(
            Command::new(pg_tool("pgbench"))
                .args(&conn)
                .args(["-i", "-q", "-s", "2", name]),
        );
        PgDatabase {
            name: name.to_string(),
            conn,
        }
    }

    fn dump_command(&self, extra: &str) -> String {
        format!(
            "{} {} {extra} {}",
            pg_tool("pg_dump"),
            self.conn.join(" "),
            self.name
        )
    }

    fn count(&self, db: &str, table: &str) -> String {
        let out = run_ok(Command::new(pg_tool("psql")).args(&self.conn).args([
            "-At",
            "-d",
            db,
            "-c",
            &format!("SELECT count(*), sum(abalance) FROM {table}"),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        for db in [self.name.clone(), format!("{}_restored", self.name)] {
            let _ = Command::new(pg_tool("dropdb"))
                .args(&self.conn)
                .args(["--if-exists", &db])
                .output();
        }
    }
}

#[test]
fn a_pg_dump_command_backs_up_and_restores_into_a_working_database() {
    let Some(settings) = postgres() else { return };
    let db = PgDatabase::create(&settings, "larder_it_restore");
    let r = CliRepo::init();

    let out = r.run(&[
        "--json",
        "backup",
        "--source",
        "pg",
        "--kind",
        "postgres",
        "--stdin-name",
        "bench.dump",
        "--command",
        &db.dump_command("--format=custom -Z0"),
    ]);
    assert_success(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "an uncompressed dump raises no warning: {}",
        stderr(&out)
    );

    let out = r.run(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["kind"], "postgres");
    assert!(
        list[0]["dumper_version"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL"),
        "{list}"
    );

    let target = r.dir.path().join("restore");
    assert_success(&r.run(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let dump = target.join("bench.dump");
    run_ok(Command::new(pg_tool("pg_restore")).arg("--list").arg(&dump));
    let restored = format!("{}_restored", db.name);
    run_ok(
        Command::new(pg_tool("createdb"))
            .args(&db.conn)
            .arg(&restored),
    );
    run_ok(
        Command::new(pg_tool("pg_restore"))
            .args(&db.conn)
            .args(["-d", &restored])
            .arg(&dump),
    );
    assert_eq!(
        db.count(&restored, "pgbench_accounts"),
        db.count(&db.name, "pgbench_accounts")
    );
}

#[test]
fn a_saved_pg_dump_round_trips_bit_for_bit_and_dedups_day_over_day() {
    let Some(settings) = postgres() else { return };
    let db = PgDatabase::create(&settings, "larder_it_dedup");
    let r = CliRepo::init();
    let dump = |r: &CliRepo| {
        let argv = larder::source::split_command(&db.dump_command("--format=plain")).unwrap();
        let _ = r;
        run_ok(Command::new(&argv[0]).args(&argv[1..])).stdout
    };
    let day1 = dump(&r);
    let first = r.backup_stdin("pg", &day1);
    run_ok(
        Command::new(pg_tool("pgbench"))
            .args(&db.conn)
            .args(["-t", "100", "-n", &db.name]),
    );
    let day2 = dump(&r);
    let second = r.backup_stdin("pg", &day2);
    let (added1, added2) = (
        first["bytes_added"].as_u64().unwrap(),
        second["bytes_added"].as_u64().unwrap(),
    );
    assert!(added2 * 2 < added1, "day 2 added {added2}, day 1 {added1}");

    let out = r.run(&["cat", &second["snapshot_id"].as_str().unwrap()[..8]]);
    assert_success(&out);
    assert!(out.stdout == day2);
    let out = r.run(&["cat", &first["snapshot_id"].as_str().unwrap()[..8]]);
    assert!(out.stdout == day1);
    assert_success(&r.run(&["check", "--read-data"]));
}

#[test]
fn a_compressed_custom_format_dump_dedups_day_over_day_and_restores_to_its_exact_bytes() {
    let Some(settings) = postgres() else { return };
    let db = PgDatabase::create(&settings, "larder_it_compressed");
    run_ok(Command::new(pg_tool("psql")).args(&db.conn).args([
        "-d",
        &db.name,
        "-c",
        "UPDATE pgbench_accounts SET filler = md5(aid::text)",
        "-c",
        "VACUUM FULL pgbench_accounts",
        "-c",
        "SELECT lo_from_bytea(0, 'a large object'::bytea)",
    ]));
    // pg_dump's default for the custom format: zlib, every table's data one
    // compressed stream.
    let dump = || {
        let argv = larder::source::split_command(&db.dump_command("--format=custom")).unwrap();
        run_ok(Command::new(&argv[0]).args(&argv[1..])).stdout
    };
    let day1 = dump();
    run_ok(
        Command::new(pg_tool("pgbench"))
            .args(&db.conn)
            .args(["-t", "100", "-n", &db.name]),
    );
    let day2 = dump();
    let added = |summary: &serde_json::Value| summary["bytes_added"].as_u64().unwrap();

    let r = CliRepo::init();
    let first = r.backup_stdin("pg", &day1);
    let second = r.backup_stdin("pg", &day2);
    assert!(first["warnings"].as_array().unwrap().is_empty(), "{first}");
    assert!(
        added(&second) * 10 <= added(&first) * 3,
        "day 2 stored {} bytes, more than 30% of day 1's {}",
        added(&second),
        added(&first)
    );
    let out = r.run(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[1]["dump"]["format"], "postgres-custom", "{list}");
    assert!(
        list[1]["dump"]["detail"]
            .as_str()
            .unwrap()
            .contains("zlib data streams unpacked, their checksums match"),
        "{list}"
    );

    // Stored as they come (--no-unpack), the same two days cost nearly all
    // of day 2 again, and the warning names pg_dump's flag.
    let raw = CliRepo::init();
    for day in [&day1, &day2] {
        let out = raw.run_with_input(
            &[
                "--json",
                "backup",
                "--stdin",
                "--source",
                "pg",
                "--no-unpack",
            ],
            day,
        );
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains("-Z0"), "{}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if day == &day2 {
            assert!(added(&summary) * 10 > day2.len() as u64 * 8, "{summary}");
        }
    }

    // Byte for byte, also after the older day is forgotten and pruned.
    let id1 = &first["snapshot_id"].as_str().unwrap()[..8];
    let id2 = &second["snapshot_id"].as_str().unwrap()[..8];
    let out = r.run(&["cat", id1]);
    assert_success(&out);
    assert!(out.stdout == day1, "day 1 does not rebuild to its bytes");
    assert_success(&r.run(&["forget", "--source", "pg", "--keep-last", "1"]));
    assert_success(&r.run(&["prune"]));
    let out = r.run(&["cat", id2]);
    assert_success(&out);
    assert!(out.stdout == day2, "day 2 does not rebuild to its bytes");
    assert_success(&r.run(&["check", "--read-data"]));

    // A cut archive kept on request is stored exactly as it came.
    let cut = &day2[..day2.len() * 2 / 3];
    let out = backup_input(&r, "cut", &["--allow-incomplete"], cut);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = r.run(&["cat", "latest", "--source", "cut"]);
    assert_success(&out);
    assert!(
        out.stdout == cut,
        "the cut archive does not come back as it was"
    );
}

#[test]
fn a_failing_pg_dump_writes_no_snapshot_and_shows_why() {
    let Some(settings) = postgres() else { return };
    let r = CliRepo::init();
    let command = format!(
        "{} {} no_such_database_here",
        pg_tool("pg_dump"),
        pg_args(&settings).join(" ")
    );
    let out = r.run(&["backup", "--source", "pg", "--command", &command]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no_such_database_here"),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["--json", "snapshots"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn a_redis_rdb_dump_round_trips_and_passes_redis_check_rdb() {
    let Some(address) = redis() else { return };
    let (host, port) = address.split_once(':').unwrap();
    let cli = |args: &[&str]| {
        run_ok(
            Command::new("redis-cli")
                .args(["-h", host, "-p", port])
                .args(args),
        )
    };
    cli(&["FLUSHALL"]);
    cli(&["DEBUG", "POPULATE", "20000", "larder", "64"]);
    cli(&["SET", "greeting", "hello from larder"]);

    let r = CliRepo::init();
    let command = format!("redis-cli -h {host} -p {port} --rdb -");
    let out = r.run(&[
        "--json",
        "backup",
        "--source",
        "cache",
        "--kind",
        "redis",
        "--stdin-name",
        "dump.rdb",
        "--command",
        &command,
    ]);
    assert_success(&out);
    let target = r.dir.path().join("restore");
    assert_success(&r.run(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let rdb = target.join("dump.rdb");
    let bytes = std::fs::read(&rdb).unwrap();
    assert!(
        bytes.starts_with(b"REDIS"),
        "an RDB file starts with its magic"
    );
    run_ok(Command::new("redis-check-rdb").arg(&rdb));

    // The same RDB bytes saved first, then backed up from stdin, come back
    // bit for bit.
    let saved =
        run_ok(Command::new("redis-cli").args(["-h", host, "-p", port, "--rdb", "-"])).stdout;
    let summary = r.backup_stdin("cache", &saved);
    let out = r.run(&["cat", &summary["snapshot_id"].as_str().unwrap()[..8]]);
    assert!(out.stdout == saved);
}

/// Backs `input` up from standard input as source `source`, with `extra`
/// arguments; returns the output.
fn backup_input(r: &CliRepo, source: &str, extra: &[&str], input: &[u8]) -> Output {
    let mut args = vec!["--json", "backup", "--source", source, "--stdin"];
    args.extend_from_slice(extra);
    r.run_with_input(&args, input)
}

fn snapshot_count(r: &CliRepo) -> usize {
    let out = r.run(&["--json", "snapshots"]);
    assert_success(&out);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn truncated_pg_dumps_and_rdb_streams_are_refused_and_whole_ones_are_checked() {
    let Some(settings) = postgres() else { return };
    let Some(address) = redis() else { return };
    let db = PgDatabase::create(&settings, "larder_it_truncated");
    // A large object, so the archive holds a BLOBS block too.
    run_ok(Command::new(pg_tool("psql")).args(&db.conn).args([
        "-q",
        "-d",
        &db.name,
        "-c",
        "SELECT lo_from_bytea(0, 'a large object'::bytea)",
    ]));
    let dump = |extra: &str| {
        let argv = larder::source::split_command(&db.dump_command(extra)).unwrap();
        run_ok(Command::new(&argv[0]).args(&argv[1..])).stdout
    };
    let custom = dump("--format=custom -Z0");
    let compressed = dump("--format=custom");
    let plain = dump("--format=plain");
    let (host, port) = address.split_once(':').unwrap();
    run_ok(Command::new("redis-cli").args(["-h", host, "-p", port, "SET", "k", "v"]));
    let rdb = run_ok(Command::new("redis-cli").args(["-h", host, "-p", port, "--rdb", "-"])).stdout;

    let r = CliRepo::init();
    let cases: [(&str, &[u8], &str); 4] = [
        ("custom", &custom, "postgres-custom"),
        ("compressed", &compressed, "postgres-custom"),
        ("plain", &plain, "postgres-plain"),
        ("rdb", &rdb, "redis-rdb"),
    ];
    for (stored, (name, whole, format)) in cases.into_iter().enumerate() {
        let len = whole.len();
        // In the header, in the table of contents, in the data, and one
        // byte short of the end.
        for cut in [len / 200 + 7, len / 3, len / 2 + 13, len - 5] {
            // Past the magic, so that the format can be told at all.
            let cut = cut.clamp(16, len - 1);
            let out = backup_input(&r, name, &[], &whole[..cut]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name} cut at {cut}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("incomplete") && stderr(&out).contains(format),
                "{name} cut at {cut}: {}",
                stderr(&out)
            );
        }
        assert_eq!(
            snapshot_count(&r),
            stored,
            "{name}: no snapshot of a cut dump"
        );
        let out = backup_input(&r, name, &[], whole);
        assert_success(&out);
    }
    // Each whole dump was recognised and recorded as its kind.
    let out = r.run(&["--json", "snapshots"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "postgres").count(),
        3,
        "{listed:#}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "redis").count(),
        1,
        "{listed:#}"
    );
    for snapshot in listed.as_array().unwrap() {
        assert_eq!(snapshot["dump"]["complete"], true, "{snapshot:#}");
    }

    // A dump command that exits 0 after writing a cut archive (the failure
    // a pipe into gzip hides) writes no snapshot either.
    let path = r.dir.path().join("cut.dump");
    std::fs::write(&path, &custom[..custom.len() / 2]).unwrap();
    let command = format!("head -c {} {}", custom.len(), path.display());
    let out = r.run(&["backup", "--source", "cmd", "--command", &command]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow-incomplete"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot_count(&r), 4);
}

#[test]
fn an_incomplete_dump_stored_on_request_is_tagged_and_never_kept_as_a_good_backup() {
    let Some(settings) = postgres() else { return };
    let db = PgDatabase::create(&settings, "larder_it_allow_incomplete");
    let argv = larder::source::split_command(&db.dump_command("--format=plain")).unwrap();
    let plain = run_ok(Command::new(&argv[0]).args(&argv[1..])).stdout;
    let r = CliRepo::init();
    assert_success(&backup_input(&r, "pg", &["--kind", "postgres"], &plain));
    let out = backup_input(
        &r,
        "pg",
        &["--kind", "postgres", "--allow-incomplete"],
        &plain[..plain.len() - 40],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stored with a warning: {}",
        stderr(&out)
    );
    let out = r.run(&["--json", "snapshots"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let incomplete: Vec<&serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "incomplete")
        })
        .collect();
    assert_eq!(incomplete.len(), 1, "{listed:#}");

    // The incomplete one is the newest, yet keep-last 1 keeps the good one.
    let out = r.run(&["--json", "forget", "--keep-last", "1", "--dry-run"]);
    assert_success(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decisions = plan.as_array().unwrap();
    let removed: Vec<&serde_json::Value> =
        decisions.iter().filter(|d| d["keep"] == false).collect();
    assert_eq!(removed.len(), 1, "{plan:#}");
    assert_eq!(removed[0]["id"], incomplete[0]["id"], "{plan:#}");
    assert_eq!(removed[0]["incomplete"], true, "{plan:#}");
}

#[test]
fn a_directory_format_dump_is_checked_for_its_toc_and_every_data_file() {
    let Some(settings) = postgres() else { return };
    let db = PgDatabase::create(&settings, "larder_it_directory");
    let r = CliRepo::init();
    let dir = r.dir.path().join("orders.dir");
    let argv = larder::source::split_command(
        &db.dump_command(&format!("--format=directory --file {}", dir.display())),
    )
    .unwrap();
    run_ok(Command::new(&argv[0]).args(&argv[1..]));
    let dir_s = dir.to_str().unwrap();
    let out = r.run(&[
        "--json", "backup", "--source", "pg", "--kind", "postgres", dir_s,
    ]);
    assert_success(&out);
    let out = r.run(&["--json", "snapshots"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["kind"], "postgres", "{listed:#}");
    assert_eq!(
        listed[0]["dump"]["format"], "postgres-directory",
        "{listed:#}"
    );
    assert_eq!(listed[0]["dump"]["complete"], true, "{listed:#}");

    // One data file gone: refused, naming it.
    let data: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "toc.dat")
        .collect();
    assert!(!data.is_empty());
    std::fs::remove_file(&data[0]).unwrap();
    let out = r.run(&["backup", "--source", "pg", "--kind", "postgres", dir_s]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("data files toc.dat names are missing"),
        "{}",
        stderr(&out)
    );
    // No toc.dat (pg_dump writes it last): refused.
    std::fs::remove_file(dir.join("toc.dat")).unwrap();
    let out = r.run(&["backup", "--source", "pg", "--kind", "postgres", dir_s]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no toc.dat"), "{}", stderr(&out));
    let out = r.run(&["--json", "snapshots"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// `gzip -6 -c` of `data` through the system's gzip, as `pg_dump | gzip`
/// would write it.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("gzip");
    cmd.args(["-6", "-c"]);
    let out = run_with_stdin(cmd, data);
    assert_success(&out);
    out.stdout
}

#[test]
fn a_gzipped_pg_dump_dedups_day_over_day_and_restores_to_the_exact_gzip_bytes() {
    let Some(settings) = postgres() else { return };
    let db = PgDatabase::create(&settings, "larder_it_gzip");
    // Distinct fillers, as real rows have: pgbench's blank ones make gzip's
    // own output repeat itself (benches/gzip.sh).
    run_ok(Command::new(pg_tool("psql")).args(&db.conn).args([
        "-d",
        &db.name,
        "-c",
        "UPDATE pgbench_accounts SET filler = md5(aid::text)",
        "-c",
        "VACUUM FULL pgbench_accounts",
    ]));
    let dump = || {
        let argv = larder::source::split_command(&db.dump_command("--format=plain")).unwrap();
        run_ok(Command::new(&argv[0]).args(&argv[1..])).stdout
    };
    let day1 = dump();
    run_ok(
        Command::new(pg_tool("pgbench"))
            .args(&db.conn)
            .args(["-t", "100", "-n", &db.name]),
    );
    let day2 = dump();
    let (gz1, gz2) = (gzip(&day1), gzip(&day2));
    let added = |summary: &serde_json::Value| summary["bytes_added"].as_u64().unwrap();

    let r = CliRepo::init();
    let first = r.backup_stdin("pg", &gz1);
    let second = r.backup_stdin("pg", &gz2);
    assert!(first["warnings"].as_array().unwrap().is_empty(), "{first}");
    assert!(
        added(&second) * 10 <= added(&first) * 3,
        "day 2 stored {} bytes, more than 30% of day 1's {}",
        added(&second),
        added(&first)
    );
    // As well as the uncompressed dumps would, but for the recipe (the
    // DEFLATE corrections, a few percent of the gzip size, new each day).
    // The difference moves with the rows pgbench happens to touch: over
    // seven runs the gzip's day 2 stored from 45 kB less to 377 kB (7.9% of
    // the gzip) more than the plain dump's.
    let plain = CliRepo::init();
    plain.backup_stdin("pg", &day1);
    let plain2 = plain.backup_stdin("pg", &day2);
    assert!(
        added(&second) <= added(&plain2) + gz2.len() as u64 / 10,
        "gzip day 2 stored {}, the plain dump {}, the gzip is {} bytes",
        added(&second),
        added(&plain2),
        gz2.len()
    );
    // Stored as they come, the same two days cost nearly all of day 2
    // again: the unpacking is what deduplicates them.
    let raw = CliRepo::init();
    for gz in [&gz1, &gz2] {
        let out = raw.run_with_input(
            &[
                "--json",
                "backup",
                "--stdin",
                "--source",
                "pg",
                "--no-unpack",
            ],
            gz,
        );
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if gz == &gz2 {
            assert!(added(&summary) * 10 > gz2.len() as u64 * 8, "{summary}");
        }
    }

    // The dump inside was checked, and so was the gzip stream.
    let out = r.run(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[1]["kind"], "postgres", "{list}");
    assert_eq!(list[1]["dump"]["format"], "postgres-plain", "{list}");
    assert!(
        list[1]["dump"]["detail"]
            .as_str()
            .unwrap()
            .contains("gzip: whole"),
        "{list}"
    );

    // Byte for byte, also after the older day is forgotten and pruned (the
    // recipe's blobs are as live as the content's).
    let id1 = &first["snapshot_id"].as_str().unwrap()[..8];
    let id2 = &second["snapshot_id"].as_str().unwrap()[..8];
    let out = r.run(&["cat", id1]);
    assert_success(&out);
    assert!(
        out.stdout == gz1,
        "day 1 does not rebuild to its gzip bytes"
    );
    assert_success(&r.run(&["forget", "--source", "pg", "--keep-last", "1"]));
    assert_success(&r.run(&["prune"]));
    let out = r.run(&["cat", id2]);
    assert_success(&out);
    assert!(
        out.stdout == gz2,
        "day 2 does not rebuild to its gzip bytes"
    );
    let target = tempfile::tempdir().unwrap();
    assert_success(&r.run(&["restore", id2, "--target", target.path().to_str().unwrap()]));
    assert!(std::fs::read(target.path().join("stdin")).unwrap() == gz2);
    assert_success(&r.run(&["check", "--read-data"]));
}

#[test]
fn a_cut_or_damaged_gzip_dump_is_refused_like_gzip_t_would() {
    let r = CliRepo::init();
    let whole = gzip(&dump_text(20_000, 9));
    let cut = &whole[..whole.len() / 2];
    let out = r.run_with_input(&["backup", "--stdin", "--source", "gz"], cut);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cut short"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&r), 0);

    let mut flipped = whole.clone();
    let at = flipped.len() - 6;
    flipped[at] ^= 1;
    let out = r.run_with_input(&["backup", "--stdin", "--source", "gz"], &flipped);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&r), 0);

    // As a plain stream nothing is checked: stored with a warning, and it
    // still comes back exactly as it went in.
    let out = r.run_with_input(
        &[
            "--json", "backup", "--stdin", "--source", "gz", "--kind", "stream",
        ],
        cut,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = r.run(&["cat", &summary["snapshot_id"].as_str().unwrap()[..8]]);
    assert_success(&out);
    assert!(out.stdout == cut);
}

/// A Neo4j 5 dump: `DZV1`, then one zstd frame written by a streaming
/// compressor with a content checksum (as neo4j-admin writes it).
fn neo4j_dump(contents: &[u8], level: i32) -> Vec<u8> {
    use std::io::Write;
    let mut out = b"DZV1".to_vec();
    let mut encoder = zstd::stream::write::Encoder::new(&mut out, level).unwrap();
    encoder.include_checksum(true).unwrap();
    for piece in contents.chunks(64 << 10) {
        encoder.write_all(piece).unwrap();
    }
    encoder.finish().unwrap();
    out
}

#[test]
fn a_neo4j_dump_a_compressor_here_reproduces_dedups_and_one_it_cannot_is_stored_with_a_warning() {
    let day1_contents = crate::support::dump_text(200_000, 11);
    let mut day2_contents = day1_contents.clone();
    let at = day2_contents.len() / 2;
    day2_contents[at..at + 20].copy_from_slice(b"a changed graph node");
    let (day1, day2) = (neo4j_dump(&day1_contents, 3), neo4j_dump(&day2_contents, 3));
    let added = |summary: &serde_json::Value| summary["bytes_added"].as_u64().unwrap();

    let r = CliRepo::init();
    let first = r.backup_stdin("graph", &day1);
    let second = r.backup_stdin("graph", &day2);
    assert!(first["warnings"].as_array().unwrap().is_empty(), "{first}");
    assert!(
        added(&second) * 10 < added(&first),
        "day 2 stored {} bytes, day 1 {}",
        added(&second),
        added(&first)
    );
    let out = r.run(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[1]["kind"], "neo4j", "{list}");
    assert!(
        list[1]["dump"]["detail"]
            .as_str()
            .unwrap()
            .contains("zstd level 3 here rebuilds the frame byte for byte"),
        "{list}"
    );
    for (summary, dump) in [(&first, &day1), (&second, &day2)] {
        let out = r.run(&["cat", &summary["snapshot_id"].as_str().unwrap()[..8]]);
        assert_success(&out);
        assert!(
            &out.stdout == dump,
            "a Neo4j dump does not come back as it was"
        );
    }
    assert_success(&r.run(&["check", "--read-data"]));

    // A level no compressor here is tried at: stored as it came, with a
    // warning, and still byte for byte.
    let odd = neo4j_dump(&day1_contents, 15);
    let out = r.run_with_input(
        &["--json", "backup", "--stdin", "--source", "graph-odd"],
        &odd,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not be unpacked for deduplication"),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["cat", "latest", "--source", "graph-odd"]);
    assert!(out.stdout == odd);
}
