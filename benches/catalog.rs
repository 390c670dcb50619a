//! Catalog speed at realistic blob counts: bulk absorption of index objects,
//! and dedup lookups of present and absent blob ids.
//!
//! `LARDER_BENCH_BLOBS` sets the blob count (default 1,000,000; the figures
//! in docs/PERFORMANCE.md also use 10,000,000).
//!
//! Run: `cargo bench --bench catalog`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use larder::catalog::Catalog;
use larder::hash::{BlobHasher, BlobId, IndexId, PackId};
use larder::index::{IndexObject, IndexedPack};
use larder::pack::{PackEntry, PackKind};
use larder::seal::ObjectKind;

fn blob(i: u64) -> BlobId {
    BlobHasher::new([3; 32]).blob_id(ObjectKind::DataBlob, &i.to_le_bytes())
}

fn build(path: &std::path::Path, n: u64) -> Catalog {
    let mut catalog = Catalog::open(path).unwrap();
    let started = Instant::now();
    let per_pack = 1024u64;
    let per_index = 65_536u64;
    let mut i = 0u64;
    while i < n {
        let mut index = IndexObject::default();
        let end = (i + per_index).min(n);
        while i < end {
            let pack_end = (i + per_pack).min(end);
            index.packs.push(IndexedPack {
                id: PackId(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                kind: PackKind::Data.code(),
                size: per_pack * 4000,
                blobs: (i..pack_end)
                    .map(|j| PackEntry {
                        kind: ObjectKind::DataBlob.code(),
                        id: blob(j),
                        offset: (j - i) * 4000,
                        length: 4000,
                        raw_length: 16_384,
                    })
                    .collect(),
            });
            i = pack_end;
        }
        catalog
            .absorb_index(
                IndexId(*blake3::hash(&end.to_le_bytes()).as_bytes()),
                &index,
            )
            .unwrap();
    }
    catalog.checkpoint().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(path).unwrap().len();
    eprintln!(
        "absorbed {n} blobs in {secs:.1} s ({:.0} blobs/s); catalog {:.1} MiB ({:.1} bytes/blob)",
        n as f64 / secs,
        size as f64 / 1048576.0,
        size as f64 / n as f64
    );
    catalog
}

fn lookups(c: &mut Criterion) {
    let n: u64 = std::env::var("LARDER_BENCH_BLOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let catalog = build(&dir.path().join("catalog.sqlite"), n);
    let mut group = c.benchmark_group(format!("catalog_{n}"));
    let mut i = 0u64;
    group.bench_function("has_blob/present", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            assert!(catalog.has_blob(black_box(&blob(i))).unwrap());
        })
    });
    group.bench_function("has_blob/absent", |b| {
        b.iter(|| {
            i += 1;
            assert!(!catalog.has_blob(black_box(&blob(n + i))).unwrap());
        })
    });
    group.bench_function("locate/present", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            catalog.locate(black_box(&blob(i))).unwrap().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
