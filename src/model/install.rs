//! Putting a bundle in place: compare with what the target directory holds, stage beside it,
//! and install by renames, so a directory holds the old bundle, the new one, or (after a crash
//! mid-install) one that refuses to load, never a mix.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context, Result};

use crate::engine::bundle::{Bundle, Manifest, MANIFEST};

/// File names inside a bundle written by Sightline; fixed so bundles look alike.
pub(crate) const IMAGE_FILE: &str = "image_encoder.onnx";
pub(crate) const TEXT_FILE: &str = "text_encoder.onnx";
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";
pub(crate) const DENSE_FILE: &str = "dense.safetensors";

/// `None`: no manifest in `out` (an error if `out` holds other files); `Some(Err)`: a manifest
/// that does not load.
pub(crate) fn existing_bundle(out: &Path) -> Result<Option<Result<Bundle>>> {
    let manifest = out.join(MANIFEST);
    if manifest.is_file() {
        return Ok(Some(Bundle::load(out)));
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            ensure!(
                entries.next().is_none(),
                "`{}` is not empty and holds no `{MANIFEST}`: choose a new or empty directory",
                out.display()
            );
            Ok(None)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read `{}`", out.display())),
    }
}

/// Same manifest and the same bytes in every file (hard links are recognised without reading).
pub(crate) fn same_bundle(
    existing: &Bundle,
    manifest: &Manifest,
    sources: &[(&str, PathBuf)],
) -> Result<bool> {
    if &existing.manifest != manifest {
        return Ok(false);
    }
    for (name, source) in sources {
        if !same_bytes(&existing.path(name), source)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let meta =
        |p: &Path| std::fs::metadata(p).with_context(|| format!("cannot read `{}`", p.display()));
    let (ma, mb) = (meta(a)?, meta(b)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if ma.dev() == mb.dev() && ma.ino() == mb.ino() {
            return Ok(true);
        }
    }
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .with_context(|| format!("cannot open `{}`", p.display()))
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A hard link costs no space and no time (the hub cache and the bundle share the bytes);
/// across file systems it falls back to a copy.
pub(crate) fn link_or_copy(source: &Path, target: &Path) -> Result<()> {
    if std::fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(source, target).map(|_| ()).with_context(|| {
        format!(
            "cannot copy `{}` to `{}`",
            source.display(),
            target.display()
        )
    })
}

/// A scratch directory beside the target (same file system, so the final moves are renames),
/// removed on drop whatever happened.
pub(crate) struct Staging {
    pub(crate) dir: PathBuf,
}

impl Staging {
    pub(crate) fn create(out: &Path) -> Result<Staging> {
        let name = out
            .file_name()
            .ok_or_else(|| anyhow!("`{}` is not a directory name", out.display()))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
        let dir = parent.join(format!(
            ".{}.staging-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // A leftover from a killed run of this same process id is ours to discard.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves the staged files into `out`. The old manifest goes first and the new one last, so an
/// interrupted install leaves a directory that refuses to load rather than a mixed bundle.
pub(crate) fn install(
    staging: &Path,
    out: &Path,
    sources: &[(&str, PathBuf)],
    old: Option<&Manifest>,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    let manifest = out.join(MANIFEST);
    if manifest.exists() {
        std::fs::remove_file(&manifest)
            .with_context(|| format!("cannot remove the old `{}`", manifest.display()))?;
    }
    let names: Vec<&str> = sources.iter().map(|(name, _)| *name).collect();
    for name in names.iter().copied().chain([MANIFEST]) {
        let (from, to) = (staging.join(name), out.join(name));
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot move `{}` to `{}`", from.display(), to.display()))?;
    }
    // Only our own fixed names are removed (e.g. the Dense weights when form b becomes form a):
    // a hand-written manifest may have named files the user keeps for other reasons.
    if let Some(old) = old {
        let old_names = manifest_files(old);
        for stale in [IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE, DENSE_FILE] {
            if !names.contains(&stale) && old_names.contains(&stale) {
                let _ = std::fs::remove_file(out.join(stale));
            }
        }
    }
    Ok(())
}

fn manifest_files(m: &Manifest) -> Vec<&str> {
    let mut names = vec![
        m.image.onnx.as_str(),
        m.text.onnx.as_str(),
        m.tokenizer.as_str(),
    ];
    names.extend(m.text.dense.as_deref());
    names
}
