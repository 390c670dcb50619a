//! Backup plans: `larder run`, `--config`, the metrics file, `on_failure`,
//! the run lock, rotating subset checks, and the shipped systemd units.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{CliRepo, PASSWORD, assert_success, larder_cmd, stderr};

/// A plan for `r` with a stream that changes every run, a command that
/// fails, and a tree; keep the last snapshot of each.
fn write_plan(r: &CliRepo, extra: &str) -> PathBuf {
    let dir = r.dir.path();
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    let tree = dir.join("knowledge");
    std::fs::create_dir_all(tree.join("topics")).unwrap();
    std::fs::write(tree.join("topics/a.yaml"), "title: a\nbody: first\n").unwrap();
    std::fs::write(tree.join("index.json"), "{\"topics\": 1}").unwrap();
    let plan = format!(
        r#"repository = "{repo}"
password_file = "{dir}/password"
cache_dir = "{cache}"
metrics_file = "{dir}/textfile/larder.prom"

[retention]
keep_last = 1

[[source]]
name = "orders-db"
kind = "stream"
command = "/bin/sh -c 'date +%s%N'"
stdin_name = "orders.sql"

[[source]]
name = "broken-db"
command = "/bin/sh -c 'echo half a dump; exit 3'"

[[source]]
name = "knowledge"
kind = "files"
paths = ["{tree}"]
exclude = ["*.tmp"]

[notify]
on_failure = ["/bin/sh", "-c", "cat > {dir}/notified.json; env > {dir}/notified.env"]
{extra}"#,
        repo = r.repo.display(),
        dir = dir.display(),
        cache = r.cache.display(),
        tree = tree.display(),
    );
    let path = dir.join("larder.toml");
    std::fs::write(&path, plan).unwrap();
    path
}

/// `larder --config PLAN ARGS…` with nothing but the plan to go on.
fn with_plan(plan: &Path, args: &[&str]) -> Output {
    larder_cmd()
        .arg("--config")
        .arg(plan)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn snapshots_of(plan: &Path, source: &str) -> usize {
    let out = with_plan(plan, &["--json", "snapshots", "--source", source]);
    assert_success(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array().unwrap().len()
}

/// The samples of a Prometheus text file, parsed by a real parser.
fn metrics(path: &Path) -> Vec<prometheus_parse::Sample> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap().samples
}

fn gauge(samples: &[prometheus_parse::Sample], name: &str, source: Option<&str>) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && source.is_none_or(|src| s.labels.get("source") == Some(src)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is {other:?}"),
        })
}

#[test]
fn a_run_backs_up_every_source_despite_one_failing_then_retention_prune_metrics_and_notify() {
    let r = CliRepo::init();
    // An off-site repository for [copy], and drills of every source.
    let offsite = r.dir.path().join("offsite");
    assert_success(
        &larder_cmd()
            .args(["init", "--kdf-memory", "1", "--kdf-passes", "1", "--repo"])
            .arg(&offsite)
            .arg("--cache-dir")
            .arg(&r.cache)
            .env("LARDER_PASSWORD", PASSWORD)
            .output()
            .unwrap(),
    );
    let plan = write_plan(
        &r,
        &format!(
            "[copy]\nto = \"{}\"\npassword_file = \"{}/password\"\n[drill]\nevery = \"7d\"\n",
            offsite.display(),
            r.dir.path().display()
        ),
    );
    for round in 1..=2 {
        // The passphrase in the environment too: on_failure must not see it.
        let out = larder_cmd()
            .arg("--config")
            .arg(&plan)
            .arg("run")
            .env("LARDER_PASSWORD", PASSWORD)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "round {round}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("backup broken-db"),
            "{}",
            stderr(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for step in [
            "backup orders-db: snapshot",
            "backup knowledge: snapshot",
            "prune:",
            "copy: ",
        ] {
            assert!(text.contains(step), "round {round}: no {step:?} in\n{text}");
        }
    }
    // Both good sources were backed up each time, and retention kept the
    // last of each; the failing one has nothing.
    assert_eq!(snapshots_of(&plan, "orders-db"), 1);
    assert_eq!(snapshots_of(&plan, "knowledge"), 1);
    assert_eq!(snapshots_of(&plan, "broken-db"), 0);
    let out = with_plan(&plan, &["--json", "snapshots"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all:#}");

    // The metrics file parses and says which source failed.
    let samples = metrics(&r.dir.path().join("textfile/larder.prom"));
    assert_eq!(
        gauge(&samples, "larder_last_run_success", Some("broken-db")),
        Some(0.0)
    );
    for good in ["orders-db", "knowledge"] {
        assert_eq!(
            gauge(&samples, "larder_last_run_success", Some(good)),
            Some(1.0)
        );
        assert_eq!(gauge(&samples, "larder_snapshots", Some(good)), Some(1.0));
        let success = gauge(
            &samples,
            "larder_last_success_timestamp_seconds",
            Some(good),
        )
        .unwrap();
        assert!(
            (success - jiff::Timestamp::now().as_second() as f64).abs() < 600.0,
            "{good}: {success}"
        );
    }
    assert_eq!(
        gauge(
            &samples,
            "larder_last_success_timestamp_seconds",
            Some("broken-db")
        ),
        None
    );
    assert!(gauge(&samples, "larder_repository_size_bytes", None).unwrap() > 0.0);

    // The off-site copy holds every snapshot the run kept, and the tree was
    // drilled; a stream source says nothing of how to drill it and was
    // skipped.
    let out = larder_cmd()
        .args(["--json", "snapshots", "--repo"])
        .arg(&offsite)
        .arg("--cache-dir")
        .arg(&r.cache)
        .env("LARDER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_success(&out);
    let copied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(copied.as_array().unwrap().len() >= 2, "{copied:#}");
    assert_eq!(
        gauge(&samples, "larder_last_drill_success", Some("knowledge")),
        Some(1.0)
    );
    assert_eq!(
        gauge(&samples, "larder_last_drill_success", Some("orders-db")),
        None
    );

    // on_failure got the run's summary on its standard input.
    let notified: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.dir.path().join("notified.json")).unwrap())
            .unwrap();
    assert_eq!(notified["ok"], false, "{notified:#}");
    let env = std::fs::read_to_string(r.dir.path().join("notified.env")).unwrap();
    assert!(!env.contains("LARDER_PASSWORD") && !env.contains(PASSWORD));
    assert_eq!(notified["failed"], serde_json::json!(["backup broken-db"]));
    assert!(
        notified["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "retention" && s["source"] == "orders-db" && s["ok"] == true),
        "{notified:#}"
    );

    // Only the named sources, with --json: a clean run exits 0.
    std::fs::remove_file(r.dir.path().join("notified.json")).unwrap();
    let out = with_plan(&plan, &["--json", "run", "orders-db", "knowledge"]);
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ok"], true, "{summary:#}");
    assert!(!r.dir.path().join("notified.json").exists());
    // A single command given the plan rewrites the metrics too.
    let before = std::fs::metadata(r.dir.path().join("textfile/larder.prom"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_success(&with_plan(&plan, &["check"]));
    let samples = metrics(&r.dir.path().join("textfile/larder.prom"));
    assert_eq!(
        gauge(&samples, "larder_last_check_success", None),
        Some(1.0)
    );
    let after = std::fs::metadata(r.dir.path().join("textfile/larder.prom"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(after > before);
    let out = with_plan(&plan, &["run", "no-such-source"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("orders-db, broken-db, knowledge"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_dry_run_prints_the_plan_and_takes_no_step() {
    let r = CliRepo::init();
    let plan = write_plan(&r, "[check]\nread_data_subset = \"5%\"\n");
    let out = with_plan(&plan, &["run", "--dry-run"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "backup orders-db: the output of",
        "retention knowledge: keep last 1",
        "prune",
        "check, reading 5% of the packs",
        "on failure: /bin/sh -c",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert_eq!(snapshots_of(&plan, "orders-db"), 0);
    assert!(!r.dir.path().join("textfile/larder.prom").exists());
}

#[test]
fn a_plan_with_an_unknown_key_or_a_bad_value_is_an_error_naming_its_line() {
    let r = CliRepo::init();
    let plan = write_plan(&r, "");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, text.replace("keep_last = 1", "keep_lats = 1")).unwrap();
    let out = with_plan(&plan, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larder.toml: line 7:") && stderr(&out).contains("keep_lats"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&plan, text.replace("kind = \"files\"", "kind = \"redis\"")).unwrap();
    let out = with_plan(&plan, &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("source \"knowledge\"") && stderr(&out).contains("line 20"),
        "{}",
        stderr(&out)
    );
    assert_eq!(r.run(&["--json", "snapshots"]).stdout, b"[]\n");
}

#[test]
fn a_second_run_of_the_same_repository_waits_then_says_why_it_gave_up() {
    let r = CliRepo::init();
    let plan = write_plan(&r, "");
    let text = std::fs::read_to_string(&plan).unwrap();
    // The first run holds the lock while its hook sleeps.
    std::fs::write(
        &plan,
        text.replace(
            "stdin_name = \"orders.sql\"",
            "stdin_name = \"orders.sql\"\nbefore = \"/bin/sleep 3\"",
        ),
    )
    .unwrap();
    let mut first = larder_cmd()
        .arg("--config")
        .arg(&plan)
        .args(["run", "orders-db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let out = with_plan(&plan, &["run", "--wait", "1", "knowledge"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another larder run of this repository is still running"),
        "{}",
        stderr(&out)
    );
    assert!(first.wait().unwrap().success());
    // Once it has ended, the next run goes ahead.
    assert_success(&with_plan(&plan, &["run", "knowledge"]));
    assert_eq!(snapshots_of(&plan, "knowledge"), 1);
}

#[test]
fn rotating_subset_checks_read_every_pack_exactly_once() {
    let r = CliRepo::init();
    for i in 0..12u64 {
        let data = crate::support::random_bytes(40_000, i);
        r.backup_stdin(&format!("s{i}"), &data);
    }
    let packs = r.objects("packs").len() as u64;
    assert!(packs >= 12, "{packs} packs");
    let read = |spec: &str| -> u64 {
        let out = r.run(&["--json", "check", "--read-data-subset", spec]);
        assert_success(&out);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        summary["packs_read"].as_u64().unwrap()
    };
    let parts: Vec<u64> = (1..=4).map(|k| read(&format!("{k}/4"))).collect();
    assert_eq!(parts.iter().sum::<u64>(), packs, "{parts:?}");
    // 25%: a different quarter each run, every pack over four runs.
    let rotating: Vec<u64> = (0..4).map(|_| read("25%")).collect();
    assert_eq!(rotating.iter().sum::<u64>(), packs, "{rotating:?}");
    let mut sorted = rotating.clone();
    sorted.sort_unstable();
    let mut expected = parts.clone();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    let out = r.run(&["check", "--read-data-subset", "5/4"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn the_shipped_systemd_units_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is not installed (apt-get install systemd)"
        );
        return;
    };
    assert!(out.status.success());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["larder.service", "larder.timer"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        // The unit names the installed binary; verify it against this one.
        let text = text.replace("/usr/local/bin/larder", env!("CARGO_BIN_EXE_larder"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("larder.service"))
        .arg(dir.path().join("larder.timer"))
        .output()
        .unwrap();
    let messages = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    // Only complaints about the units themselves count (a container
    // without a running systemd says more about itself).
    let about_units: Vec<&str> = messages
        .lines()
        .filter(|l| l.contains("larder.service") || l.contains("larder.timer"))
        .collect();
    assert!(out.status.success() && about_units.is_empty(), "{messages}");
}

#[test]
fn a_signal_during_a_run_stops_it_before_the_next_source() {
    let r = CliRepo::init();
    let plan = write_plan(&r, "");
    let text = std::fs::read_to_string(&plan).unwrap();
    // The first source's dump takes a while; the signal arrives during it.
    std::fs::write(
        &plan,
        text.replace(
            "command = \"/bin/sh -c 'date +%s%N'\"",
            "command = \"/bin/sh -c 'sleep 20; date'\"",
        ),
    )
    .unwrap();
    let child = larder_cmd()
        .arg("--config")
        .arg(&plan)
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: signalling a child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // Ended as by the signal (128 + 2, as a shell reports it).
    use std::os::unix::process::ExitStatusExt;
    let code = out
        .status
        .code()
        .or_else(|| out.status.signal().map(|s| 128 + s));
    assert_eq!(code, Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted by SIGINT"),
        "{}",
        stderr(&out)
    );
    // Neither the interrupted source nor the ones after it were backed up,
    // and no retention or prune ran.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("backup knowledge"), "{text}");
    assert!(!text.contains("prune:"), "{text}");
    assert_eq!(snapshots_of(&plan, "orders-db"), 0);
    assert_eq!(snapshots_of(&plan, "knowledge"), 0);
}
