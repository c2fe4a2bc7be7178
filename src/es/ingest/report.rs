//! `ingest --report FILE...`: failures files (one per shard of a backfill, or per run) merged into
//! one summary — how many files failed for each reason, and which. A path named in several files
//! (a file no shard could read is reported by every shard) counts once, with the first reason
//! given for it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The fields of a failures-file line (`failures::FailureRecord`) the summary uses.
#[derive(Deserialize)]
struct Line {
    path: String,
    stage: String,
    reason: String,
}

/// Failures files merged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FailureSummary {
    /// Failures files read.
    pub(crate) files: usize,
    /// Lines read, before paths named more than once are merged.
    pub(crate) lines: usize,
    /// `stage: reason` and how many distinct paths failed so, most first.
    pub(crate) by_reason: Vec<(String, usize)>,
    /// Every failed path once, in path order, with its `stage: reason`.
    pub(crate) paths: Vec<(String, String)>,
}

/// Reads and merges `files`; an unreadable file or a line that is not a failure record is an
/// error naming it.
pub(crate) fn merge_failures(files: &[PathBuf]) -> Result<FailureSummary> {
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = 0;
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the failures file {}", file.display()))?;
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Line = serde_json::from_str(line).with_context(|| {
                format!(
                    "{} line {} is not a failure record",
                    file.display(),
                    number + 1
                )
            })?;
            lines += 1;
            paths
                .entry(record.path)
                .or_insert_with(|| format!("{}: {}", record.stage, record.reason));
        }
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for reason in paths.values() {
        *counts.entry(reason).or_default() += 1;
    }
    let mut by_reason: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), n))
        .collect();
    by_reason.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(FailureSummary {
        files: files.len(),
        lines,
        by_reason,
        paths: paths.into_iter().collect(),
    })
}

impl fmt::Display for FailureSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} failures files, {} lines: {} files failed",
            self.files,
            self.lines,
            self.paths.len()
        )?;
        if self.paths.is_empty() {
            return Ok(());
        }
        writeln!(f, "by reason:")?;
        for (reason, n) in &self.by_reason {
            writeln!(f, "{n:>8}  {reason}")?;
        }
        writeln!(f, "failed files:")?;
        for (path, reason) in &self.paths {
            writeln!(f, "  {path}\t{reason}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_files_counting_each_path_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("failures-0-of-2.jsonl");
        let b = dir.path().join("failures-1-of-2.jsonl");
        std::fs::write(
            &a,
            concat!(
                r#"{"path":"x.jpg","stage":"decode","reason":"bad","attempts":1}"#,
                "\n",
                r#"{"path":"gone.jpg","stage":"walk","reason":"cannot open","attempts":1}"#,
                "\n\n"
            ),
        )
        .unwrap();
        std::fs::write(
            &b,
            concat!(
                r#"{"path":"gone.jpg","stage":"walk","reason":"cannot open","attempts":1}"#,
                "\n",
                r#"{"path":"y.jpg","stage":"decode","reason":"bad","attempts":1}"#,
                "\n",
            ),
        )
        .unwrap();
        let summary = merge_failures(&[a, b]).unwrap();
        assert_eq!(
            summary,
            FailureSummary {
                files: 2,
                lines: 4,
                by_reason: vec![
                    ("decode: bad".to_owned(), 2),
                    ("walk: cannot open".to_owned(), 1)
                ],
                paths: vec![
                    ("gone.jpg".to_owned(), "walk: cannot open".to_owned()),
                    ("x.jpg".to_owned(), "decode: bad".to_owned()),
                    ("y.jpg".to_owned(), "decode: bad".to_owned()),
                ],
            }
        );
        assert_eq!(
            summary.to_string(),
            "2 failures files, 4 lines: 3 files failed\nby reason:\n       2  decode: bad\n       1  walk: cannot open\nfailed files:\n  gone.jpg\twalk: cannot open\n  x.jpg\tdecode: bad\n  y.jpg\tdecode: bad\n"
        );
    }

    #[test]
    fn names_the_file_and_line_that_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("f.jsonl");
        std::fs::write(
            &a,
            "{\"path\":\"x\",\"stage\":\"read\",\"reason\":\"r\"}\nnot json\n",
        )
        .unwrap();
        let err = merge_failures(std::slice::from_ref(&a)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} line 2 is not a failure record", a.display())
        );
        let missing = dir.path().join("missing.jsonl");
        let err = merge_failures(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read the failures file {}", missing.display())
        );
    }
}
