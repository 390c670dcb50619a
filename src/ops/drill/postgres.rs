//! PostgreSQL drills: the archive's completeness and table of contents
//! (larder's own parser, `dump/postgres.rs`) and `pg_restore --list`; with a database
//! URL, a full restore into a scratch database that is always dropped,
//! then exact row counts (`count(*)` of every user table, never the
//! statistics' estimates), and every `TABLE DATA` entry of the archive
//! checked to have its table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Context, Findings, describe_failure, run, verifier_command};
use crate::dump::postgres::{
    TableOfContents, check_custom, check_directory, check_plain, read_toc,
};
use crate::error::{Error, Result};

/// Separates the columns of `psql -A` output: a byte no table name holds
/// in practice, unlike `|` or a tab.
const FIELD_SEPARATOR: &str = "\u{1f}";

/// Exact row counts of every user table, in one statement:
/// `query_to_xml` runs a `count(*)` per table.
const ROW_COUNTS: &str = "SELECT table_schema || '.' || table_name,
       (xpath('/row/c/text()', query_to_xml(
           format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name),
           false, true, '')))[1]::text
  FROM information_schema.tables
 WHERE table_type = 'BASE TABLE'
   AND table_schema NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 1";

/// Verifies a custom-format archive (`path` a file) or a directory-format
/// dump (`path` its directory).
pub(super) fn verify_archive(
    context: &Context,
    path: &Path,
    directory: bool,
    findings: &mut Findings,
) -> Result<()> {
    // Every data block the table of contents announces must be there:
    // pg_restore --list reads only the table of contents, so a cut archive
    // passes it.
    let verdict = if directory {
        check_directory(path)
    } else {
        let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        check_custom(std::io::BufReader::new(file))
    }
    .map_err(|e| Error::io("reading", path, e))?;
    if !verdict.complete {
        findings.failed("archive completeness", verdict.detail);
        return Ok(());
    }
    findings.passed(format!("archive completeness: {}", verdict.detail));
    let toc_path = if directory {
        path.join("toc.dat")
    } else {
        path.to_path_buf()
    };
    let file = std::fs::File::open(&toc_path).map_err(|e| Error::io("opening", &toc_path, e))?;
    let toc = match read_toc(std::io::BufReader::new(file), directory)
        .map_err(|e| Error::io("reading", &toc_path, e))?
    {
        Ok(toc) => toc,
        Err(why) => {
            findings.failed("read the archive's table of contents", why);
            return Ok(());
        }
    };
    findings.passed(format!(
        "table of contents: {} entries, {} tables with data",
        toc.entries,
        toc.table_data.len()
    ));
    findings.count("toc_entries", toc.entries);
    findings.count("toc_table_data", toc.table_data.len() as u64);

    let mut list = verifier_command("pg_restore");
    list.arg("--list").arg(path);
    let output = run(&context.children, list)?;
    let listed = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count();
    if !output.status.success() {
        findings.failed("pg_restore --list", describe_failure("pg_restore", &output));
        return Ok(());
    }
    if listed == 0 {
        findings.failed("pg_restore --list", "it listed no entries");
        return Ok(());
    }
    findings.passed(format!("pg_restore --list: {listed} entries"));

    let Some(url) = &context.database else {
        findings.passed("full restore: not tried (no database to restore into)");
        findings.summary = Some(format!(
            "the archive's {} entries read and list; a full restore needs a database",
            toc.entries
        ));
        return Ok(());
    };
    let scratch = ScratchDatabase::create(url)?;
    let mut restore = verifier_command("pg_restore");
    // Owners and privileges name roles the drill's server may lack; the
    // data and schema are what a drill proves restorable.
    restore
        .args([
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            "--dbname",
        ])
        .arg(&scratch.url)
        .arg(path);
    let output = run(&context.children, restore);
    let outcome = output.and_then(|output| {
        let what = format!("pg_restore into scratch database {}", scratch.name);
        if !output.status.success() {
            findings.failed(what, describe_failure("pg_restore", &output));
            return Ok(());
        }
        findings.passed(what);
        count_rows(context, &scratch, Some(&toc), findings)
    });
    if let Some(warning) = scratch.drop_database() {
        findings.warnings.push(warning);
    }
    outcome
}

/// Verifies a plain SQL dump: its trailer, and with a database URL a
/// `psql` run of the whole script into a scratch database.
pub(super) fn verify_plain(context: &Context, path: &Path, findings: &mut Findings) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let verdict =
        check_plain(std::io::BufReader::new(file)).map_err(|e| Error::io("reading", path, e))?;
    if !verdict.complete {
        findings.failed("plain dump trailer", verdict.detail);
        return Ok(());
    }
    findings.passed(format!("plain dump trailer: {}", verdict.detail));
    let Some(url) = &context.database else {
        findings.passed("full restore: not tried (no database to restore into)");
        findings.summary = Some("the script is whole; a full restore needs a database".into());
        return Ok(());
    };
    let scratch = ScratchDatabase::create(url)?;
    let mut psql = verifier_command("psql");
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname"])
        .arg(&scratch.url)
        .arg("-f")
        .arg(path);
    let outcome = run(&context.children, psql).and_then(|output| {
        let what = format!("psql -f into scratch database {}", scratch.name);
        if !output.status.success() {
            findings.failed(what, describe_failure("psql", &output));
            return Ok(());
        }
        findings.passed(what);
        count_rows(context, &scratch, None, findings)
    });
    if let Some(warning) = scratch.drop_database() {
        findings.warnings.push(warning);
    }
    outcome
}

/// The directory holding a directory-format dump under `root`: the
/// shallowest one with a `toc.dat`.
pub(super) fn find_directory_dump(root: &Path) -> Option<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name() == "toc.dat")
        .min_by_key(|e| e.depth())
        .and_then(|e| e.path().parent().map(Path::to_path_buf))
}

/// Counts every user table's rows in the scratch database and, for an
/// archive, checks that each table its table of contents has data for
/// exists there.
fn count_rows(
    context: &Context,
    scratch: &ScratchDatabase,
    toc: Option<&TableOfContents>,
    findings: &mut Findings,
) -> Result<()> {
    let mut psql = verifier_command("psql");
    psql.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("--field-separator={FIELD_SEPARATOR}"))
        .arg("--dbname")
        .arg(&scratch.url)
        .args(["-c", ROW_COUNTS]);
    let output = run(&context.children, psql)?;
    if !output.status.success() {
        findings.failed("count rows", describe_failure("psql", &output));
        return Ok(());
    }
    let tables = match parse_counts(&String::from_utf8_lossy(&output.stdout)) {
        Ok(tables) => tables,
        Err(why) => {
            findings.failed("count rows", why);
            return Ok(());
        }
    };
    let rows: u64 = tables.values().sum();
    findings.passed(format!("row counts: {} tables, {rows} rows", tables.len()));
    findings.count("tables", tables.len() as u64);
    findings.count("rows", rows);
    findings.tables = tables;
    findings.summary = Some(format!(
        "restored into a scratch database: {} tables, {rows} rows",
        findings.tables.len()
    ));
    if let Some(toc) = toc {
        let missing: Vec<&str> = toc
            .table_data
            .iter()
            .filter(|t| !findings.tables.contains_key(*t))
            .map(String::as_str)
            .collect();
        let check = format!(
            "every table the archive has data for exists ({})",
            toc.table_data.len()
        );
        if missing.is_empty() {
            findings.passed(check);
        } else {
            findings.failed(
                check,
                format!(
                    "{} of the archive's {} TABLE DATA entries have no table after the restore: {}",
                    missing.len(),
                    toc.table_data.len(),
                    missing.join(", ")
                ),
            );
        }
    }
    Ok(())
}

/// Parses `schema.table<separator>count` lines.
fn parse_counts(text: &str) -> std::result::Result<BTreeMap<String, u64>, String> {
    let mut tables = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (name, count) = line
            .rsplit_once(FIELD_SEPARATOR)
            .ok_or_else(|| format!("psql printed an unexpected line: {line:?}"))?;
        let count = count
            .trim()
            .parse()
            .map_err(|_| format!("psql printed an unexpected count for {name}: {count:?}"))?;
        tables.insert(name.to_string(), count);
    }
    Ok(tables)
}

/// A database created for one drill and dropped after it, also when the
/// drill fails or is interrupted.
struct ScratchDatabase {
    /// Where CREATE and DROP DATABASE run: the URL as given.
    admin_url: String,
    /// The scratch database's name, `larder_drill_<16 hex digits>`.
    name: String,
    /// The URL with the scratch database as its database.
    url: String,
    dropped: bool,
}

impl ScratchDatabase {
    fn create(admin_url: &str) -> Result<ScratchDatabase> {
        let name = format!(
            "larder_drill_{}",
            hex::encode(&crate::hash::random_bytes()[..8])
        );
        let mut psql = verifier_command("psql");
        // template0: nothing added to template1 on that server can clash
        // with what the dump creates.
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname"])
            .arg(admin_url)
            .args(["-c", &format!("CREATE DATABASE {name} TEMPLATE template0")]);
        let output = run(&super::Children::default(), psql)?;
        if !output.status.success() {
            return Err(Error::DrillSetup {
                what: format!("create scratch database {name}"),
                reason: crate::source::command::describe_status("psql", output.status),
                output_tail: super::output_tail(&output),
            });
        }
        Ok(ScratchDatabase {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
            dropped: false,
        })
    }

    /// Drops the database; a warning if that failed.
    fn drop_database(mut self) -> Option<String> {
        self.dropped = true;
        self.try_drop()
    }

    fn try_drop(&self) -> Option<String> {
        // FORCE ends sessions a killed pg_restore may have left (server 13
        // and later); older servers are asked without it.
        let mut last = None;
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP DATABASE IF EXISTS {}", self.name),
        ] {
            let mut psql = verifier_command("psql");
            psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname"])
                .arg(&self.admin_url)
                .args(["-c", &sql]);
            match run(&super::Children::default(), psql) {
                Ok(output) if output.status.success() => return None,
                Ok(output) => last = Some(describe_failure("psql", &output)),
                Err(e) => last = Some(e.to_string()),
            }
        }
        last.map(|why| {
            format!(
                "the scratch database {} could not be dropped ({why}); drop it by hand",
                self.name
            )
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if !self.dropped {
            self.dropped = true;
            let _ = self.try_drop();
        }
    }
}

/// `url` (a libpq URL or key/value connection string) with `database` as
/// its database.
fn with_database(url: &str, database: &str) -> String {
    for scheme in ["postgresql://", "postgres://"] {
        let Some(rest) = url.strip_prefix(scheme) else {
            continue;
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        let authority = before_query.split('/').next().unwrap_or_default();
        let query: Vec<&str> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty() && !p.starts_with("dbname="))
            .collect();
        let mut out = format!("{scheme}{authority}/{database}");
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query.join("&"));
        }
        return out;
    }
    // In a key/value string a later keyword overrides an earlier one.
    if url.trim().is_empty() {
        format!("dbname={database}")
    } else {
        format!("{url} dbname={database}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_database_replaces_the_urls_database() {
        assert_eq!(
            with_database("postgresql://u:p@h:5433/prod?sslmode=require", "s"),
            "postgresql://u:p@h:5433/s?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "s"), "postgres://h/s");
        assert_eq!(
            with_database("postgresql:///prod?host=/run/pg&dbname=x", "s"),
            "postgresql:///s?host=/run/pg"
        );
        assert_eq!(
            with_database("host=h port=5 dbname=prod", "s"),
            "host=h port=5 dbname=prod dbname=s"
        );
        assert_eq!(with_database("", "s"), "dbname=s");
    }

    #[test]
    fn row_counts_parse_and_junk_is_refused() {
        let text = "public.a\u{1f}3\npublic.b c\u{1f}0\n";
        let tables = parse_counts(text).unwrap();
        assert_eq!(tables["public.a"], 3);
        assert_eq!(tables["public.b c"], 0);
        assert!(parse_counts("public.a 3\n").is_err());
        assert!(parse_counts("public.a\u{1f}x\n").is_err());
    }
}
