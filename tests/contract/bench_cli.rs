//! `sightline bench` end to end on the tiny bundle: the built binary starts its own servers,
//! runs every pattern in rounds and prints the whole table. Speed is not asserted (that is what
//! the benchmark is for); its wiring and its report are.

use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn the_benchmark_runs_every_pattern_in_rounds_and_prints_the_table() {
    let photos = tempfile::tempdir().unwrap();
    for name in ["landscape.jpg", "large-2400x1600.jpg", "exif-rot90.jpg"] {
        std::fs::copy(fixture("images").join(name), photos.path().join(name)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .arg("bench")
        .arg("--model-dir")
        .arg(fixture("tiny-clip"))
        .arg("--photos")
        .arg(photos.path())
        .args(["--duration", "2s", "--rounds", "2", "--threads", "2"])
        .args(["--clients", "3", "--batch", "2", "--batch-clients", "2"])
        .env("SIGHTLINE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("the sightline binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    // One progress line per pattern, with its rounds' range.
    for pattern in ["(a)", "(b)", "(c)"] {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("bench: {pattern} ")))
            .unwrap_or_else(|| panic!("no {pattern} line in: {stderr}"));
        assert!(line.contains("of the ceiling (rounds "), "{line}");
    }
    // The table: each Sightline row has a positive rate, latencies and both ratios.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| Sightline ("))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // "", name, images/s, p50, p99, ÷ model-only, ÷ ceiling, ""
        assert_eq!(cells.len(), 8, "{row}");
        let rate: f64 = cells[2].parse().unwrap_or_else(|_| panic!("{row}"));
        assert!(rate > 0.0, "{row}");
        for ms in &cells[3..5] {
            ms.parse::<u64>().unwrap_or_else(|_| panic!("{row}"));
        }
        assert!(
            cells[6].starts_with("**") && cells[6].ends_with(')'),
            "{row}"
        );
    }
    assert!(
        stdout.contains("| model only (preprocessed tensors, batch 8) |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("measured right before each of its 2 rounds"),
        "{stdout}"
    );
    assert!(stdout.contains("server RSS once loaded: "), "{stdout}");
}
