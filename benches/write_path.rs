//! Throughput of each write-path stage (chunk, hash, compress, encrypt,
//! seal with verification) and of the whole pipeline, in bytes per second.
//!
//! Stage benches run on one core; the pipeline bench uses every core, so its
//! figure divided by the core count is the per-core rate. Inputs are seeded:
//! dump-like text (compressible, as `pg_dump` output) and random bytes.
//!
//! Run: `cargo bench --bench write_path` (results in target/criterion).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder::backend::MemoryBackend;
use larder::chunker::Chunker;
use larder::config::{Config, STREAM_PROFILE};
use larder::hash::{BlobHasher, RepoId};
use larder::key::KdfParams;
use larder::ops::backup::{BackupInput, BackupOptions};
use larder::repo::{InitOptions, Repo};
use larder::seal::{Codec, ObjectKind, Sealer};
use larder::source::StreamInput;

const STAGE_BYTES: usize = 64 << 20;
const PIPELINE_BYTES: usize = 256 << 20;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Rows shaped like pgbench's and an orders table's COPY data.
fn dump_text(len: usize) -> Vec<u8> {
    let noise = random(len / 4, 7);
    let mut out = Vec::with_capacity(len + 200);
    let mut i = 0usize;
    while out.len() < len {
        let n = u64::from_le_bytes(
            noise[(i * 8) % (noise.len() - 8)..][..8]
                .try_into()
                .unwrap(),
        );
        if i.is_multiple_of(3) {
            writeln!(
                out,
                "{i}\t{}\t{}\t{:<84}",
                n % 1000,
                (n >> 20) % 100_000,
                ""
            )
            .unwrap();
        } else {
            writeln!(
                out,
                "{i}\tcustomer-{}\t{}.{:02}\t{{\"sku\": \"{:x}\", \"qty\": {}}}",
                n % 50_000,
                n % 10_000,
                n % 100,
                n >> 32,
                n % 9
            )
            .unwrap();
        }
        i += 1;
    }
    out.truncate(len);
    out
}

fn chunker() -> Chunker {
    let config = Config::new(RepoId([1; 32]), 0x5eed, 0);
    Chunker::new(config.profile(STREAM_PROFILE).unwrap(), config.chunker_seed)
}

fn stages(c: &mut Criterion) {
    let inputs = [
        ("dump_text", dump_text(STAGE_BYTES)),
        ("random", random(STAGE_BYTES, 3)),
    ];
    let chunker = chunker();
    let mut group = c.benchmark_group("stage");
    group.sample_size(10);
    for (name, data) in &inputs {
        group.throughput(Throughput::Bytes(data.len() as u64));
        let chunks: Vec<bytes::Bytes> = chunker.chunks(&data[..]).map(Result::unwrap).collect();
        group.bench_function(format!("chunk/{name}"), |b| {
            b.iter(|| {
                chunker
                    .chunks(black_box(&data[..]))
                    .map(|c| c.unwrap().len())
                    .sum::<usize>()
            })
        });
        let hasher = BlobHasher::new([9; 32]);
        group.bench_function(format!("hash/{name}"), |b| {
            b.iter(|| {
                chunks
                    .iter()
                    .map(|c| hasher.blob_id(ObjectKind::DataBlob, black_box(c)).0[0] as usize)
                    .sum::<usize>()
            })
        });
        let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
        group.bench_function(format!("compress_zstd1/{name}"), |b| {
            b.iter(|| {
                chunks
                    .iter()
                    .map(|c| compressor.compress(black_box(c)).unwrap().len())
                    .sum::<usize>()
            })
        });
        let sealer = Sealer::new(&[5; 32], RepoId([6; 32]), larder::config::FORMAT_VERSION);
        let mut codec = Codec::new(1);
        group.bench_function(format!("encrypt/{name}"), |b| {
            b.iter(|| {
                chunks
                    .iter()
                    .map(|c| {
                        sealer
                            .seal(
                                &mut codec,
                                ObjectKind::DataBlob,
                                &[1; 32],
                                black_box(c),
                                false,
                            )
                            .len()
                    })
                    .sum::<usize>()
            })
        });
        group.bench_function(format!("seal_and_verify/{name}"), |b| {
            b.iter(|| {
                chunks
                    .iter()
                    .map(|c| {
                        let sealed = sealer.seal(
                            &mut codec,
                            ObjectKind::DataBlob,
                            &[1; 32],
                            black_box(c),
                            true,
                        );
                        sealer
                            .open(&mut codec, ObjectKind::DataBlob, &[1; 32], &sealed, c.len())
                            .unwrap()
                            .len()
                    })
                    .sum::<usize>()
            })
        });
        // What the write path does: decompress-and-compare every compressed
        // blob, open whole one in 64.
        group.bench_function(format!("seal_checked/{name}"), |b| {
            b.iter(|| {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        sealer
                            .seal_checked(
                                &mut codec,
                                ObjectKind::DataBlob,
                                &[1; 32],
                                black_box(c),
                                i % 64 == 0,
                            )
                            .unwrap()
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let data = Arc::new(dump_text(PIPELINE_BYTES));
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("first_backup/dump_text", |b| {
        b.iter(|| {
            // A fresh repository each time: every chunk is new.
            runtime.block_on(async {
                let memory = Arc::new(MemoryBackend::new());
                let repo = Repo::init(memory, b"pw", init_options(), cache.path())
                    .await
                    .unwrap();
                backup(&repo, &data).await
            })
        })
    });
    let repo = runtime.block_on(async {
        let repo = Repo::init(
            Arc::new(MemoryBackend::new()),
            b"pw",
            init_options(),
            cache.path(),
        )
        .await
        .unwrap();
        backup(&repo, &data).await;
        repo
    });
    group.bench_function("unchanged_rebackup/dump_text", |b| {
        b.iter(|| runtime.block_on(backup(&repo, &data)))
    });
    group.finish();
}

fn init_options() -> InitOptions {
    InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            passes: 1,
            lanes: 1,
        },
        profiles: vec![],
        chunker_seed: None,
        compression_level: None,
        data_pack_size: None,
        list_fanout: None,
        host: "bench".into(),
        user: "bench".into(),
    }
}

async fn backup(repo: &Repo, data: &Arc<Vec<u8>>) -> u64 {
    let reader = std::io::Cursor::new(Arc::clone(data).as_ref().clone());
    let summary = larder::ops::backup::backup(
        repo,
        BackupOptions {
            source: "bench".into(),
            input: BackupInput::Stream {
                input: StreamInput::Reader(Box::new(reader)),
                name: "dump".into(),
            },
            kind: "stream".into(),
            allow_incomplete: false,
            unpack: true,
            tags: vec![],
            host: "bench".into(),
            time: None,
            parent: None,
            progress: Arc::default(),
        },
    )
    .await
    .unwrap();
    summary.bytes_added
}

criterion_group!(benches, stages, pipeline);
criterion_main!(benches);
