//! Unchanged, shifted or lightly edited input stores (almost) nothing new.

use crate::support::*;

fn stored_share(added: u64, input: usize) -> f64 {
    added as f64 / input as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identical_rebackup_stores_under_a_thousandth() {
    let (repo, _) = memory_repo().await;
    let data = dump_text(500_000, 11);
    let first = repo.backup("db", &data).await.unwrap();
    let second = repo.backup("db", &data).await.unwrap();
    assert_eq!(
        second.bytes_read,
        data.len() as u64,
        "a stream is always read in full"
    );
    assert!(
        stored_share(second.bytes_added, data.len()) < 0.001,
        "second backup added {} of {} bytes",
        second.bytes_added,
        data.len()
    );
    // Every data and list blob is reused; only the root tree (whose node
    // records the new snapshot time) is new.
    assert_eq!(second.blobs_new, 1);
    assert_eq!(second.blobs_reused, first.blobs_new - 1);
    // Both snapshots read back the same bytes.
    assert!(cat_bytes(&repo.repo, &first.snapshot_id).await.unwrap() == data);
    assert!(cat_bytes(&repo.repo, &second.snapshot_id).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insertion_at_the_front_stores_little() {
    let (repo, _) = memory_repo().await;
    let data = random_bytes(8 << 20, 5);
    let first = repo.backup("db", &data).await.unwrap();
    let mut shifted = b"-- a new header line that shifts every byte after it\n".to_vec();
    shifted.extend_from_slice(&data);
    let second = repo.backup("db", &shifted).await.unwrap();
    assert!(
        stored_share(second.bytes_added, shifted.len()) < 0.02,
        "added {} after a 54-byte insertion (first run added {})",
        second.bytes_added,
        first.bytes_added
    );
    assert!(cat_bytes(&repo.repo, &second.snapshot_id).await.unwrap() == shifted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scattered_row_updates_store_a_fraction() {
    let (repo, _) = memory_repo().await;
    let day1 = dump_text(400_000, 21);
    let first = repo.backup("db", &day1).await.unwrap();
    // Change one line in every ~1 MB of the dump.
    let mut day2 = day1.clone();
    for at in (100_000..day2.len()).step_by(1 << 20) {
        let line_start = day2[..at].iter().rposition(|b| *b == b'\n').unwrap() + 1;
        day2[line_start..line_start + 6].copy_from_slice(b"999999");
    }
    let second = repo.backup("db", &day2).await.unwrap();
    assert!(
        second.bytes_added * 10 < first.bytes_added,
        "day 2 added {} against day 1's {}",
        second.bytes_added,
        first.bytes_added
    );
    assert!(cat_bytes(&repo.repo, &second.snapshot_id).await.unwrap() == day2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_spans_sources_and_repeats_within_a_stream() {
    let (repo, _) = memory_repo().await;
    let block = random_bytes(1 << 20, 77);
    let repeated: Vec<u8> = block.iter().copied().cycle().take(10 << 20).collect();
    let first = repo.backup("one", &repeated).await.unwrap();
    assert!(
        first.bytes_added < 2 << 20,
        "ten copies of 1 MiB stored {} bytes",
        first.bytes_added
    );
    let other = repo.backup("another-source", &repeated).await.unwrap();
    assert!(
        other.bytes_added < 4096,
        "a second source added {}",
        other.bytes_added
    );
}
