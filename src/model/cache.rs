//! The download cache on disk: where it is ([`cache_root`]), where each hub file goes
//! (`{cache}/hub/{repo}/{revision}/{path}`), its `.part` while downloading, and the record kept
//! beside it under `hub-meta/` that lets a later pull trust the file. File access goes through
//! `tokio::fs`, because the callers run on the async runtime.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::catalogue::HubFile;
use super::checksum::Checksum;

/// The Sightline cache directory: `SIGHTLINE_CACHE`, else `$XDG_CACHE_HOME/sightline`, else
/// `~/.cache/sightline`. `env` is the environment lookup, passed in so tests need no globals.
pub fn cache_root(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("SIGHTLINE_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return Ok(dir.join("sightline"));
    }
    if let Some(home) = set("HOME") {
        return Ok(home.join(".cache").join("sightline"));
    }
    bail!("cannot find a cache directory: HOME is not set; set SIGHTLINE_CACHE to a writable directory")
}

/// Where `file` lives in the cache.
pub(crate) fn cache_path(root: &Path, file: &HubFile) -> PathBuf {
    let mut path = root.join("hub");
    path.extend(file.repo.split('/'));
    path.extend(file.revision.split('/'));
    path.extend(file.path.split('/'));
    path
}

/// Download metadata, kept apart from the files (`{cache}/hub-meta/…json`) so the `hub/` tree
/// holds exactly the repositories' files.
pub(crate) fn meta_path(root: &Path, file: &HubFile) -> PathBuf {
    let mut path = root.join("hub-meta");
    path.extend(file.repo.split('/'));
    path.extend(file.revision.split('/'));
    path.extend(file.path.split('/'));
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".json");
    path.set_file_name(name);
    path
}

pub(crate) fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().map(OsString::from).unwrap_or_default();
    name.push(".part");
    target.with_file_name(name)
}

/// Recorded for each cached file under `hub-meta/`, so a later pull can trust the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CacheMeta {
    pub(crate) url: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// What the hub published, when it published anything.
    pub(crate) published: Option<Checksum>,
    pub(crate) commit: Option<String>,
}

/// The record of a cached file; `None` when it is missing or unreadable (the file is then
/// treated as of unknown origin).
pub(crate) async fn read_meta(path: &Path) -> Option<CacheMeta> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) async fn write_meta(path: &Path, meta: &CacheMeta) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    tokio::fs::write(path, serde_json::to_vec_pretty(meta)?)
        .await
        .with_context(|| format!("cannot write `{}`", path.display()))
}

pub(crate) async fn remove_if_present(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove `{}`", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalogue::{plan, Role, DEFAULT_MODEL};

    #[test]
    fn cache_root_follows_the_environment() {
        fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
            move |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(*v))
            }
        }
        let all = [
            ("SIGHTLINE_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_root(env(&all[..])).unwrap(), PathBuf::from("/c"));
        assert_eq!(
            cache_root(env(&all[1..])).unwrap(),
            PathBuf::from("/x/sightline")
        );
        assert_eq!(
            cache_root(env(&all[2..])).unwrap(),
            PathBuf::from("/h/.cache/sightline")
        );
        // Empty variables count as unset, as in the XDG spec.
        let empty = [
            ("SIGHTLINE_CACHE", ""),
            ("XDG_CACHE_HOME", ""),
            ("HOME", "/h"),
        ];
        assert_eq!(
            cache_root(env(&empty[..])).unwrap(),
            PathBuf::from("/h/.cache/sightline")
        );
        assert!(cache_root(env(&[]))
            .unwrap_err()
            .to_string()
            .contains("SIGHTLINE_CACHE"));
    }

    #[test]
    fn cache_paths_keep_repo_revision_and_path() {
        let p = plan(DEFAULT_MODEL, "refs/pr/3", "main", false).unwrap();
        let root = Path::new("/cache");
        let text = p.file(Role::TextEncoder).unwrap();
        assert_eq!(
            cache_path(root, text),
            PathBuf::from("/cache/hub/sentence-transformers/clip-ViT-B-32-multilingual-v1/refs/pr/3/onnx/model.onnx")
        );
        assert_eq!(
            meta_path(root, text),
            PathBuf::from("/cache/hub-meta/sentence-transformers/clip-ViT-B-32-multilingual-v1/refs/pr/3/onnx/model.onnx.json")
        );
        assert_eq!(
            part_path(&cache_path(root, text)),
            PathBuf::from("/cache/hub/sentence-transformers/clip-ViT-B-32-multilingual-v1/refs/pr/3/onnx/model.onnx.part")
        );
    }
}
