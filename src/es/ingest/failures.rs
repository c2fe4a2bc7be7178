//! The failures file: one JSON line per file that could not be indexed, at any stage, written
//! as failures happen so that an interrupted run keeps them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;

/// One line of the failures file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FailureRecord {
    pub(crate) path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// `walk`, `read`, `decode`, `embed`, `check`, `bulk` or `pipeline`.
    pub(crate) stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_type: Option<String>,
    pub(crate) reason: String,
    pub(crate) attempts: u32,
}

impl FailureRecord {
    pub(crate) fn new(
        path: &Path,
        id: Option<&str>,
        stage: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        FailureRecord {
            path: path.display().to_string(),
            id: id.map(str::to_owned),
            stage,
            status: None,
            error_type: None,
            reason: reason.into(),
            attempts: 1,
        }
    }

    /// `source` (the engine, the sidecar) gave a vector of `got` dimensions where the index
    /// holds `expected`.
    pub(crate) fn wrong_dimensions(
        path: &Path,
        id: &str,
        source: &str,
        got: usize,
        expected: usize,
    ) -> Self {
        FailureRecord::new(
            path,
            Some(id),
            "embed",
            format!("the {source} returned {got} dimensions, expected {expected}"),
        )
    }
}

/// The JSONL failures file.
pub(crate) struct FailureLog {
    writer: Mutex<BufWriter<File>>,
}

impl FailureLog {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create the failures file {}", path.display()))?;
        Ok(FailureLog {
            writer: Mutex::new(BufWriter::new(file)),
        })
    }

    pub(crate) fn write(&self, record: &FailureRecord) -> Result<()> {
        let line = serde_json::to_string(record).context("cannot serialise a failure record")?;
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("the failures file lock is poisoned"))?;
        writeln!(writer, "{line}").context("cannot write the failures file")?;
        writer.flush().context("cannot write the failures file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_records_serialise_without_empty_fields() {
        let record = FailureRecord::new(Path::new("a.jpg"), None, "decode", "bad");
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"path":"a.jpg","stage":"decode","reason":"bad","attempts":1}"#
        );
    }
}
