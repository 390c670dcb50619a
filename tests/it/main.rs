//! The one integration-test binary. Each module tests one boundary:
//!
//! - `backend_contract`: the `Backend` contract, run unchanged against every backend.
//! - `round_trip`: backup then cat/restore reproduces the input bit for bit.
//! - `dedup`: unchanged or shifted input stores (almost) nothing new.
//! - `integrity`: damaged, missing or hostile objects fail closed, named.
//! - `faults`: storage that fails, lies or dies mid-backup loses nothing.
//! - `cli`: the binary end to end: exit codes, `--json` shapes, messages.
//! - `compat`: repositories written by earlier releases still read.
//! - `copy`: snapshots replicated between repositories.
//! - `databases`: real PostgreSQL and Redis dumps on loopback.
//! - `drill`: restore drills of real dumps and file trees, and their records.
//! - `trees`: file-tree backups, browsing and restore, split by behaviour
//!   under `trees/`: `backup` (re-scans, dedup), `walk` (symlink loops,
//!   unreadable, special and vanishing files, excludes), `limits` (odd
//!   names, long paths, huge directories), `restore`, `restore_safety`
//!   (crafted snapshots, symlinks in the target) and `browse` (ls, find,
//!   cat, diff, log).
//! - `s3`: a real S3 server (SeaweedFS) on loopback, directly and through a
//!   fault-injecting proxy (`fault_proxy`).
//! - `prune`: forget, prune and leases: space comes back and nothing a
//!   surviving snapshot needs is lost, under concurrency, crashes and faults.
//! - `safety`: prune and retention on damaged or tampered repositories
//!   delete nothing a kept snapshot needs.
//! - `hostile`: oversized objects, forged leases and junk key files fail
//!   clearly in bounded memory.
//! - `processes`: signals, closed pipes, the dump's environment, dead
//!   processes' leases, exit codes.
//! - `regressions`: regression tests for fixed bugs, each named after the
//!   behaviour it guards.

mod support;

mod backend_contract;
mod cli;
mod compat;
mod copy;
mod databases;
mod dedup;
mod drill;
mod fault_proxy;
mod faults;
mod hostile;
mod integrity;
mod plans;
mod processes;
mod prune;
mod regressions;
mod round_trip;
mod s3;
mod safety;
mod trees;
