//! Redis drills: `redis-check-rdb` on the file, and optionally a throwaway
//! `redis-server` (loopback only, no persistence, its directory the
//! drill's private one) that loads it, answers `PING`, and counts the keys
//! of every database; it is shut down however the drill ends.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Context, Findings, describe_failure, run, verifier_command};
use crate::error::{Error, Result};
use crate::source::command::tail_lines;

/// How long a throwaway server may take to load the file.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Attempts at a free port (another process may take the one found before
/// the server binds it).
const PORT_ATTEMPTS: usize = 3;

pub(super) fn verify(context: &Context, path: &Path, findings: &mut Findings) -> Result<()> {
    let mut check = verifier_command("redis-check-rdb");
    check.arg(path);
    let output = run(&context.children, check)?;
    if !output.status.success() {
        findings.failed(
            "redis-check-rdb",
            describe_failure("redis-check-rdb", &output),
        );
        return Ok(());
    }
    match keys_read(&String::from_utf8_lossy(&output.stdout)) {
        Some(keys) => {
            findings.passed(format!("redis-check-rdb: {keys} keys read"));
            findings.count("keys_checked", keys);
        }
        None => findings.passed("redis-check-rdb: ok"),
    }
    findings.summary = Some("redis-check-rdb accepts the file".into());
    if !context.redis_server {
        return Ok(());
    }

    // The server loads `dump.rdb` from the scratch directory.
    let rdb = context.scratch.join("dump.rdb");
    std::fs::rename(path, &rdb).map_err(|e| Error::io("renaming", path, e))?;
    let mut server = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        match Server::start(context, port)? {
            Started::Ready(s) => {
                server = Some(s);
                break;
            }
            Started::PortTaken => continue,
            Started::Failed(why) => {
                findings.failed("load into a throwaway redis-server", why);
                return Ok(());
            }
        }
    }
    let Some(server) = server else {
        return Err(Error::DrillSetup {
            what: "start a throwaway redis-server".into(),
            reason: format!("no free loopback port after {PORT_ATTEMPTS} attempts"),
            output_tail: String::new(),
        });
    };
    let mut info = verifier_command("redis-cli");
    info.env_remove("REDISCLI_AUTH")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["INFO", "keyspace"]);
    let output = run(&context.children, info);
    server.shutdown(context);
    let output = output?;
    if !output.status.success() {
        findings.failed(
            "count keys in the throwaway redis-server",
            describe_failure("redis-cli", &output),
        );
        return Ok(());
    }
    let (keys, databases) = keyspace(&String::from_utf8_lossy(&output.stdout));
    findings.passed(format!(
        "loaded into a throwaway redis-server: {keys} keys in {databases} databases"
    ));
    findings.count("keys", keys);
    findings.count("databases", databases);
    findings.summary = Some(format!(
        "redis-server loads the file: {keys} keys in {databases} databases"
    ));
    Ok(())
}

/// The `N keys read` count of `redis-check-rdb`'s report.
fn keys_read(report: &str) -> Option<u64> {
    report.lines().find_map(|line| {
        let before = line
            .split(" keys read")
            .next()
            .filter(|b| b.len() < line.len())?;
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Total keys and databases in `INFO keyspace` (`db0:keys=3,expires=0,…`).
fn keyspace(info: &str) -> (u64, u64) {
    let mut keys = 0;
    let mut databases = 0;
    for line in info.lines() {
        let Some((db, fields)) = line.trim().split_once(':') else {
            continue;
        };
        if !db.starts_with("db") {
            continue;
        }
        if let Some(n) = fields
            .split(',')
            .find_map(|f| f.strip_prefix("keys="))
            .and_then(|n| n.parse::<u64>().ok())
        {
            keys += n;
            databases += 1;
        }
    }
    (keys, databases)
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::io("binding", "127.0.0.1:0", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("binding", "127.0.0.1:0", e))
}

/// A throwaway `redis-server`, killed when dropped.
struct Server {
    child: Arc<Mutex<Child>>,
    port: u16,
}

enum Started {
    Ready(Server),
    /// Another process took the port first.
    PortTaken,
    /// The server ended, or never answered, while loading the file.
    Failed(String),
}

impl Server {
    fn start(context: &Context, port: u16) -> Result<Started> {
        let log = context.scratch.join("redis.log");
        let mut command = verifier_command("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&context.scratch)
            .args([
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .map_err(|e| super::spawn_error("redis-server", "redis-server", e))?;
        let server = Server {
            child: Arc::new(Mutex::new(child)),
            port,
        };
        context.children.add(&server.child);
        let started = Instant::now();
        loop {
            let exited = server
                .child
                .lock()
                .expect("child lock")
                .try_wait()
                .map_err(|e| Error::DrillSetup {
                    what: "wait for redis-server".into(),
                    reason: e.to_string(),
                    output_tail: String::new(),
                })?;
            if let Some(status) = exited {
                context.children.remove(&server.child);
                let log = std::fs::read(&log).unwrap_or_default();
                let tail = tail_lines(&log);
                if tail.contains("Address already in use") {
                    return Ok(Started::PortTaken);
                }
                return Ok(Started::Failed(format!(
                    "{}: {}",
                    crate::source::command::describe_status("redis-server", status),
                    tail.trim_end()
                )));
            }
            if server.ping(context)? {
                return Ok(Started::Ready(server));
            }
            if started.elapsed() > LOAD_TIMEOUT {
                return Ok(Started::Failed(format!(
                    "it did not answer within {} s",
                    LOAD_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server answers `PING` (not while it is still loading).
    fn ping(&self, context: &Context) -> Result<bool> {
        let mut ping = verifier_command("redis-cli");
        // The throwaway server has no password: REDISCLI_AUTH is meant for
        // real ones.
        ping.env_remove("REDISCLI_AUTH").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "PING",
        ]);
        let output = run(&context.children, ping)?;
        Ok(output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "PONG")
    }

    /// Asks the server to stop without saving, then kills it if it has
    /// not within a few seconds.
    fn shutdown(self, context: &Context) {
        let mut shutdown = verifier_command("redis-cli");
        shutdown
            .env_remove("REDISCLI_AUTH")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["SHUTDOWN", "NOSAVE"]);
        let _ = run(&context.children, shutdown);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(
                self.child.lock().expect("child lock").try_wait(),
                Ok(Some(_))
            ) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        context.children.remove(&self.child);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("child lock");
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_sums_every_database() {
        let info =
            "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb5:keys=10,expires=0,avg_ttl=0\r\n";
        assert_eq!(keyspace(info), (13, 2));
        assert_eq!(keyspace("# Keyspace\r\n"), (0, 0));
    }

    #[test]
    fn the_key_count_of_redis_check_rdb_is_found() {
        let report = "[offset 0] Checking RDB file dump.rdb\n[offset 27] AUX FIELD redis-ver = '7.0.15'\n[info] 42 keys read\n[info] 0 expires\n";
        assert_eq!(keys_read(report), Some(42));
        assert_eq!(keys_read("[info] nothing\n"), None);
    }
}
