//! The docker files agree with the CLI. No Docker engine runs here, so this reads the files as
//! text:
//! - every `SIGHTLINE_*` variable that `docker/compose.yaml` or `docker/Dockerfile` sets is one
//!   the binary reads;
//! - the subcommands and flags that compose runs parse (`sightline <cmd> --help`);
//! - the library path in `ORT_DYLIB_PATH` is the file the ONNX Runtime stage copies;
//! - the pinned wheel version matches the Dockerfile.

use std::collections::BTreeSet;
use std::path::Path;

use crate::fake_es::sightline;

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// `SIGHTLINE_FOO` names in `text`, except compose's own `${SIGHTLINE_FOO:-default}`
/// interpolations, which configure the stack (ports, keys) rather than a container.
fn sightline_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("SIGHTLINE_") {
        let interpolated = rest[..start].ends_with("${");
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !interpolated {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn compose_and_dockerfile_use_only_variables_the_cli_reads() {
    let compose = read("docker/compose.yaml");
    let dockerfile = read("docker/Dockerfile");
    let without_comments = |text: &str| {
        text.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut used = sightline_variables(&without_comments(&compose));
    used.extend(sightline_variables(&without_comments(&dockerfile)));
    assert!(
        used.contains("SIGHTLINE_ES_URL") && used.contains("SIGHTLINE_MODEL_DIR"),
        "{used:?}"
    );

    // what the binary documents in --help (clap lists each `env` as [env: NAME=...])
    let mut known = BTreeSet::new();
    for command in [
        vec!["serve", "--help"],
        vec!["setup", "--help"],
        vec!["ingest", "--help"],
        vec!["search", "--help"],
        vec!["gallery", "--help"],
    ] {
        let run = sightline(&command).await;
        run.expect_code(0);
        known.extend(sightline_variables(&run.stdout));
    }
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "docker files set variables no command reads: {unknown:?}"
    );
}

#[tokio::test]
async fn compose_commands_parse() {
    let compose = read("docker/compose.yaml");
    assert!(
        compose.contains("sightline model pull --dir"),
        "the model is pulled on first start"
    );
    assert!(compose.contains("exec sightline serve"));
    for needle in [
        "command: [\"setup\"]",
        "profiles: [\"sample\"]",
        "service_completed_successfully",
        "xpack.security.enabled: \"true\"",
    ] {
        assert!(compose.contains(needle), "compose.yaml lacks {needle}");
    }
    // the flags compose passes exist (clap rejects unknown flags with exit 2)
    let pull_help = sightline(&["model", "pull", "--help"]).await;
    pull_help.expect_code(0);
    assert!(pull_help.stdout.contains("--dir"), "{}", pull_help.stdout);
    let ingest_help = sightline(&["ingest", "--help"]).await;
    for flag in ["--failures", "--no-progress"] {
        assert!(ingest_help.stdout.contains(flag), "ingest has no {flag}");
    }
}

#[test]
fn dockerfile_loads_the_library_it_copies() {
    let dockerfile = read("docker/Dockerfile");
    let requirements = read("docker/onnxruntime-requirements.txt");
    let version = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("ARG ORT_VERSION="))
        .expect("ARG ORT_VERSION=… in the Dockerfile");
    assert!(
        requirements.contains(&format!("onnxruntime=={version}")),
        "wheel pin and Dockerfile disagree"
    );
    assert_eq!(
        requirements.matches("--hash=sha256:").count(),
        2,
        "x86_64 and aarch64 wheels are pinned"
    );
    assert!(dockerfile.contains("onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}"));
    // the runtime stage copies the library to exactly the path ORT_DYLIB_PATH names
    let loaded = dockerfile
        .split_whitespace()
        .find_map(|word| word.strip_prefix("ORT_DYLIB_PATH="))
        .expect("ORT_DYLIB_PATH is set");
    let copy = dockerfile
        .lines()
        .find(|line| line.starts_with("COPY --from=onnxruntime"))
        .expect("a COPY from the onnxruntime stage");
    assert_eq!(copy.split_whitespace().last(), Some(loaded), "{copy}");
    assert!(dockerfile.contains("USER sightline"), "runs as non-root");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/ready"));
}
