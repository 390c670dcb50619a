//! File-tree drills: every `*.yaml`/`*.yml` file of the restored tree must
//! parse as YAML (every document of it; duplicate keys count as errors) and
//! every `*.json` file as one JSON value. Each file that does not is named
//! with the parser's message, which gives the line and column. Symlinks are
//! never followed.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::Findings;
use crate::error::{Error, Result};

/// Unparsable files named in the detail; the rest are counted.
const NAMED_FAILURES: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

pub(super) fn verify(root: &Path, findings: &mut Findings) -> Result<()> {
    let (mut files, mut yaml, mut json) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::io("walking", path, e.into())
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        files += 1;
        let extension = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let format = match extension.as_deref() {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            _ => continue,
        };
        match format {
            Format::Yaml => yaml += 1,
            Format::Json => json += 1,
        }
        let shown = Path::new("/").join(entry.path().strip_prefix(root).unwrap_or(entry.path()));
        if let Err(why) = parse(entry.path(), format)? {
            failures.push(format!("{}: {why}", shown.display()));
        }
    }
    findings.count("files", files);
    findings.count("yaml_files", yaml);
    findings.count("json_files", json);
    findings.count("other_files", files - yaml - json);
    let check = format!("parse {yaml} YAML and {json} JSON files");
    if failures.is_empty() {
        findings.passed(format!("{check}: all parse"));
        findings.summary = Some(format!(
            "{files} files restored; {yaml} YAML and {json} JSON files parse"
        ));
        return Ok(());
    }
    let mut detail = format!(
        "{} of {} files do not parse: {}",
        failures.len(),
        yaml + json,
        failures[..failures.len().min(NAMED_FAILURES)].join("; ")
    );
    if failures.len() > NAMED_FAILURES {
        detail.push_str(&format!("; and {} more", failures.len() - NAMED_FAILURES));
    }
    findings.count("unparsable_files", failures.len() as u64);
    findings.failed(check, detail);
    Ok(())
}

/// Parses one file; the inner error is the parser's message. The outer
/// error is a failure to read the file at all.
fn parse(path: &Path, format: Format) -> Result<std::result::Result<(), String>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    Ok(match format {
        Format::Json => {
            serde_json::from_reader::<_, serde::de::IgnoredAny>(std::io::BufReader::new(file))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Format::Yaml => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| Error::io("reading", path, e))?;
            parse_yaml(&bytes)
        }
    })
}

/// Parses every document of a YAML stream.
fn parse_yaml(bytes: &[u8]) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    for document in serde_norway::Deserializer::from_str(text) {
        serde_norway::Value::deserialize(document).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_give_line_and_column_and_every_document_is_parsed() {
        assert_eq!(parse_yaml(b"a: 1\nb: [1, 2]\n"), Ok(()));
        assert_eq!(parse_yaml(b"---\na: 1\n---\nb: 2\n"), Ok(()));
        assert_eq!(parse_yaml(b""), Ok(()));
        let e = parse_yaml(b"a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        assert!(e.contains("column"), "{e}");
        let e = parse_yaml(b"---\na: 1\n---\nb: : :\n  - x\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        assert!(parse_yaml(b"a: 1\na: 2\n").is_err(), "duplicate keys");
        assert!(parse_yaml(b"a: \xff\n").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_tree_drill_names_each_unparsable_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("kb/teams")).unwrap();
        std::fs::write(root.join("kb/good.yaml"), "a: 1\n").unwrap();
        std::fs::write(root.join("kb/teams/bad.yml"), "a: [1\n").unwrap();
        std::fs::write(root.join("kb/good.json"), "{\"a\": [1, 2]}").unwrap();
        std::fs::write(root.join("kb/bad.json"), "{\"a\": }").unwrap();
        std::fs::write(root.join("kb/notes.txt"), "a: [\n").unwrap();
        std::os::unix::fs::symlink("/nonexistent.yaml", root.join("kb/link.yaml")).unwrap();
        let mut findings = Findings::default();
        verify(root, &mut findings).unwrap();
        let failure = findings.failure.unwrap();
        assert!(failure.contains("/kb/teams/bad.yml: "), "{failure}");
        assert!(failure.contains("/kb/bad.json: "), "{failure}");
        assert!(failure.contains("line 1 column 7"), "{failure}");
        assert!(!failure.contains("good"), "{failure}");
        assert_eq!(findings.counts["yaml_files"], 2);
        assert_eq!(findings.counts["json_files"], 2);
        assert_eq!(findings.counts["other_files"], 1);
        assert_eq!(findings.counts["unparsable_files"], 2);
    }
}
