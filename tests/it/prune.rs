//! forget, prune and leases: space comes back, and nothing a surviving
//! snapshot needs is ever deleted — under concurrent backups, suspended
//! processes, crashes at every point, and failing listings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::LeaseKind;
use larder::Repo;
use larder::SnapshotFilter;
use larder::backend::MemoryBackend;
use larder::backend::memory::{Fault, Op};
use larder::hash::SnapshotId;
use larder::ops::check::{CheckOptions, check};
use larder::ops::forget::{ForgetOptions, GroupBy, forget};
use larder::ops::prune::{PruneOptions, prune};
use larder::retention::Policy;
use proptest::prelude::*;

use crate::support::*;

fn keep_last(n: u32) -> ForgetOptions {
    ForgetOptions {
        filter: SnapshotFilter::default(),
        policy: Policy {
            last: Some(n),
            ..Policy::default()
        },
        group_by: GroupBy::default(),
        time_zone: jiff::tz::TimeZone::UTC,
        now: jiff::Timestamp::now(),
        dry_run: false,
        allow_empty: false,
        snapshots: Vec::new(),
    }
}

/// A policy that keeps nothing (only a tag no snapshot has), allowed to
/// empty the group.
fn forget_all() -> ForgetOptions {
    ForgetOptions {
        allow_empty: true,
        policy: Policy {
            tags: vec!["none".into()],
            ..Policy::default()
        },
        ..keep_last(1)
    }
}

/// Opens the repository as another process would, holding a lease.
async fn open_leased(memory: &MemoryBackend, cache: &std::path::Path, kind: LeaseKind) -> Repo {
    Repo::open_with(
        Arc::new(memory.clone()),
        PASSWORD.as_bytes(),
        cache,
        Some(kind),
    )
    .await
    .unwrap()
}

/// Small packs, so that a few backups make many packs and repacking happens.
fn small_pack_options() -> larder::repo::InitOptions {
    larder::repo::InitOptions {
        data_pack_size: Some(1 << 20),
        ..init_options()
    }
}

/// Content sharing most of its blocks with other seeds: block `i` of seed
/// `s` is one of four variants, so backups overlap partially.
fn content(seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for block in 0..96u64 {
        let variant = (seed.wrapping_mul(31).wrapping_add(block * 7)) % 4;
        out.extend(random_bytes(16 << 10, block * 100 + variant));
    }
    out.extend(random_bytes(4 << 10, seed + 10_000));
    out
}

/// Six backups of partially overlapping content, with their inputs.
async fn six_overlapping_backups(lib: &LibRepo) -> Vec<(SnapshotId, Vec<u8>)> {
    let mut out = Vec::new();
    for seed in 0..6 {
        let data = content(seed);
        let s = lib.backup("db", &data).await.unwrap();
        out.push((s.snapshot_id, data));
    }
    out
}

async fn open(memory: &MemoryBackend, cache: &std::path::Path) -> Repo {
    Repo::open(Arc::new(memory.clone()), PASSWORD.as_bytes(), cache)
        .await
        .unwrap()
}

async fn assert_clean(repo: &Repo) {
    let summary = check(
        repo,
        &CheckOptions {
            read_data: true,
            subset: None,
            ..CheckOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        summary.is_ok(),
        "check found {:?} {:?}",
        summary.problems,
        summary.affected_snapshots
    );
}

fn pack_names(memory: &MemoryBackend) -> Vec<String> {
    memory
        .snapshot()
        .into_keys()
        .filter(|k| k.starts_with("packs/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_then_prune_frees_space_and_kept_snapshots_restore() {
    let (lib, memory) = memory_repo_with(small_pack_options()).await;
    let kept = six_overlapping_backups(&lib).await;
    let before: usize = memory.snapshot().values().map(|v| v.len()).sum();
    let forgotten = forget(&lib.repo, &keep_last(2)).await.unwrap();
    assert_eq!((forgotten.kept, forgotten.removed), (2, 4));

    let summary = prune(&lib.repo, &PruneOptions::default()).await.unwrap();
    assert!(summary.packs_deleted > 0, "{summary:#?}");
    assert!(summary.bytes_freed > 0);
    assert_eq!(summary.generations.len(), 1);
    assert_eq!(summary.generations[0].status, "deleted");
    let after: usize = memory.snapshot().values().map(|v| v.len()).sum();
    assert!(after < before, "{after} >= {before}");
    assert!(
        !memory
            .snapshot()
            .keys()
            .any(|k| k.starts_with("pending/") || k.starts_with("locks/")),
        "a finished prune leaves no generation and no lease"
    );

    // A fresh process (empty cache) sees the same, restores bit-exactly and
    // finds nothing wrong.
    let fresh = tempfile::tempdir().unwrap();
    let repo = open(&memory, fresh.path()).await;
    for (id, data) in kept.iter().skip(4) {
        assert_eq!(&cat_bytes(&repo, id).await.unwrap(), data);
    }
    assert_clean(&repo).await;

    // Nothing left to do: a second prune deletes nothing.
    let again = prune(&repo, &PruneOptions::default()).await.unwrap();
    assert_eq!(again.packs_deleted, 0, "{again:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_began_before_a_generation_holds_its_sweep_and_its_snapshot_survives() {
    let (lib, memory) = memory_repo().await;
    let data = random_bytes(600_000, 7);
    let first = lib.backup("db", &data).await.unwrap();
    forget(&lib.repo, &forget_all()).await.unwrap();
    assert!(
        lib.repo
            .snapshots(&SnapshotFilter::default())
            .unwrap()
            .is_empty()
    );

    // A backup process starts (lease, then sync): the data is still usable.
    let cache = tempfile::tempdir().unwrap();
    let backup_process = open_leased(&memory, cache.path(), LeaseKind::Backup).await;

    // Prune records the now-unused packs but must not sweep them.
    let pruned = prune(&lib.repo, &PruneOptions::default()).await.unwrap();
    assert_eq!(pruned.packs_deleted, 0, "{pruned:#?}");
    assert_eq!(pruned.generations[0].status, "waiting");
    assert_eq!(pruned.generations[0].waits_for.len(), 1);
    assert!(pruned.generations[0].waits_for[0].contains("backup lease"));

    // The backup deduplicates against those packs and commits.
    let second = backup_bytes(&backup_process, "db", &data).await.unwrap();
    assert_ne!(second.snapshot_id, first.snapshot_id);
    backup_process.release_lease().await;

    // The next prune re-checks, finds the packs needed, and keeps them.
    let repo = lib.reopen().await.unwrap();
    let pruned = prune(&repo, &PruneOptions::default()).await.unwrap();
    let generation = &pruned.generations[0];
    assert_eq!(generation.status, "deleted");
    assert!(generation.packs_rescued > 0, "{pruned:#?}");
    assert_eq!(cat_bytes(&repo, &second.snapshot_id).await.unwrap(), data);
    assert_clean(&repo).await;

    // A backup that starts after a generation treats its packs as absent
    // and stores the data again instead.
    forget(&repo, &forget_all()).await.unwrap();
    let hold_cache = tempfile::tempdir().unwrap();
    let hold = open_leased(&memory, hold_cache.path(), LeaseKind::Read).await;
    let pruned = prune(&repo, &PruneOptions::default()).await.unwrap();
    assert_eq!(pruned.generations[0].status, "waiting");
    let late = Repo::open(Arc::new(memory.clone()), PASSWORD.as_bytes(), cache.path())
        .await
        .unwrap();
    let third = backup_bytes(&late, "db", &data).await.unwrap();
    assert!(
        third.blobs_new > 0,
        "blobs in pending packs must be stored again"
    );
    hold.release_lease().await;
    let pruned = prune(&repo, &PruneOptions::default()).await.unwrap();
    assert_eq!(pruned.generations[0].status, "deleted");
    assert_eq!(pruned.generations[0].packs_rescued, 0, "{pruned:#?}");
    assert_eq!(cat_bytes(&repo, &third.snapshot_id).await.unwrap(), data);
    assert_clean(&repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_suspended_past_its_lease_does_not_commit() {
    let (lib, memory) = memory_repo().await;
    let cache = tempfile::tempdir().unwrap();
    let repo = open_leased(&memory, cache.path(), LeaseKind::Backup).await;
    let ttl = repo.lease().unwrap().ttl();
    // The process sleeps through its lease (by the storage's clock).
    memory.advance_clock(ttl + Duration::from_secs(1));
    let err = backup_bytes(&repo, "db", &random_bytes(100_000, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, larder::Error::LeaseLapsed { .. }), "{err}");
    assert!(err.to_string().contains("nothing was committed"), "{err}");
    repo.release_lease().await;
    let repo = lib.reopen().await.unwrap();
    assert!(
        repo.snapshots(&SnapshotFilter::default())
            .unwrap()
            .is_empty()
    );

    // A process that dies leaves its lease behind; once expired it blocks
    // nobody, and prune removes it.
    let abandoned_cache = tempfile::tempdir().unwrap();
    let abandoned = open_leased(&memory, abandoned_cache.path(), LeaseKind::Read).await;
    drop(abandoned);
    memory.advance_clock(ttl + Duration::from_secs(1));
    let pruned = prune(&repo, &PruneOptions::default()).await.unwrap();
    assert_eq!(pruned.leases_removed, 1, "{pruned:#?}");
    assert!(
        pruned.packs_deleted > 0,
        "the lapsed run's packs are garbage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_listing_during_prune_aborts_before_any_delete() {
    // Every listing prune makes, failed in turn: each run must fail and
    // delete nothing.
    // (The first listing of snapshots/, index/ and pending/ is the open's
    // sync; prune's own come after: two before marking, one in the sweep's
    // re-check. locks/ is listed to wait for other prunes and before the
    // sweep; its third listing, removing expired leases, comes after.)
    for (target, nth) in [
        ("packs/", 0u32),
        ("locks/", 0),
        ("locks/", 1),
        ("snapshots/", 1),
        ("snapshots/", 2),
        ("snapshots/", 3),
        ("index/", 1),
        ("index/", 3),
        ("pending/", 1),
        ("pending/", 3),
    ] {
        let (lib, memory) = memory_repo_with(small_pack_options()).await;
        for seed in 0..3 {
            lib.backup("db", &content(seed)).await.unwrap();
        }
        forget(&lib.repo, &keep_last(1)).await.unwrap();
        let deletes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(0u32));
        {
            let deletes = Arc::clone(&deletes);
            memory.set_faults(move |_, op| match op {
                Op::List { prefix } if prefix == target => {
                    let mut seen = seen.lock().unwrap();
                    *seen += 1;
                    if *seen - 1 == nth {
                        Fault::Fail
                    } else {
                        Fault::Proceed
                    }
                }
                Op::Delete { name } => {
                    deletes.lock().unwrap().push(name.clone());
                    Fault::Proceed
                }
                _ => Fault::Proceed,
            });
        }
        let packs_before = pack_names(&memory);
        let repo = lib.reopen().await;
        let result = match repo {
            Ok(repo) => prune(&repo, &PruneOptions::default()).await.map(|_| ()),
            Err(e) => Err(e),
        };
        memory.heal();
        let err = result.expect_err(&format!("prune with listing {target} #{nth} failing"));
        assert!(err.to_string().contains("storage request"), "{err}");
        let deleted: Vec<String> = deletes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| !n.starts_with("locks/"))
            .cloned()
            .collect();
        assert!(
            deleted.is_empty(),
            "listing {target} #{nth} failed, yet prune deleted {deleted:?}"
        );
        assert_eq!(pack_names(&memory), packs_before);
    }
}

/// Steps of the model-based test.
#[derive(Clone, Debug)]
enum Step {
    Backup(u64),
    Forget(u32),
    Prune(f64),
    /// The next step's process dies after this many requests.
    Crash(u64, Box<Step>),
}

fn step() -> impl Strategy<Value = Step> {
    let plain = prop_oneof![
        4 => (0u64..12).prop_map(Step::Backup),
        2 => (1u32..4).prop_map(Step::Forget),
        2 => prop_oneof![Just(0.0), Just(10.0), Just(50.0)].prop_map(Step::Prune),
    ];
    prop_oneof![
        3 => plain.clone(),
        1 => (0u64..40, plain).prop_map(|(n, s)| Step::Crash(n, Box::new(s))),
    ]
}

async fn run_step(
    repo: &Repo,
    step: &Step,
    time: i64,
) -> larder::Result<Option<(SnapshotId, u64)>> {
    match step {
        Step::Backup(seed) => {
            let data = content(*seed);
            let mut options = stream_options(
                "db",
                larder::source::StreamInput::Reader(Box::new(std::io::Cursor::new(data))),
            );
            options.time = Some(jiff::Timestamp::from_nanosecond(i128::from(time)).unwrap());
            let s = larder::ops::backup::backup(repo, options).await?;
            Ok(Some((s.snapshot_id, *seed)))
        }
        // forget refuses an empty repository (no selector matches).
        Step::Forget(_) if repo.snapshots(&SnapshotFilter::default())?.is_empty() => Ok(None),
        Step::Forget(n) => forget(repo, &keep_last(*n)).await.map(|_| None),
        Step::Prune(max_unused) => prune(
            repo,
            &PruneOptions {
                max_unused_percent: *max_unused,
                ..PruneOptions::default()
            },
        )
        .await
        .map(|_| None),
        Step::Crash(..) => unreachable!("crashes wrap a step"),
    }
}

async fn model_run(steps: Vec<Step>) {
    let (lib, memory) = memory_repo_with(small_pack_options()).await;
    let cache = tempfile::tempdir().unwrap();
    // Snapshot id → the seed of its content.
    let mut model: BTreeMap<SnapshotId, u64> = BTreeMap::new();
    let mut time = 1_700_000_000_000_000_000i64;
    drop(lib.repo);
    for step in steps {
        time += 3_600_000_000_000;
        let repo = open(&memory, cache.path()).await;
        let (inner, crash) = match &step {
            Step::Crash(n, inner) => (inner.as_ref().clone(), Some(*n)),
            other => (other.clone(), None),
        };
        if let Some(n) = crash {
            memory.crash_after(n);
        }
        let result = run_step(&repo, &inner, time).await;
        memory.heal();
        drop(repo);
        if crash.is_some() {
            // The process died (perhaps only while releasing its lease,
            // which it does not report): its lease expires as time passes.
            memory.advance_clock(larder::lease::DEFAULT_TTL * 2);
        }
        match (result, crash) {
            (Ok(Some((id, seed))), _) => {
                model.insert(id, seed);
            }
            (Ok(None), _) | (Err(_), Some(_)) => {}
            (Err(e), None) => panic!("{inner:?} failed without a crash: {e}"),
        }

        // Reconcile with what the repository says, then verify everything.
        let repo = open(&memory, cache.path()).await;
        let present: Vec<SnapshotId> = repo
            .snapshots(&SnapshotFilter::default())
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        model.retain(|id, _| present.contains(id));
        for id in &present {
            let expected = match model.get(id) {
                Some(seed) => content(*seed),
                // Committed by a step that then crashed (after the snapshot
                // was written): it must be that step's backup.
                None => match &inner {
                    Step::Backup(seed) => {
                        model.insert(*id, *seed);
                        content(*seed)
                    }
                    other => panic!("snapshot {id} appeared during {other:?}"),
                },
            };
            let got = cat_bytes(&repo, id)
                .await
                .unwrap_or_else(|e| panic!("after {step:?}, snapshot {} fails: {e}", id.short()));
            assert!(
                got == expected,
                "after {step:?}, snapshot {} restores wrong bytes",
                id.short()
            );
        }
        assert_clean(&repo).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    })]

    #[test]
    fn backup_forget_prune_and_crashes_never_lose_a_kept_snapshot(
        steps in proptest::collection::vec(step(), 4..12)
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(model_run(steps));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_every_request_of_a_sweep_leave_a_repository_that_finishes() {
    // Deterministic companion to the property test: a prune that has
    // pending work dies after each possible number of requests, and the
    // next prune finishes the job with every kept snapshot intact.
    for n in 0.. {
        let (lib, memory) = memory_repo_with(small_pack_options()).await;
        let mut all = Vec::new();
        for seed in 0..4 {
            let data = content(seed);
            all.push((lib.backup("db", &data).await.unwrap().snapshot_id, data));
        }
        forget(&lib.repo, &keep_last(2)).await.unwrap();
        let repo = lib.reopen().await.unwrap();
        memory.crash_after(n);
        let result = prune(
            &repo,
            &PruneOptions {
                max_unused_percent: 0.0,
                ..PruneOptions::default()
            },
        )
        .await;
        memory.heal();
        drop(repo);
        memory.advance_clock(larder::lease::DEFAULT_TTL * 2);
        let repo = lib.reopen().await.unwrap();
        for (id, data) in all.iter().skip(2) {
            assert_eq!(
                &cat_bytes(&repo, id).await.unwrap(),
                data,
                "crash after {n}"
            );
        }
        assert_clean(&repo).await;
        let finish = prune(&repo, &PruneOptions::default()).await.unwrap();
        assert!(
            !memory.snapshot().keys().any(|k| k.starts_with("pending/")),
            "crash after {n}: {finish:#?}"
        );
        for (id, data) in all.iter().skip(2) {
            assert_eq!(
                &cat_bytes(&repo, id).await.unwrap(),
                data,
                "crash after {n}"
            );
        }
        assert_clean(&repo).await;
        if result.is_ok() {
            break;
        }
    }
}

#[test]
fn forget_cli_dry_run_json_and_refusals() {
    let r = CliRepo::init();
    for day in ["2026-11-01", "2026-11-02", "2026-11-09"] {
        let out = r.run_with_input(
            &[
                "backup",
                "--source",
                "db",
                "--stdin",
                "--time",
                &format!("{day}T03:00:00Z"),
            ],
            &dump_text(200, 1),
        );
        assert_success(&out);
    }
    let out = r.run(&[
        "--json",
        "forget",
        "--keep-weekly",
        "1",
        "--keep-last",
        "1",
        "--dry-run",
        "--utc",
    ]);
    assert_success(&out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let summary: Vec<(String, bool, Vec<String>)> = rows
        .iter()
        .map(|r| {
            (
                r["time"].as_str().unwrap().to_string(),
                r["keep"].as_bool().unwrap(),
                r["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "2026-11-09T03:00:00Z".into(),
                true,
                vec!["last 1/1".to_string(), "weekly 1/1".into()]
            ),
            ("2026-11-02T03:00:00Z".into(), false, vec![]),
            ("2026-11-01T03:00:00Z".into(), false, vec![]),
        ]
    );
    for key in ["id", "source", "host"] {
        assert!(rows[0][key].is_string(), "{key}");
    }
    // Dry run removed nothing.
    let out = r.run(&["--json", "snapshots"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Refusals: no rule, no match, and emptying a group.
    let out = r.run(&["forget", "--dry-run"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no keep rule") && stderr(&out).contains("--keep-*"),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["forget", "--keep-last", "1", "--source", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no snapshots match source nope"),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["forget", "--keep-tag", "gold"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--allow-empty"), "{}", stderr(&out));

    // The real thing, with --prune in the same run.
    let out = r.run(&["--json", "forget", "--keep-last", "1", "--prune"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 3);
    assert!(v["prune"]["packs_deleted"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["prune"]["generations"][0]["status"], "deleted");
    let out = r.run(&["check", "--read-data"]);
    assert_success(&out);
    let out = r.run(&["--json", "prune", "--dry-run"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["packs_deleted"], 0);
    assert_eq!(v["dry_run"], true);
}

#[test]
fn prune_dry_run_says_what_it_waits_for() {
    let r = CliRepo::init();
    assert_success(&r.run_with_input(
        &["backup", "--source", "db", "--stdin"],
        &random_bytes(300_000, 3),
    ));
    assert_success(&r.run_with_input(
        &["backup", "--source", "db", "--stdin"],
        &random_bytes(300_000, 4),
    ));
    assert_success(&r.run(&["forget", "--keep-last", "1"]));
    // A long restore holds a read lease: start one on a stalled stdout pipe.
    let mut reader = r
        .cmd(&["cat", "latest"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its lease to appear.
    let locks = r.dir.path().join("repo/locks");
    for _ in 0..200 {
        if std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = r.run(&["prune", "--dry-run"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The reader is still running: it cannot finish writing 300 kB into a
    // pipe nobody reads, so its lease is live and began before now.
    assert!(
        reader.try_wait().unwrap().is_none(),
        "the reader ended early"
    );
    let _ = reader.kill();
    let _ = reader.wait();
    assert!(text.contains("would wait"), "{text}");
    assert!(text.contains("waits for read lease"), "{text}");
    assert!(!text.contains("would be deleted now"), "{text}");
}

/// xorshift64, for the process test's choices.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs `cmd` with `input`, killing it after a random delay one time in
/// `kill_one_in` (SIGKILL: no cleanup, its lease left to expire).
fn run_maybe_killed(
    mut cmd: std::process::Command,
    input: Option<&[u8]>,
    rng: &mut u64,
    kill_one_in: u64,
) {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .env("LARDER_LEASE_SECONDS", "3");
    let mut child = cmd.spawn().unwrap();
    let kill_after = next(rng)
        .is_multiple_of(kill_one_in)
        .then(|| Duration::from_millis(next(rng) % 150));
    let feeder = input.map(|data| {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    if let Some(delay) = kill_after {
        std::thread::sleep(delay);
        let _ = child.kill();
    }
    let _ = child.wait();
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
}

#[test]
fn a_backup_loop_and_a_prune_loop_with_random_kills_lose_nothing() {
    let iterations: u64 = std::env::var("LARDER_TEST_PRUNE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("process test seed {seed}");
    let r = Arc::new(CliRepo::init());
    let contents: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(content).collect());

    let backups = {
        let r = Arc::clone(&r);
        let contents = Arc::clone(&contents);
        std::thread::spawn(move || {
            let mut rng = seed;
            for _ in 0..iterations {
                let pick = (next(&mut rng) % contents.len() as u64) as usize;
                let tag = format!("seed-{pick}");
                let cmd = r.cmd(&["backup", "--source", "db", "--stdin", "--tag", &tag]);
                run_maybe_killed(cmd, Some(&contents[pick]), &mut rng, 4);
            }
        })
    };
    let prunes = {
        let r = Arc::clone(&r);
        std::thread::spawn(move || {
            let mut rng = seed.rotate_left(17) | 1;
            for i in 0..iterations {
                let cmd = if i % 2 == 0 {
                    r.cmd(&["forget", "--keep-last", "3", "--prune", "--max-unused", "0"])
                } else {
                    r.cmd(&["prune"])
                };
                run_maybe_killed(cmd, None, &mut rng, 4);
            }
        })
    };
    backups.join().unwrap();
    prunes.join().unwrap();

    // Let killed runs' leases expire, then finish what is pending.
    std::thread::sleep(Duration::from_secs(4));
    let mut cmd = r.cmd(&["prune"]);
    cmd.env("LARDER_LEASE_SECONDS", "3");
    assert_success(&cmd.output().unwrap());

    let out = r.run(&["--json", "snapshots"]);
    assert_success(&out);
    let snapshots: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snapshots = snapshots.as_array().unwrap();
    assert!(!snapshots.is_empty(), "seed {seed}: no backup survived");
    for s in snapshots {
        let id = s["id"].as_str().unwrap();
        let tag = s["tags"][0].as_str().unwrap();
        let pick: usize = tag.strip_prefix("seed-").unwrap().parse().unwrap();
        let out = r.run(&["cat", id]);
        assert_success(&out);
        assert!(
            out.stdout == contents[pick],
            "seed {seed}: snapshot {id} ({tag}) restores wrong bytes"
        );
    }
    let out = r.run(&["check", "--read-data"]);
    assert!(out.status.success(), "seed {seed}: {}", stderr(&out));
}

/// A small pack's header is no unused data: prune on an unchanged
/// repository repacks nothing, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_settles_and_leaves_small_packs_alone() {
    let (lib, memory) = memory_repo().await;
    lib.backup("db", b"a small dump").await.unwrap();
    let first = prune(&lib.repo, &PruneOptions::default()).await.unwrap();
    let packs = pack_names(&memory);
    for _ in 0..3 {
        let again = prune(&lib.repo, &PruneOptions::default()).await.unwrap();
        assert_eq!(again.packs_repacked, 0, "{again:#?}");
        assert_eq!(again.packs_deleted, 0, "{again:#?}");
        assert!(again.new_generation.is_none(), "{again:#?}");
        assert_eq!(pack_names(&memory), packs);
    }
    assert_eq!(first.packs_repacked, 0, "{first:#?}");
}

/// A pack chosen for repacking that cannot be read as stored (here: longer
/// than its index records) is left where it is with a warning; the rest of
/// the prune goes on, and every kept snapshot still reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_that_cannot_be_read_for_repacking_is_left_alone_with_a_warning() {
    let (lib, memory) = memory_repo_with(small_pack_options()).await;
    let kept = six_overlapping_backups(&lib).await;
    forget(&lib.repo, &keep_last(2)).await.unwrap();
    let data_packs: Vec<String> = lib
        .repo
        .pack_ids(larder::pack::PackKind::Data)
        .unwrap()
        .iter()
        .map(larder::layout::pack_path)
        .collect();
    let stored = memory.snapshot();
    for name in &data_packs {
        let mut grown = stored[name].to_vec();
        grown.push(0);
        memory.overwrite(name, grown.into());
    }

    // Every pack with any unused blob is a repacking candidate.
    let options = PruneOptions {
        max_unused_percent: 0.0,
        ..PruneOptions::default()
    };
    let summary = prune(&lib.repo, &options).await.unwrap();
    assert_eq!(summary.packs_repacked, 0, "{summary:#?}");
    assert!(
        summary.warnings.iter().any(|w| w.contains("not repacked")),
        "{summary:#?}"
    );
    let left = memory.snapshot();
    for pack in lib.repo.live_pack_ids().unwrap() {
        let name = larder::layout::pack_path(&pack);
        assert!(
            left.contains_key(&name),
            "{name} held live blobs and is gone"
        );
    }
    for (id, data) in kept.iter().skip(4) {
        assert_eq!(&cat_bytes(&lib.repo, id).await.unwrap(), data);
    }
}
