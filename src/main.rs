//! The `larder` binary: parses the command line, runs one library verb on a
//! tokio runtime, and turns the outcome into an exit code.
//!
//! Exit codes: 0 success, 1 failure, 3 finished with warnings. Errors are
//! printed as one line (plus a command's stderr tail where there is one),
//! never as a backtrace.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // glibc raises its mmap threshold after large buffers are freed, after
    // which 16 MiB packs come from per-thread arenas that fragment and never
    // shrink: a 4 GiB backup peaked at 173 MiB. A fixed 8 MiB threshold
    // keeps read blocks (4 MiB) on the heap, where they are reused without
    // page faults, and returns each pack to the system when it is freed
    // (docs/PERFORMANCE.md, "Memory").
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("larder: internal error: {info}; this is a bug, please report it");
    }));
    let args = cli::Cli::parse();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("larder: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Warnings) => ExitCode::from(3),
        Err(e) => {
            eprintln!("larder: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
