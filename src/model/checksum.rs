//! The checksums the hub publishes and how a file is checked against them: the sha256 of an
//! LFS file, the git blob sha1 of a file kept in git.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::catalogue::HubFile;

/// A checksum the hub publishes for a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "hex", rename_all = "kebab-case")]
pub enum Checksum {
    /// LFS files: the sha256 of the content.
    Sha256(String),
    /// Files kept in git: the blob id, sha1 of `blob {len}\0{content}`.
    GitSha1(String),
}

/// Reads an `ETag`/`X-Linked-Etag` value: 64 hex digits are a sha256, 40 a git blob sha1;
/// anything else (a CDN's md5, a weak tag) is not a checksum of the file.
pub(crate) fn parse_etag(value: &str) -> Option<Checksum> {
    let tag = value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match tag.len() {
        64 => Some(Checksum::Sha256(tag)),
        40 => Some(Checksum::GitSha1(tag)),
        _ => None,
    }
}

pub(crate) fn checksum_mismatch(
    file: &HubFile,
    kind: &str,
    expected: &str,
    actual: &str,
) -> String {
    format!(
        "`{}` from `{}` does not match its published {kind}: expected {expected}, got {actual}; the \
         download was discarded and no bundle was written: run the command again (if it fails \
         again, the endpoint serves a corrupted or different file)",
        file.path, file.repo
    )
}

/// sha256 state after the first `len` bytes of `path` (a resumed `.part`).
pub(crate) fn hash_prefix(path: &Path, len: u64) -> Result<Sha256> {
    use std::io::Read;
    let mut hasher = Sha256::new();
    let f =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let copied = std::io::copy(&mut f.take(len), &mut hasher)?;
    ensure!(copied == len, "`{}` shrank while resuming", path.display());
    Ok(hasher)
}

/// The git blob id: sha1 of `blob {len}\0` followed by the content.
pub(crate) fn git_blob_sha1(path: &Path) -> Result<String> {
    use sha1::Sha1;
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .len();
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {len}\0").as_bytes());
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_read_as_checksums_only_when_they_are_one() {
        let sha = "A".repeat(64);
        assert_eq!(
            parse_etag(&format!("\"{sha}\"")),
            Some(Checksum::Sha256("a".repeat(64)))
        );
        assert_eq!(
            parse_etag(&format!("W/\"{}\"", "b".repeat(40))),
            Some(Checksum::GitSha1("b".repeat(40)))
        );
        assert_eq!(parse_etag("\"d41d8cd98f00b204e9800998ecf8427e\""), None); // a CDN's md5
        assert_eq!(parse_etag("\"5e1f-abc\""), None);
        assert_eq!(parse_etag(&"g".repeat(64)), None);
    }

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "hello\n").unwrap();
        assert_eq!(
            git_blob_sha1(&path).unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
