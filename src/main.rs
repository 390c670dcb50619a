//! The `larder` binary: parses the command line, runs one library verb on a
//! tokio runtime, and turns the outcome into an exit code.
//!
//! Exit codes: 0 success, 1 failure, 3 finished with warnings, 128 + N
//! when interrupted by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP). Errors are
//! printed as one line (plus a command's stderr tail where there is one),
//! never as a backtrace.

mod cli;

use std::process::ExitCode;

use std::io::Write;

use clap::Parser;

fn main() -> ExitCode {
    // glibc raises its mmap threshold after large buffers are freed, after
    // which 16 MiB packs come from per-thread arenas that fragment and never
    // shrink: a 4 GiB backup peaked at 173 MiB. A fixed 8 MiB threshold
    // keeps read blocks (4 MiB) on the heap, where they are reused without
    // page faults, and returns each pack to the system when it is freed
    // (docs/PERFORMANCE.md, "Memory"). A fixed threshold also fixes the
    // trim threshold at its default of 128 KiB, so free memory at the top
    // of each arena went back to the system almost at once and came back as
    // page faults: a tree backup took 130,000 of them, 16 MiB keeps 57,000
    // of those for 25 MiB more at peak.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
    raise_open_file_limit();
    std::panic::set_hook(Box::new(|info| {
        // A panic inside the compressed-stream analysis is caught and
        // handled (the input is stored as it came); nothing to report.
        if larder::panic_is_contained() {
            return;
        }
        // Never panics itself, even with standard error closed.
        let _ = writeln!(
            std::io::stderr(),
            "larder: internal error: {info}; this is a bug, please report it"
        );
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
            let _ = writeln!(
                std::io::stderr(),
                "larder: error: cannot start the async runtime: {e}"
            );
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(cli::run(args));
    // Blocking tasks of an operation dropped by an interrupt may still run;
    // the process ends without waiting for them.
    runtime.shutdown_background();
    match outcome {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Warnings) => ExitCode::from(3),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "larder: error: {e:#}");
            if let Some(hint) = flag_hint(&e) {
                let _ = writeln!(std::io::stderr(), "larder: hint: {hint}");
            }
            let code = exit_code(&e);
            if code > 128 {
                die_by_signal(i32::from(code - 128));
            }
            ExitCode::from(code)
        }
    }
}

/// Ends the process by `signal` itself, after larder has cleaned up: a
/// shell then knows the command was interrupted (`$?` is 128 + N either
/// way, but a script's loop stops on a Ctrl-C only when the child died of
/// it, and systemd counts a SIGTERM death as a clean stop).
fn die_by_signal(signal: i32) {
    // SAFETY: restoring the default action and raising a signal are
    // async-signal-safe calls on this process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// The command-line option that answers a refusal, for library errors that
/// describe one (the library names no options).
fn flag_hint(error: &anyhow::Error) -> Option<&'static str> {
    Some(match error.downcast_ref::<larder::Error>()? {
        larder::Error::NoRetentionRule => {
            "give at least one --keep-* rule (see `larder forget --help`)"
        }
        larder::Error::WouldEmptyGroup { .. } => "pass --allow-empty if that is meant",
        larder::Error::IncompleteDump { .. } => {
            "fix the dump; --allow-incomplete stores it anyway, tagged incomplete"
        }
        larder::Error::DrillKindUnknown { .. } => {
            "pass --kind files, postgres-custom, postgres-directory, postgres-plain, redis-rdb or neo4j-dump"
        }
        larder::Error::TargetFilesExist { .. } => {
            "pass --overwrite always to replace them after a safety snapshot, or restore into an empty directory"
        }
        _ => return None,
    })
}

/// 128 + the signal for an interrupted command (as shells report a process
/// killed by it), 1 for every other failure.
fn exit_code(error: &anyhow::Error) -> u8 {
    let signal = error.chain().find_map(|cause| {
        if let Some(interrupted) = cause.downcast_ref::<cli::Interrupted>() {
            Some(interrupted.signal)
        } else if let Some(larder::Error::Interrupted { signal }) = cause.downcast_ref() {
            Some(*signal)
        } else {
            None
        }
    });
    signal.map_or(1, |s| u8::try_from(128 + s).unwrap_or(1))
}

/// Raises the soft limit on open descriptors towards the hard one (at most
/// 65,536). A tree backup holds a directory per level of the walk, one per
/// directory scanned ahead and one per batch of file jobs in flight (at
/// most about 17 batches per core), besides packs, the catalog and sockets;
/// the common soft limit of 1,024 is tight on many cores.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = limit.rlim_max.min(65_536);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
