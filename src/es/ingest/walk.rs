//! Finding the images under the paths `ingest` is given, and reading `--files-from` lists.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::failures::FailureRecord;
use crate::engine::format::{sniff_format, Sniffed};
use crate::es::image::has_image_extension;

/// Files found under `roots`: regular files whose extension says image or whose first bytes do.
/// Hidden entries (`.git`, `.DS_Store`, …) below a root are skipped. A file given explicitly is
/// always taken, so that a broken image named on the command line is reported, not ignored.
pub(crate) fn walk(roots: &[PathBuf]) -> (Vec<PathBuf>, Vec<FailureRecord>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for root in roots {
        match std::fs::metadata(root) {
            Ok(meta) if meta.is_file() => {
                files.push(root.clone());
                continue;
            }
            Ok(_) => {}
            Err(err) => {
                failures.push(FailureRecord::new(
                    root,
                    None,
                    "walk",
                    format!("cannot open: {err}"),
                ));
                continue;
            }
        }
        let walker = walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| {
                entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.')
            });
        for entry in walker {
            match entry {
                Ok(entry) if entry.file_type().is_file() => {
                    let path = entry.into_path();
                    if has_image_extension(&path) || looks_like_image(&path) {
                        files.push(path);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    let path = err
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.clone());
                    failures.push(FailureRecord::new(&path, None, "walk", err.to_string()));
                }
            }
        }
    }
    (files, failures)
}

/// The paths listed in `list` (`-`: standard input), one per line, for `ingest --files-from`.
/// Blank lines are skipped; a relative path is relative to the current directory, as on the
/// command line. Entries are not checked here: [`walk`] takes them like command-line paths, so a
/// missing file becomes a failure record rather than stopping the run.
pub(crate) fn read_path_list(list: &Path) -> Result<Vec<PathBuf>> {
    let name = || {
        if list == Path::new("-") {
            "the --files-from list on standard input".to_owned()
        } else {
            format!("the --files-from list {}", list.display())
        }
    };
    let reader: Box<dyn BufRead> = if list == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(BufReader::new(
            File::open(list).with_context(|| format!("cannot open {}", name()))?,
        ))
    };
    let mut paths = Vec::new();
    for line in reader.split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", name()))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            paths.push(path_from_bytes(line));
        }
    }
    Ok(paths)
}

/// A list line as a path: any bytes on Unix, where file names need not be UTF-8.
fn path_from_bytes(line: &[u8]) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(line))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(line).into_owned())
    }
}

fn looks_like_image(path: &Path) -> bool {
    let mut head = [0u8; 32];
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let read = file.read(&mut head).unwrap_or(0);
    matches!(sniff_format(&head[..read]), Sniffed::Supported(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::ingest::test_images::png_bytes;

    #[test]
    fn walk_finds_images_by_extension_and_content_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/.hidden")).unwrap();
        std::fs::write(root.join("a.png"), png_bytes(1)).unwrap();
        std::fs::write(root.join("sub/no_extension"), png_bytes(2)).unwrap();
        std::fs::write(root.join("sub/broken.jpg"), b"not really").unwrap();
        std::fs::write(root.join("notes.txt"), b"hello").unwrap();
        std::fs::write(root.join("sub/.hidden/c.png"), png_bytes(3)).unwrap();
        let (files, failures) = walk(&[root.to_path_buf(), root.join("missing")]);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.png", "sub/broken.jpg", "sub/no_extension"]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].stage, "walk");
    }

    #[test]
    fn path_lists_keep_each_line_as_is_and_skip_blank_ones() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(
            &list,
            b"a.jpg\n\n  \nsub dir/b c.png\r\n/abs/x.webp\n\xffname.jpg",
        )
        .unwrap();
        let paths = read_path_list(&list).unwrap();
        let shown: Vec<String> = paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            shown,
            [
                "a.jpg",
                "sub dir/b c.png",
                "/abs/x.webp",
                "\u{fffd}name.jpg"
            ]
        );
        let err = read_path_list(&dir.path().join("missing.txt")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot open the --files-from list "),
            "{err:#}"
        );
    }
}
