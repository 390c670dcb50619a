//! S3 repositories against a real S3 server (SeaweedFS on loopback, SigV4
//! checked), directly and through a proxy that injects failures.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder::Error;
use larder::backend::{Backend, Put, S3Backend, S3Settings};
use larder::repo::InitOptions;
use tempfile::TempDir;

use crate::fault_proxy::{FaultProxy, Plan};
use crate::support::*;

fn s3_backend(url: &str, settings: S3Settings) -> Arc<dyn Backend> {
    Arc::new(S3Backend::new(url, settings).unwrap())
}

fn small_packs() -> InitOptions {
    InitOptions {
        data_pack_size: Some(1 << 20),
        ..init_options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_backend_meets_the_contract() {
    let Some(s3) = s3() else { return };
    crate::backend_contract::contract(s3.backend()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_server() {
    let Some(s3) = s3() else { return };
    let settings = S3Settings {
        secret_access_key: Some("not-the-secret".into()),
        ..s3.settings()
    };
    let url = s3.fresh_url();
    let backend = s3_backend(&url, settings);
    let err = backend
        .put_if_absent("config", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let message = format!("{:#}", anyhow::Error::from(err));
    assert!(
        message.contains("storage request put config failed"),
        "{message}"
    );
    assert!(
        message.contains("403") || message.to_lowercase().contains("denied"),
        "{message}"
    );
    // Nothing was stored.
    assert!(matches!(
        s3_backend(&url, s3.settings())
            .get("config", u64::MAX)
            .await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_packs_go_up_in_parts_and_other_objects_never_do() {
    let Some(s3) = s3() else { return };
    let settings = S3Settings {
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        part_concurrency: 2,
        ..s3.settings()
    };
    let backend = s3_backend(&s3.fresh_url(), settings);
    let body = Bytes::from(random_bytes(12 << 20, 7));
    assert_eq!(
        backend
            .put_if_absent("packs/ab/ab01", body.clone())
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(backend.get("packs/ab/ab01", u64::MAX).await.unwrap(), body);
    assert_eq!(
        &backend
            .get_range("packs/ab/ab01", (6 << 20) - 10..(6 << 20) + 10)
            .await
            .unwrap()[..],
        &body[(6 << 20) - 10..(6 << 20) + 10]
    );
    // A second upload of the same pack is skipped (one HEAD).
    assert_eq!(
        backend
            .put_if_absent("packs/ab/ab01", body.clone())
            .await
            .unwrap(),
        Put::Existed
    );
    // An object that must never be overwritten stays conditional whatever
    // its size.
    assert_eq!(
        backend
            .put_if_absent("index/big", body.clone())
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(
        backend
            .put_if_absent("index/big", Bytes::from(random_bytes(12 << 20, 8)))
            .await
            .unwrap(),
        Put::Existed
    );
    assert_eq!(backend.get("index/big", u64::MAX).await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_on_s3_round_trips_cold_and_warm() {
    let Some(s3) = s3() else { return };
    let repo = LibRepo::init(s3.backend(), small_packs()).await;
    let random = random_bytes(6 << 20, 1);
    let text = dump_text(100_000, 2);
    let a = repo.backup("random", &random).await.unwrap();
    let b = repo.backup("text", &text).await.unwrap();
    assert!(a.requests.put >= 6, "{:?}", a.requests);

    // Another machine: a fresh cache, so everything comes from S3.
    let cold_cache = TempDir::new().unwrap();
    let cold = larder::repo::Repo::open(
        Arc::clone(&repo.backend),
        PASSWORD.as_bytes(),
        cold_cache.path(),
    )
    .await
    .unwrap();
    assert_eq!(cat_bytes(&cold, &a.snapshot_id).await.unwrap(), random);
    assert_eq!(cat_bytes(&cold, &b.snapshot_id).await.unwrap(), text);
    let counts = cold.counts();
    assert!(counts.bytes_down >= (random.len() as u64), "{counts:?}");

    // An identical backup stores only its new root tree.
    let again = repo.backup("random", &random).await.unwrap();
    assert_eq!(again.blobs_new, 1);
    assert!(again.bytes_added < 2_000, "{}", again.bytes_added);
}

/// A repository used through the binary, on S3.
struct S3Cli {
    s3: S3Server,
    url: String,
    cache: TempDir,
}

impl S3Cli {
    fn init(s3: S3Server) -> S3Cli {
        let cli = S3Cli {
            url: s3.fresh_url(),
            s3,
            cache: TempDir::new().unwrap(),
        };
        assert_success(&cli.run(&["init", "--kdf-memory", "1", "--kdf-passes", "1"], b""));
        cli
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = larder_cmd();
        self.s3.env(&mut cmd);
        cmd.arg("--repo")
            .arg(&self.url)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .env("LARDER_PASSWORD", PASSWORD)
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), input)
    }
}

#[test]
fn the_binary_backs_up_to_and_restores_from_s3_and_counts_requests() {
    let Some(s3) = s3() else { return };
    let cli = S3Cli::init(s3);
    let dump = dump_text(200_000, 3);
    let out = cli.run(
        &["--json", "backup", "--source", "orders", "--stdin"],
        &dump,
    );
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["requests"]["put"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    assert!(
        summary["requests"]["bytes_up"].as_u64().unwrap() > 10_000,
        "{summary}"
    );

    // cat writes data to stdout and its summary to stderr.
    let out = cli.run(&["--json", "cat", "latest", "--source", "orders"], b"");
    assert_success(&out);
    assert!(out.stdout == dump, "cat output differs from the dump");
    let summary: serde_json::Value = serde_json::from_slice(out.stderr.trim_ascii())
        .unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
    assert!(
        summary["requests"]["get"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert!(
        summary["requests"]["bytes_down"].as_u64().unwrap() > 0,
        "{summary}"
    );

    let out = cli.run(&["--json", "snapshots"], b"");
    assert_success(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    let out = cli.run(&["check", "--read-data"], b"");
    assert_success(&out);

    let out = cli.run(&["--json", "stats"], b"");
    assert_success(&out);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["snapshots"], 1, "{stats}");
    assert!(stats["total_bytes"].as_u64().unwrap() > 10_000, "{stats}");
    assert!(
        stats["location"].as_str().unwrap().starts_with("s3://"),
        "{stats}"
    );
}

#[test]
fn the_binary_names_the_problem_when_credentials_are_wrong() {
    let Some(s3) = s3() else { return };
    let cli = S3Cli::init(s3);
    let out = cli
        .cmd(&["snapshots"])
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("storage request get config failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_through_five_percent_failures_completes_and_restores_bit_exact() {
    let Some(s3) = s3() else { return };
    let proxy = FaultProxy::start(&s3.endpoint, Plan::Random { percent: 5 }).await;
    let backend = s3_backend(&s3.fresh_url(), s3.settings_via(&proxy.endpoint()));
    let repo = LibRepo::init(backend, small_packs()).await;
    // Back up new data until every kind of fault has hit at least once.
    let mut inputs = Vec::new();
    for seed in 0..16u64 {
        let data = random_bytes(8 << 20, 100 + seed);
        let summary = repo.backup(&format!("db{seed}"), &data).await.unwrap();
        inputs.push((summary.snapshot_id, data));
        if proxy.injected().faults() >= 5 {
            break;
        }
    }
    // Read everything back from S3 (fresh cache), still through the faults.
    let cold_cache = TempDir::new().unwrap();
    let cold = larder::repo::Repo::open(
        Arc::clone(&repo.backend),
        PASSWORD.as_bytes(),
        cold_cache.path(),
    )
    .await
    .unwrap();
    for (id, data) in &inputs {
        assert!(
            cat_bytes(&cold, id).await.unwrap() == *data,
            "restore differs"
        );
    }
    let injected = proxy.injected();
    eprintln!("injected: {injected:?}");
    assert!(
        injected.status_500 > 0
            && injected.status_503 > 0
            && injected.reset_before > 0
            && injected.lost_answer > 0
            && injected.cut_body > 0,
        "not every kind of fault was injected: {injected:?}"
    );
    proxy.set_plan(Plan::Pass);
    let options = larder::ops::check::CheckOptions {
        read_data: true,
        subset: None,
        ..Default::default()
    };
    let report = larder::ops::check::check(&cold, &options).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_outage_fails_the_backup_in_bounded_time_and_writes_no_snapshot() {
    let Some(s3) = s3() else { return };
    let url = s3.fresh_url();
    let direct = LibRepo::init(s3_backend(&url, s3.settings()), init_options()).await;
    direct.backup("db", b"first day").await.unwrap();

    let proxy = FaultProxy::start(&s3.endpoint, Plan::Pass).await;
    let settings = S3Settings {
        retry_timeout: Duration::from_secs(3),
        ..s3.settings_via(&proxy.endpoint())
    };
    let through = LibRepo {
        repo: larder::repo::Repo::open(
            s3_backend(&url, settings),
            PASSWORD.as_bytes(),
            direct.cache.path(),
        )
        .await
        .unwrap(),
        backend: s3_backend(&url, s3.settings()),
        cache: TempDir::new().unwrap(),
    };
    proxy.set_plan(Plan::Outage);
    let started = Instant::now();
    let err = through
        .backup("db", &random_bytes(4 << 20, 9))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(proxy.injected().status_503 >= 2, "{:?}", proxy.injected());
    let snapshots = direct.backend.list("snapshots/").await.unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_is_abandoned_and_the_request_retried() {
    let Some(s3) = s3() else { return };
    let proxy = FaultProxy::start(&s3.endpoint, Plan::Pass).await;
    let settings = S3Settings {
        request_timeout: Duration::from_secs(2),
        ..s3.settings_via(&proxy.endpoint())
    };
    let backend = s3_backend(&s3.fresh_url(), settings);
    backend
        .put_if_absent("index/aa", Bytes::from_static(b"hello"))
        .await
        .unwrap();

    proxy.set_plan(Plan::Stall { n: 1 });
    let started = Instant::now();
    assert_eq!(
        &backend.get("index/aa", u64::MAX).await.unwrap()[..],
        b"hello"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_secs(30));

    // A stalled conditional create is retried too, and reports Created.
    proxy.set_plan(Plan::Stall { n: 1 });
    assert_eq!(
        backend
            .put_if_absent("index/bb", Bytes::from_static(b"new"))
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(proxy.injected().stalled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_was_lost_is_recognised_as_ours() {
    let Some(s3) = s3() else { return };
    let proxy = FaultProxy::start(&s3.endpoint, Plan::LoseAnswer { n: 1 }).await;
    let backend = s3_backend(&s3.fresh_url(), s3.settings_via(&proxy.endpoint()));
    // The server stores it, the client sees a reset, retries, gets "already
    // exists", reads it back and finds its own bytes.
    assert_eq!(
        backend
            .put_if_absent("snapshots/aa", Bytes::from_static(b"mine"))
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(proxy.injected().lost_answer, 1);
    // Someone else's object stays someone else's.
    proxy.set_plan(Plan::LoseAnswer { n: 1 });
    assert_eq!(
        backend
            .put_if_absent("snapshots/aa", Bytes::from_static(b"other"))
            .await
            .unwrap(),
        Put::Existed
    );
    assert_eq!(
        &backend.get("snapshots/aa", u64::MAX).await.unwrap()[..],
        b"mine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_damaged_in_transit_is_refused_by_the_server() {
    let Some(s3) = s3() else { return };
    let url = s3.fresh_url();
    let proxy = FaultProxy::start(&s3.endpoint, Plan::CorruptUpload).await;
    let backend = s3_backend(&url, s3.settings_via(&proxy.endpoint()));
    let err = backend
        .put_if_absent("index/aa", Bytes::from(random_bytes(100_000, 3)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert_eq!(proxy.injected().corrupted, 1);
    let direct = s3_backend(&url, s3.settings());
    assert!(matches!(
        direct.get("index/aa", u64::MAX).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_damaged_in_transit_fails_closed() {
    let Some(s3) = s3() else { return };
    let url = s3.fresh_url();
    let direct = LibRepo::init(s3_backend(&url, s3.settings()), init_options()).await;
    let data = random_bytes(300_000, 4);
    let snap = direct.backup("db", &data).await.unwrap().snapshot_id;

    let proxy = FaultProxy::start(&s3.endpoint, Plan::Pass).await;
    let cache = TempDir::new().unwrap();
    // Opened with its lease (as the command line does), so that the only
    // requests after the plan changes are the pack reads.
    let through = larder::repo::Repo::open_with(
        s3_backend(&url, s3.settings_via(&proxy.endpoint())),
        PASSWORD.as_bytes(),
        cache.path(),
        Some(larder::lease::LeaseKind::Read),
    )
    .await
    .unwrap();
    proxy.set_plan(Plan::CorruptDownload);
    let err = cat_bytes(&through, &snap).await.unwrap_err();
    assert!(err.is_damage(), "{err:?}");
    assert!(proxy.injected().corrupted >= 1);
}

#[test]
fn copy_sends_local_snapshots_off_site_to_s3_once() {
    let Some(s3) = s3() else { return };
    let local = CliRepo::init();
    let dump = dump_text(100_000, 11);
    local.backup_stdin("orders", &dump);
    let remote = S3Cli {
        url: s3.fresh_url(),
        s3,
        cache: TempDir::new().unwrap(),
    };
    let mut init = remote.cmd(&[
        "init",
        "--kdf-memory",
        "1",
        "--kdf-passes",
        "1",
        "--copy-chunker-params-from",
        local.repo.to_str().unwrap(),
    ]);
    init.env("LARDER_FROM_PASSWORD", PASSWORD);
    assert_success(&init.output().unwrap());

    let copy = || {
        let mut cmd = local.cmd(&["--json", "copy", "--to", &remote.url]);
        remote.s3.env(&mut cmd);
        let out = cmd.env("LARDER_TO_PASSWORD", PASSWORD).output().unwrap();
        assert_success(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = copy();
    assert_eq!(first["copied"], 1, "{first}");
    assert!(
        first["requests"]["bytes_up"].as_u64().unwrap() > 10_000,
        "{first}"
    );
    let second = copy();
    assert_eq!(second["skipped"], 1, "{second}");
    // Nothing but the destination's lease.
    assert_eq!(second["requests"]["put"], 1, "{second}");

    let out = remote.run(&["cat", "latest", "--source", "orders"], b"");
    assert_success(&out);
    assert!(out.stdout == dump);
}
