//! A dump command run as a child process.
//!
//! The command runs without a shell (no pipe can lose its exit status). Its
//! standard output is the stream; the last few KiB of its standard error are
//! kept for the error message; its exit status decides whether the snapshot
//! is committed. If the backup fails for another reason (storage down, disk
//! full), the child is killed rather than left to block on a full pipe.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::snapshot::CommandRecord;

/// Bytes of standard error kept for messages.
const STDERR_TAIL: usize = 4096;

/// Dumpers whose `--version` larder records with the snapshot.
const KNOWN_DUMPERS: &[&str] = &[
    "pg_dump",
    "pg_dumpall",
    "redis-cli",
    "neo4j-admin",
    "mysqldump",
    "mariadb-dump",
    "mongodump",
];

/// A running dump command.
#[derive(Debug)]
pub(crate) struct RunningCommand {
    argv: Vec<String>,
    source_name: String,
    child: Arc<Mutex<Child>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    version: Option<String>,
}

/// Kills a running command, and everything it started, from another thread.
#[derive(Clone, Debug)]
pub(crate) struct Killer(Arc<Mutex<Child>>);

impl Killer {
    /// Sends SIGKILL to the command's process group (the command runs as
    /// its leader), so helpers it spawned (`sh -c '… &'`, `docker exec`
    /// clients) die with it.
    pub fn kill(&self) {
        let mut child = self.0.lock().expect("child lock");
        // While the leader is unreaped its pid cannot be reused, so the
        // group id is still ours to signal.
        if matches!(child.try_wait(), Ok(None))
            && let Some(group) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = child.kill();
    }
}

impl RunningCommand {
    /// Starts `argv` with its standard output piped to the caller.
    pub fn spawn(argv: &[String], source_name: &str) -> Result<(RunningCommand, ChildStdout)> {
        let version = dumper_version(&argv[0]);
        let mut command = without_secrets(&argv[0]);
        let mut child = command
            .args(&argv[1..])
            // Its own process group, so a failed backup can kill the whole
            // dump (pipelines and helpers included), not only its leader.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::SourceFailed {
                source_name: source_name.into(),
                reason: format!("cannot start {:?}: {e}", argv[0]),
                stderr_tail: String::new(),
            })?;
        let stdout = child.stdout.take().expect("stdout was piped");
        super::enlarge_pipe(std::os::fd::AsFd::as_fd(&stdout));
        let mut stderr_pipe = child.stderr.take().expect("stderr was piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&stderr);
        let stderr_thread = std::thread::Builder::new()
            .name("larder-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stderr_pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut tail = tail.lock().expect("stderr lock");
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > STDERR_TAIL * 2 {
                        let cut = tail.len() - STDERR_TAIL;
                        tail.drain(..cut);
                    }
                }
            })
            .map_err(|e| Error::io("starting a thread for", "stderr", e))?;
        Ok((
            RunningCommand {
                argv: argv.to_vec(),
                source_name: source_name.into(),
                child: Arc::new(Mutex::new(child)),
                stderr,
                stderr_thread: Some(stderr_thread),
                version,
            },
            stdout,
        ))
    }

    /// A handle that can kill the child from elsewhere.
    pub(crate) fn killer(&self) -> Killer {
        Killer(Arc::clone(&self.child))
    }

    /// Waits for the child to exit. A zero exit gives the record to store
    /// with the snapshot; anything else is [`Error::SourceFailed`] with the
    /// tail of its standard error.
    pub fn wait(mut self) -> Result<CommandRecord> {
        let status = self.reap();
        let tail = self.stderr_tail();
        match status {
            Ok(status) if status.success() => Ok(CommandRecord {
                argv: self.argv.clone(),
                exit_code: 0,
                version: self.version.clone(),
            }),
            Ok(status) => Err(Error::SourceFailed {
                source_name: self.source_name.clone(),
                reason: describe_status(&self.argv[0], status),
                stderr_tail: tail,
            }),
            Err(e) => Err(Error::SourceFailed {
                source_name: self.source_name.clone(),
                reason: format!("cannot wait for {:?}: {e}", self.argv[0]),
                stderr_tail: tail,
            }),
        }
    }

    /// Kills the child (if still running), reaps it, and turns `reason` into
    /// an error carrying its standard error tail.
    pub(crate) fn abandon(mut self, reason: String) -> Error {
        self.killer().kill();
        let _ = self.reap();
        Error::SourceFailed {
            source_name: self.source_name.clone(),
            stderr_tail: self.stderr_tail(),
            reason,
        }
    }

    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        // Poll rather than block in wait() while holding the lock, so the
        // killer can still reach the child.
        loop {
            if let Some(status) = self.child.lock().expect("child lock").try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr_tail(&mut self) -> String {
        // A grandchild may hold stderr open after the child exits; wait a
        // moment for the reader, then take what has arrived.
        if let Some(thread) = self.stderr_thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        tail_lines(&self.stderr.lock().expect("stderr lock"))
    }
}

impl Drop for RunningCommand {
    fn drop(&mut self) {
        // A command dropped without wait() or abandon() belongs to a backup
        // that was cancelled: never leave it running.
        self.killer().kill();
        let _ = self.child.lock().expect("child lock").wait();
    }
}

/// Whether an environment variable is one of larder's secrets
/// (`LARDER_PASSWORD`, `LARDER_PASSWORD_FILE`, `LARDER_PASSWORD_COMMAND`,
/// `LARDER_TO_PASSWORD`, `LARDER_NEW_PASSWORD`, and the like).
pub(crate) fn is_secret_variable(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with("LARDER_") && n.contains("PASSWORD"))
}

/// How a process ended, for messages: `PROGRAM exited with status N`, or
/// the signal that killed it.
pub(crate) fn describe_status(program: &str, status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("{program} exited with status {code}")
    } else if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGPIPE => " (SIGPIPE)",
            libc::SIGINT => " (SIGINT)",
            libc::SIGABRT => " (SIGABRT)",
            _ => "",
        };
        format!("{program} was killed by signal {signal}{name}")
    } else {
        format!("{program} ended with {status}")
    }
}

/// First line of `PROGRAM --version` for known dumpers; `None` for others or
/// if it does not answer within a few seconds.
fn dumper_version(program: &str) -> Option<String> {
    let base = std::path::Path::new(program).file_name()?.to_str()?;
    if !KNOWN_DUMPERS.contains(&base) {
        return None;
    }
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    out.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// A command for `program` without larder's own secrets in its
/// environment: a command that prints its environment (or a dumper that
/// logs it) must not store the passphrase in a snapshot.
pub fn without_secrets(program: &str) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if is_secret_variable(&name) {
            command.env_remove(name);
        }
    }
    command
}

/// The end of a command's output: the last [`STDERR_TAIL`] bytes, whole
/// lines where possible, at most the last 20.
pub(crate) fn tail_lines(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs a hook (`backup --before` / `--after`) to its end: no shell, no
/// standard input, larder's secrets removed from its environment, `env`
/// added to it. Its output is kept and shown only when it fails.
pub fn run_hook(which: &str, argv: &[String], env: &[(&str, String)]) -> Result<()> {
    let Some(program) = argv.first() else {
        return Err(Error::InvalidArgument(format!("the {which} hook is empty")));
    };
    let mut command = without_secrets(program);
    let out = command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::HookFailed {
            hook: which.into(),
            reason: format!("cannot run {program:?}: {e}"),
            output_tail: String::new(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = out.stdout;
    output.extend_from_slice(&out.stderr);
    Err(Error::HookFailed {
        hook: which.into(),
        reason: describe_status(program, out.status),
        output_tail: tail_lines(&output),
    })
}
