//! The `Backend` contract (see `src/backend.rs`), run unchanged against
//! every implementation.

use std::sync::Arc;

use bytes::Bytes;
use larder::Error;
use larder::backend::{Backend, LocalBackend, MemoryBackend, Put};

pub(crate) async fn contract(backend: Arc<dyn Backend>) {
    let b = backend.as_ref();
    b.create_root().await.unwrap();

    // put_if_absent creates once; a second put leaves the first bytes.
    assert_eq!(
        b.put_if_absent("keys/aa", Bytes::from_static(b"first"))
            .await
            .unwrap(),
        Put::Created
    );
    assert_eq!(
        b.put_if_absent("keys/aa", Bytes::from_static(b"second"))
            .await
            .unwrap(),
        Put::Existed
    );
    assert_eq!(&b.get("keys/aa", u64::MAX).await.unwrap()[..], b"first");

    // Empty objects are objects.
    assert_eq!(
        b.put_if_absent("keys/empty", Bytes::new()).await.unwrap(),
        Put::Created
    );
    assert_eq!(b.get("keys/empty", u64::MAX).await.unwrap().len(), 0);

    // get reads no object larger than the caller allows, and says so.
    assert_eq!(&b.get("keys/aa", 5).await.unwrap()[..], b"first");
    let err = b.get("keys/aa", 4).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { object, .. } if object == "keys/aa"),
        "{err}"
    );

    // get of a missing object is NotFound, never empty bytes.
    assert!(matches!(
        b.get("keys/missing", u64::MAX).await,
        Err(Error::NotFound { .. })
    ));

    // get_range returns exactly the range; past the end is an error.
    let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    b.put_if_absent("packs/ab/abcd", Bytes::from(body.clone()))
        .await
        .unwrap();
    assert_eq!(
        &b.get_range("packs/ab/abcd", 100..356).await.unwrap()[..],
        &body[100..356]
    );
    assert_eq!(
        &b.get_range("packs/ab/abcd", 9_990..10_000).await.unwrap()[..],
        &body[9_990..]
    );
    assert!(b.get_range("packs/ab/abcd", 9_990..10_001).await.is_err());
    assert!(matches!(
        b.get_range("packs/ab/none", 0..1).await,
        Err(Error::NotFound { .. })
    ));

    // list covers every object under the prefix, across more than one page
    // of a typical object store (1000), with sizes, and nothing else.
    for i in 0..1_100u32 {
        let name = format!("snapshots/{i:08x}");
        b.put_if_absent(&name, Bytes::from(vec![7u8; (i % 5) as usize]))
            .await
            .unwrap();
    }
    let listed = b.list("snapshots/").await.unwrap();
    assert_eq!(listed.len(), 1_100);
    assert!(listed.iter().all(|o| o.name.starts_with("snapshots/")));
    let one = listed
        .iter()
        .find(|o| o.name == "snapshots/00000003")
        .unwrap();
    assert_eq!(one.size, 3);
    let packs = b.list("packs/").await.unwrap();
    assert_eq!(
        packs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["packs/ab/abcd"]
    );
    assert_eq!(packs[0].size, 10_000);
    assert!(b.list("index/").await.unwrap().is_empty());

    // delete removes; deleting again succeeds.
    b.delete("keys/aa").await.unwrap();
    assert!(matches!(
        b.get("keys/aa", u64::MAX).await,
        Err(Error::NotFound { .. })
    ));
    b.delete("keys/aa").await.unwrap();
    assert_eq!(
        b.put_if_absent("keys/aa", Bytes::from_static(b"again"))
            .await
            .unwrap(),
        Put::Created
    );

    // Racing creators: exactly one wins, and its bytes are the ones stored.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let backend = Arc::clone(&backend);
        tasks.push(tokio::spawn(async move {
            (
                i,
                backend
                    .put_if_absent("locks/race", Bytes::from(vec![i; 1000]))
                    .await
                    .unwrap(),
            )
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, put) = t.await.unwrap();
        if put == Put::Created {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        &b.get("locks/race", u64::MAX).await.unwrap()[..],
        &vec![winners[0]; 1000][..]
    );

    // Names that could escape the namespace are refused.
    for bad in [
        "../x",
        "keys/../config",
        "/etc/passwd",
        "keys//a",
        "Keys/A",
        "",
    ] {
        assert!(
            b.put_if_absent(bad, Bytes::from_static(b"x"))
                .await
                .is_err(),
            "{bad:?}"
        );
        assert!(b.get(bad, u64::MAX).await.is_err(), "{bad:?}");
    }

    // Initialising storage that holds objects is refused.
    assert!(matches!(
        b.create_root().await,
        Err(Error::AlreadyInitialised { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_backend_meets_the_contract() {
    contract(Arc::new(MemoryBackend::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_backend_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    contract(Arc::new(LocalBackend::new(&root))).await;
    // No temporary files survive successful writes.
    let leftovers: Vec<_> = crate::support::files_under(&root)
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_listing_skips_temporary_files_and_fails_on_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let backend = LocalBackend::new(&root);
    backend.create_root().await.unwrap();
    backend
        .put_if_absent("index/aa", Bytes::from_static(b"x"))
        .await
        .unwrap();
    // A temporary file left by a crash mid-write is not an object.
    std::fs::write(root.join("index/.tmp-0123"), b"partial").unwrap();
    let listed = backend.list("index/").await.unwrap();
    assert_eq!(
        listed.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["index/aa"]
    );
    // A listing error is never reported as emptiness.
    std::fs::remove_dir_all(root.join("snapshots")).unwrap();
    assert!(backend.list("snapshots/").await.is_err());
}
