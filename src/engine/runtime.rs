//! ONNX Runtime: finding the shared library (`ort` is built with `load-dynamic`) and opening
//! sessions with Sightline's settings. `ort`'s own binary download is unusable on Debian 12
//! (model.md §3.6), so the library comes from the pinned `onnxruntime` PyPI wheel or the system.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use super::shared_weights::SharedWeights;

/// The `onnxruntime` wheel the set-up commands install and the tests run against.
pub const PINNED_ORT: &str = "1.32.0";

static LOADED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process and returns where it came from.
pub fn init() -> Result<PathBuf> {
    LOADED
        .get_or_init(|| {
            let path = locate().map_err(|e| format!("{e:#}"))?;
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from `{}`: {e}", path.display()))?
                // ort enables ONNX Runtime's telemetry events unless told not to (they reach
                // Microsoft from Windows builds); SECURITY.md promises none of any kind.
                .with_telemetry(false)
                .commit();
            Ok(path)
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Search order: `ORT_DYLIB_PATH`, the `onnxruntime` Python package (project venv first),
/// then the system library paths.
fn locate() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "ORT_DYLIB_PATH points to `{}`, which is not a file",
            path.display()
        );
    }
    let mut dirs: Vec<PathBuf> = python_package_dirs();
    dirs.extend(system_dirs());
    dirs.iter()
        .find_map(|d| find_library(d))
        .ok_or_else(|| {
            anyhow!(
                "ONNX Runtime library not found (looked in ORT_DYLIB_PATH, the `onnxruntime` Python package, \
                 and the system library paths). Install it with `pip install onnxruntime=={PINNED_ORT}` \
                 (or run `make setup`), or set ORT_DYLIB_PATH=/path/to/libonnxruntime.so.{PINNED_ORT}"
            )
        })
}

/// `onnxruntime/capi` of the project venv, and of whatever `python3` imports.
fn python_package_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for venv in [Path::new(".venv"), Path::new("/opt/sightline/venv")] {
        if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
            dirs.extend(
                entries
                    .flatten()
                    .map(|e| e.path().join("site-packages/onnxruntime/capi")),
            );
        }
    }
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(out) = probe {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            dirs.push(PathBuf::from(dir).join("capi"));
        }
    }
    dirs
}

fn system_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// `libonnxruntime.so`, or the newest versioned `libonnxruntime.so.1.x.y` the wheel ships.
fn find_library(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join("libonnxruntime.so");
    if exact.is_file() {
        return Some(exact);
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let version = library_version(p.file_name()?.to_str()?)?;
            p.is_file().then_some((version, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// The version of a `libonnxruntime.so.<version>` file name, compared part by part as numbers
/// (so 1.32 is newer than 1.9); a part that is not a number sorts below any number.
fn library_version(name: &str) -> Option<Vec<Option<u64>>> {
    let version = name.strip_prefix("libonnxruntime.so.")?;
    Some(version.split('.').map(|part| part.parse().ok()).collect())
}

/// Opens one model with `threads` intra-op threads. Spinning is off: the image and the text
/// sessions share the cores, and a spinning idle pool would steal them from the busy one.
pub fn open_session(model: &Path, threads: usize) -> Result<Session> {
    open_shared_session(model, threads, None)
}

/// [`open_session`] for one of several sessions of the same model: with `shared`, it uses the
/// caller's copy of the weights instead of one of its own.
pub(crate) fn open_shared_session(
    model: &Path,
    threads: usize,
    shared: Option<&SharedWeights>,
) -> Result<Session> {
    init()?;
    let builder_err = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("{e}");
    let mut builder = Session::builder()
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(builder_err)?
        .with_intra_threads(threads.max(1))
        .map_err(builder_err)?
        .with_inter_threads(1)
        .map_err(builder_err)?
        .with_intra_op_spinning(false)
        .map_err(builder_err)?;
    if let Some(shared) = shared {
        builder = shared.add_to(builder)?;
    }
    let session = builder
        .commit_from_file(model)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot load the ONNX model `{}`", model.display()))?;
    release_freed_memory();
    Ok(session)
}

/// Loading a model parses the whole file and copies its weights, then frees the parsed copy,
/// but glibc keeps freed pages in its arenas: without this the fp32 bundle idles at 2.2 GB
/// resident instead of 1.3 GB (two image lanes).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_versions_compare_numerically() {
        let v = |name| library_version(name).unwrap();
        assert!(v("libonnxruntime.so.1.32.0") > v("libonnxruntime.so.1.9.0"));
        assert!(v("libonnxruntime.so.1.10") > v("libonnxruntime.so.1.9.9"));
        assert!(v("libonnxruntime.so.1.32.1") > v("libonnxruntime.so.1.32"));
        assert!(v("libonnxruntime.so.2") > v("libonnxruntime.so.1.99.99"));
        assert_eq!(library_version("libonnxruntime_providers_shared.so"), None);
    }

    #[test]
    fn versioned_library_names_are_found() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_library(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(
            find_library(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.32.0"))
        );
        // Versions compare as numbers, not as strings ("1.9.0" > "1.32.0").
        std::fs::write(dir.path().join("libonnxruntime.so.1.9.0"), b"").unwrap();
        assert_eq!(
            find_library(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.32.0"))
        );
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(
            find_library(dir.path()),
            Some(dir.path().join("libonnxruntime.so"))
        );
    }
}
