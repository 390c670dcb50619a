//! Where backup data comes from.
//!
//! A stream source (standard input, a dump command's standard output, or
//! any reader) becomes one file in its snapshot. A stream is always read in
//! full, never judged unchanged from an earlier snapshot, and a source that
//! fails (a non-zero exit, a signal, a read error, no data at all) produces
//! no snapshot.

pub mod command;
pub mod tree;

use std::io::Read;

pub(crate) use command::RunningCommand;

/// A stream to back up.
pub enum StreamInput {
    /// This process's standard input.
    Stdin,
    /// A command run without a shell; its standard output is the stream and
    /// its exit status decides whether the snapshot is committed.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// Any reader (library callers and tests).
    Reader(Box<dyn Read + Send>),
}

impl std::fmt::Debug for StreamInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamInput::Stdin => f.write_str("Stdin"),
            StreamInput::Command { argv } => f.debug_struct("Command").field("argv", argv).finish(),
            StreamInput::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

/// Asks the kernel for a 1 MiB buffer on a pipe, so the reader gets large
/// reads instead of 64 KiB ones. Best effort: not a pipe, or a limit below
/// 1 MiB (`/proc/sys/fs/pipe-max-size`), leaves it as it was.
pub(crate) fn enlarge_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20);
}

/// Splits a `--command` string into an argument vector with shell-like
/// quoting rules, without ever invoking a shell.
pub fn split_command(command: &str) -> crate::Result<Vec<String>> {
    let argv = shell_words::split(command).map_err(|e| {
        crate::Error::InvalidArgument(format!("cannot split command {command:?}: {e}"))
    })?;
    if argv.is_empty() {
        return Err(crate::Error::InvalidArgument("the command is empty".into()));
    }
    Ok(argv)
}
