//! `larder drill`: real dumps restored and verified by kind (PostgreSQL and
//! Redis on loopback, started by the test command), file trees parsed, and
//! every result recorded in `drills/` and the catalog.

use std::path::Path;
use std::process::{Command, Output};

use crate::databases::{pg_args, pg_tool, run_ok};
use crate::support::*;

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// The drill records in the catalog of `r` (its own cache directory).
fn catalog_drills(r: &CliRepo) -> Vec<larder::snapshot::DrillRecord> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let backend = larder::backend::open(r.repo.to_str().unwrap()).unwrap();
        let repo = larder::Repo::open_with(backend, PASSWORD.as_bytes(), &r.cache, None)
            .await
            .unwrap();
        repo.drill_records(None)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    })
}

/// A `psql -At -c` query against database `db`.
fn psql(settings: &str, db: &str, sql: &str) -> String {
    let out = run_ok(Command::new(pg_tool("psql")).args(pg_args(settings)).args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        db,
        "-c",
        sql,
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh database of `name` holding tables with known row counts,
/// dropped afterwards.
struct SourceDb {
    settings: String,
    name: String,
}

impl SourceDb {
    fn create(settings: &str, name: &str) -> SourceDb {
        let db = SourceDb {
            settings: settings.to_string(),
            name: name.to_string(),
        };
        db.drop_db();
        run_ok(
            Command::new(pg_tool("createdb"))
                .args(pg_args(settings))
                .arg(name),
        );
        psql(
            settings,
            name,
            "CREATE TABLE customers (id int PRIMARY KEY, name text);
             INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 3) g;
             CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, amount numeric);
             INSERT INTO orders SELECT g, 1 + g % 3, g * 1.5 FROM generate_series(1, 250) g;
             CREATE SCHEMA audit;
             CREATE TABLE audit.\"Log Entries\" (at timestamptz, what text);
             INSERT INTO audit.\"Log Entries\" SELECT now(), 'x' FROM generate_series(1, 17);
             CREATE TABLE empty_one (x int);",
        );
        db
    }

    fn dump(&self, format: &str) -> Vec<u8> {
        run_ok(
            Command::new(pg_tool("pg_dump"))
                .args(pg_args(&self.settings))
                .args([format, "-Z0", &self.name]),
        )
        .stdout
    }

    fn dump_command(&self, format: &str) -> String {
        format!(
            "{} {} {format} -Z0 {}",
            pg_tool("pg_dump"),
            pg_args(&self.settings).join(" "),
            self.name
        )
    }

    fn count(&self, table: &str) -> u64 {
        psql(
            &self.settings,
            &self.name,
            &format!("SELECT count(*) FROM {table}"),
        )
        .parse()
        .unwrap()
    }

    fn drop_db(&self) {
        let _ = Command::new(pg_tool("dropdb"))
            .args(pg_args(&self.settings))
            .args(["--if-exists", &self.name])
            .output();
    }
}

impl Drop for SourceDb {
    fn drop(&mut self) {
        self.drop_db();
    }
}

/// The scratch database a drill names in its checks.
fn scratch_name(drill: &serde_json::Value) -> String {
    let checked = drill["checked"].as_array().unwrap();
    let line = checked
        .iter()
        .filter_map(|c| c.as_str())
        .find(|c| c.contains("scratch database"))
        .unwrap_or_else(|| panic!("no scratch database in {drill}"));
    let name = line.rsplit(' ').next().unwrap().to_string();
    assert!(name.starts_with("larder_drill_"), "{line}");
    name
}

#[test]
fn a_pg_custom_drill_with_a_database_reports_the_source_row_counts_and_drops_its_scratch_db() {
    let Some(settings) = postgres() else { return };
    let db = SourceDb::create(&settings, "larder_it_drill_source");
    let r = CliRepo::init();
    assert_success(&r.run(&[
        "backup",
        "--source",
        "orders-db",
        "--kind",
        "postgres",
        "--stdin-name",
        "orders.dump",
        "--command",
        &db.dump_command("--format=custom"),
    ]));

    let out = r.run(&[
        "--json",
        "drill",
        "--source",
        "orders-db",
        "--database",
        &settings,
    ]);
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["outcome"], "passed", "{drill}");
    assert_eq!(drill["kind"], "postgres-custom", "{drill}");
    assert_eq!(drill["source"], "orders-db");
    assert_eq!(drill["snapshot_id"].as_str().unwrap().len(), 64);
    assert!(drill["duration_s"].as_f64().unwrap() > 0.0, "{drill}");
    let expected = serde_json::json!({
        "public.customers": db.count("customers"),
        "public.orders": db.count("orders"),
        "audit.Log Entries": db.count("audit.\"Log Entries\""),
        "public.empty_one": db.count("empty_one"),
    });
    assert_eq!(drill["tables"], expected, "{drill}");
    assert_eq!(
        expected["public.orders"], 250,
        "the source holds what it was given"
    );
    assert_eq!(drill["counts"]["rows"], 3 + 250 + 17, "{drill}");
    assert_eq!(drill["counts"]["tables"], 4, "{drill}");
    assert_eq!(drill["counts"]["toc_table_data"], 4, "{drill}");
    let checked = drill["checked"].to_string();
    assert!(checked.contains("pg_restore --list"), "{checked}");
    assert!(
        checked.contains("every table the archive has data for exists"),
        "{checked}"
    );

    let scratch = scratch_name(&drill);
    assert_eq!(
        psql(
            &settings,
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")
        ),
        "0",
        "the scratch database is dropped"
    );

    // Recorded: one drills/ object, and the catalog row.
    assert_eq!(r.objects("drills").len(), 1);
    let recorded = catalog_drills(&r);
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].passed());
    assert_eq!(recorded[0].tables["public.orders"], 250);

    // Text output: one line per check, and the per-table counts.
    let out = r.run(&["drill", "latest", "--database", &settings]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": passed in "), "{text}");
    assert!(text.contains("pg_restore --list: "), "{text}");
    assert!(text.contains("250  public.orders"), "{text}");
}

#[test]
fn a_plain_pg_dump_drill_checks_the_trailer_and_restores_with_psql() {
    let Some(settings) = postgres() else { return };
    let db = SourceDb::create(&settings, "larder_it_drill_plain");
    let r = CliRepo::init();
    r.run_with_input(
        &[
            "backup", "--source", "plain", "--stdin", "--kind", "postgres",
        ],
        &db.dump("--format=plain"),
    );
    let out = r.run(&["--json", "drill", "--source", "plain"]);
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["kind"], "postgres-plain", "{drill}");
    assert!(drill["tables"].as_object().unwrap().is_empty(), "{drill}");
    assert!(
        drill["checked"].to_string().contains("not tried"),
        "{drill}"
    );
    let out = r.run(&["drill", "--source", "plain"]);
    assert!(
        stdout_of(&out).contains("--database"),
        "{}",
        stdout_of(&out)
    );

    let out = r.run(&[
        "--json",
        "drill",
        "--source",
        "plain",
        "--database",
        &settings,
    ]);
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["counts"]["rows"], 270, "{drill}");
    assert_eq!(drill["tables"]["audit.Log Entries"], 17, "{drill}");
}

#[test]
fn a_gzipped_pg_dump_drill_rebuilds_the_gzip_and_restores_its_contents() {
    let Some(settings) = postgres() else { return };
    let db = SourceDb::create(&settings, "larder_it_drill_gzip");
    let mut gzip = std::process::Command::new("gzip");
    gzip.arg("-c");
    let gz = run_with_stdin(gzip, &db.dump("--format=plain")).stdout;
    let r = CliRepo::init();
    assert_success(&r.run_with_input(&["backup", "--source", "gz", "--stdin"], &gz));
    let out = r.run(&["--json", "drill", "--source", "gz", "--database", &settings]);
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["kind"], "postgres-plain", "{drill}");
    assert!(
        drill["checked"].to_string().contains("from its recipe"),
        "{drill}"
    );
    assert_eq!(drill["counts"]["rows"], 270, "{drill}");
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_drill_of_a_truncated_pg_archive_fails_and_is_recorded_as_failed() {
    let Some(settings) = postgres() else { return };
    let db = SourceDb::create(&settings, "larder_it_drill_truncated");
    let whole = db.dump("--format=custom");
    // Cut inside the data blocks: the table of contents still reads, so
    // pg_restore --list alone would not notice.
    let cut = &whole[..whole.len() * 3 / 4];
    let r = CliRepo::init();
    let out = r.run_with_input(
        &[
            "backup",
            "--source",
            "cut-db",
            "--stdin",
            "--kind",
            "postgres",
            "--allow-incomplete",
        ],
        cut,
    );
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(3),
        "{}",
        stderr(&out)
    );

    let out = r.run(&[
        "--json",
        "drill",
        "--source",
        "cut-db",
        "--database",
        &settings,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed"), "{}", stderr(&out));
    let drill = json(&out);
    assert_eq!(drill["outcome"], "failed", "{drill}");
    assert!(
        drill["detail"]
            .as_str()
            .unwrap()
            .contains("the archive ends inside the data of"),
        "{drill}"
    );

    assert_eq!(r.objects("drills").len(), 1, "a failed drill is recorded");
    let recorded = catalog_drills(&r);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, "failed");
    assert_eq!(recorded[0].source, "cut-db");

    // The record is in the repository, not only this machine's catalog: a
    // rebuilt catalog has it too.
    let other = r.dir.path().join("other-cache");
    let out = r.run_with_cache(&other, &["--json", "catalog", "rebuild"]);
    assert_success(&out);
    assert_eq!(json(&out)["drills"], 1);

    // Monitoring sees it: the source's only snapshot is incomplete, and its
    // last drill failed.
    let out = r.run(&["status", "--source", "cut-db"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cut-db: the last drill failed"),
        "{}",
        stderr(&out)
    );
}

/// An RDB file made by a private redis-server (the shared one is flushed
/// by other tests at any time), holding `keys` keys in database 0 and one
/// in database 3.
fn private_rdb(dir: &Path, keys: usize) -> Vec<u8> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut server = Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap()
    };
    let mut up = false;
    for _ in 0..100 {
        if String::from_utf8_lossy(&cli(&["PING"]).stdout).trim() == "PONG" {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "the private redis-server did not start");
    for i in 0..keys {
        assert!(
            cli(&["SET", &format!("key:{i}"), &format!("value {i}")])
                .status
                .success()
        );
    }
    assert!(cli(&["-n", "3", "SET", "elsewhere", "1"]).status.success());
    let rdb = dir.join("out.rdb");
    assert!(cli(&["--rdb", rdb.to_str().unwrap()]).status.success());
    let _ = server.kill();
    let _ = server.wait();
    std::fs::read(rdb).unwrap()
}

#[test]
fn a_redis_drill_passes_redis_check_rdb_and_a_throwaway_server_counts_the_keys() {
    if redis().is_none() {
        return;
    }
    let r = CliRepo::init();
    let rdb = private_rdb(r.dir.path(), 40);
    let out = r.run_with_input(
        &[
            "--json", "backup", "--source", "cache", "--stdin", "--kind", "redis",
        ],
        &rdb,
    );
    assert_success(&out);
    let tmp = r.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    let out = r
        .cmd(&["--json", "drill", "--source", "cache"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["kind"], "redis-rdb", "{drill}");
    assert_eq!(drill["outcome"], "passed", "{drill}");
    assert_eq!(drill["counts"]["keys_checked"], 41, "{drill}");
    assert!(drill["counts"].get("keys").is_none(), "{drill}");

    let out = r
        .cmd(&["--json", "drill", "--source", "cache", "--redis-server"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["counts"]["keys"], 41, "{drill}");
    assert_eq!(drill["counts"]["databases"], 2, "{drill}");
    assert!(
        drill["checked"]
            .to_string()
            .contains("throwaway redis-server"),
        "{drill}"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the drill's temporary directory is removed"
    );
    assert_eq!(r.objects("drills").len(), 2);

    // A damaged RDB (one byte of a value changed: the checksum no longer
    // matches) fails redis-check-rdb.
    let mut damaged = rdb.clone();
    let at = damaged
        .windows(b"value 7".len())
        .position(|w| w == b"value 7")
        .unwrap();
    damaged[at] ^= 0x20;
    let out = r.run_with_input(
        &[
            "backup",
            "--source",
            "bad-cache",
            "--stdin",
            "--kind",
            "redis",
            "--allow-incomplete",
        ],
        &damaged,
    );
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(3),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["drill", "--source", "bad-cache"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("redis-check-rdb"), "{}", stderr(&out));
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_tree_drill_passes_on_good_yaml_and_json_and_names_an_unparsable_file() {
    let r = CliRepo::init();
    let kb = r.dir.path().join("kb");
    write(
        &kb.join("pricing.yaml"),
        "plans:\n  - name: basic\n    price: 10\n",
    );
    write(
        &kb.join("teams/ops.yml"),
        "---\nlead: ann\n---\nlead: bob\n",
    );
    write(&kb.join("index.json"), "{\"pages\": [1, 2, 3]}");
    write(&kb.join("README.md"), "not parsed: [\n");
    assert_success(&r.run(&["backup", "--source", "kb", kb.to_str().unwrap()]));

    let out = r.run(&["--json", "drill", "--source", "kb"]);
    assert_success(&out);
    let drill = json(&out);
    assert_eq!(drill["kind"], "files", "{drill}");
    assert_eq!(drill["outcome"], "passed", "{drill}");
    assert_eq!(drill["counts"]["yaml_files"], 2, "{drill}");
    assert_eq!(drill["counts"]["json_files"], 1, "{drill}");
    assert_eq!(drill["counts"]["other_files"], 1, "{drill}");

    write(
        &kb.join("teams/broken.yaml"),
        "lead: ann\nmembers: [bob, carol\nsize: 3\n",
    );
    assert_success(&r.run(&["backup", "--source", "kb", kb.to_str().unwrap()]));
    let out = r.run(&["drill", "--source", "kb"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("teams/broken.yaml: "), "{err}");
    assert!(err.contains("line 2 column"), "{err}");
    assert!(!err.contains("pricing.yaml"), "{err}");
    assert!(stdout_of(&out).contains("FAILED"), "{}", stdout_of(&out));
    assert_eq!(r.objects("drills").len(), 2);
    let recorded = catalog_drills(&r);
    assert_eq!(
        recorded
            .iter()
            .map(|d| d.outcome.as_str())
            .collect::<Vec<_>>(),
        ["passed", "failed"]
    );

    // drills/ is larder's own: check does not flag it, and forget and
    // prune leave every drill record alone.
    let out = r.run(&["check"]);
    assert_success(&out);
    assert!(!stdout_of(&out).contains("drills"), "{}", stdout_of(&out));
    assert_success(&r.run(&["forget", "--keep-last", "1", "--prune"]));
    assert_eq!(r.objects("drills").len(), 2);
    assert_eq!(catalog_drills(&r).len(), 2);
    let out = r.run(&["--json", "stats"]);
    assert_success(&out);
    let stats = json(&out);
    let drills = stats["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["prefix"] == "drills")
        .unwrap()
        .clone();
    assert_eq!(drills["count"], 2, "{stats}");
}

#[test]
fn a_missing_verifier_is_an_error_naming_its_debian_package_and_nothing_is_recorded() {
    let r = CliRepo::init();
    r.backup_stdin("blob", b"some bytes that are no dump");
    let empty = r.dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    for (kind, program, package) in [
        ("redis-rdb", "redis-check-rdb", "redis-tools"),
        ("postgres-custom", "pg_restore", "postgresql-client"),
    ] {
        let out = r
            .cmd(&["drill", "--source", "blob", "--kind", kind])
            .env("PATH", &empty)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{program} is not installed")),
            "{err}"
        );
        assert!(err.contains(package), "{err}");
    }
    let out = r
        .cmd(&[
            "drill",
            "--source",
            "blob",
            "--kind",
            "postgres-plain",
            "--database",
            "host=x",
        ])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("psql is not installed"),
        "{}",
        stderr(&out)
    );
    assert!(r.objects("drills").is_empty(), "no verdict, no record");

    // A stream of unknown kind is not guessed at.
    let out = r.run(&["drill", "--source", "blob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--kind"), "{}", stderr(&out));
}

#[test]
fn a_drill_of_a_snapshot_whose_data_is_damaged_fails_and_is_recorded() {
    let r = CliRepo::init();
    let kb = r.dir.path().join("kb");
    // Incompressible values: the data pack is the largest one.
    let text: String = random_bytes(200_000, 7)
        .chunks(20)
        .enumerate()
        .map(|(i, value)| format!("key{i}: {}\n", hex::encode(value)))
        .collect();
    write(&kb.join("a.yaml"), &text);
    assert_success(&r.run(&["backup", "--source", "kb", kb.to_str().unwrap()]));
    let packs = r.objects("packs");
    let largest = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(largest);

    let out = r.run(&["--json", "drill", "--source", "kb"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let drill = json(&out);
    assert_eq!(drill["outcome"], "failed", "{drill}");
    assert!(
        drill["detail"]
            .as_str()
            .unwrap()
            .contains("could not be restored because their data is damaged"),
        "{drill}"
    );
    assert_eq!(r.objects("drills").len(), 1, "the failure is recorded");
}
