//! `sightline embed` as a shell pipeline runs it: the built binary with its output read by a
//! consumer that may stop early (`sightline embed … | head -1`).

use std::process::{Command, Output, Stdio};

use crate::common::*;

/// Runs `sightline embed` on two texts with `stdout`, returning what it wrote to stderr as well.
fn embed_into(stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
        .arg("embed")
        .arg("--model-dir")
        .arg(fixture("tiny-clip"))
        .args(["--threads", "1", "--text", "A dog in the snow", "how big"])
        .env("SIGHTLINE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("the sightline binary runs")
}

#[test]
fn embed_into_a_closed_pipe_exits_0_quietly() {
    // The reader is gone before the first line is written, as `head` is once it has its lines:
    // every write fails with a broken pipe (Rust ignores SIGPIPE), which ends the command with 0
    // and no error message (ripgrep's rule).
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = embed_into(writer.into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("error"), "stderr: {stderr}");

    // The same command with a reader prints its two lines, so the pipe above was written to.
    let out = embed_into(Stdio::piped());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}
