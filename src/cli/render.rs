//! Rendering: sizes, times, ids, warnings, and JSON.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use serde::Serialize;

/// Standard output was closed by its reader (`larder ls | head`): the
/// command ends quietly, as a listing into a closed pipe should.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Whether a closed standard output ends the command (a listing: what it
/// prints is all it does) rather than only its printing (a command whose
/// outcome is more than its output: `check`, `backup`, `restore`, …).
static LISTING: AtomicBool = AtomicBool::new(false);
/// Set once standard output was found closed.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Declares the running command a listing (see [`out`]).
pub fn set_listing(listing: bool) {
    LISTING.store(listing, Ordering::Relaxed);
}

/// Writes to standard output; nothing here panics on an I/O error, unlike
/// `println!`. Once standard output is closed (`larder ls | head`), a
/// listing stops with [`StdoutClosed`] (exit 0), and any other command
/// goes on unprinted, so its exit code still says what happened.
pub fn out(args: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    if !CLOSED.load(Ordering::Relaxed) {
        let mut stdout = std::io::stdout().lock();
        match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                CLOSED.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(anyhow::Error::new(e).context("writing to standard output")),
        }
    }
    if LISTING.load(Ordering::Relaxed) {
        Err(anyhow::Error::new(StdoutClosed))
    } else {
        Ok(())
    }
}

/// Writes to standard error, ignoring failure: there is nowhere left to
/// report it.
pub fn err(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Prints `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    out(format_args!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Prints `value` as one line of JSON on standard error (for commands whose
/// standard output carries data).
pub fn eprint_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    err(format_args!("{}\n", serde_json::to_string(value)?));
    Ok(())
}

/// Prints each warning on standard error.
pub fn warn_all(warnings: &[String]) {
    for w in warnings {
        err(format_args!("larder: warning: {w}\n"));
    }
}

/// `n` and the noun, its last word in the plural unless `n` is 1: "1
/// file", "2 files", "3 new blobs", "2 directories", "4 matches".
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    let plural = if let Some(stem) = noun.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        format!("{stem}ies")
    } else if noun.ends_with("ch") || noun.ends_with("sh") || noun.ends_with(['s', 'x']) {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    };
    format!("{n} {plural}")
}

/// Bytes in binary units with one decimal ("1.5 GiB").
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A snapshot time in local time, to the second, for tables.
pub fn local_time(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
    }
}
