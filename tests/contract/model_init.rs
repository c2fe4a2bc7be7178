//! `sightline model init`: a bundle built from the tiny fixtures' loose files embeds exactly like
//! the fixture bundle itself, for both text forms; graphs Sightline cannot feed, mismatched
//! files and a bundle that fails its smoke test are refused with errors that say why, and leave
//! nothing behind. The odd graphs are one-op fixtures in `tests/fixtures/odd-graphs/`, written by
//! `tools/make_fixtures.py` with `onnx.helper`, so the test needs no Python at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

use sightline::engine::bundle::{Bundle, Manifest};
use sightline::engine::{Engine, Item};
use sightline::model::{create_bundle, BundleSpec, Family, Outcome, TensorOverrides};

use crate::common::{fixture, test_options};

/// One text and one image from the fixture set, embedded with the bundle in `dir`.
pub(crate) async fn vectors(dir: &Path) -> Vec<Vec<f32>> {
    let engine = Engine::start(dir, test_options()).expect("the bundle must load");
    let image = std::fs::read(fixture("images/landscape.jpg")).unwrap();
    engine
        .embed(vec![
            Item::Text("Ein Hund läuft im Schnee".into()),
            Item::Image(image),
        ])
        .await
        .expect("two inputs are admitted")
        .into_iter()
        .map(|r| r.expect("the fixture inputs embed").vector)
        .collect()
}

pub(crate) fn assert_same_vectors(got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "vectors differ by up to {worst}");
    }
}

/// A spec from the loose files of a fixture bundle.
fn spec_from(bundle: &str, out: &Path) -> BundleSpec {
    let dir = fixture(bundle);
    let dense = dir.join("dense.safetensors");
    BundleSpec {
        name: bundle.to_owned(),
        image_onnx: dir.join("image_encoder.onnx"),
        text_onnx: dir.join("text_encoder.onnx"),
        tokenizer: dir.join("tokenizer.json"),
        dense: dense.is_file().then_some(dense),
        max_seq_len: 128,
        out: out.to_path_buf(),
        force: false,
        overrides: TensorOverrides::default(),
        expect_dimensions: None,
        family: Family::SentenceTransformers,
    }
}

async fn init_error(spec: BundleSpec) -> String {
    let out = spec.out.clone();
    let err = format!(
        "{:#}",
        create_bundle(spec).await.expect_err("init must fail")
    );
    assert!(
        !out.exists(),
        "a failed init left `{}` behind",
        out.display()
    );
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "a failed init left {leftovers:?} behind"
    );
    err
}

#[tokio::test]
async fn init_reproduces_both_fixture_forms() {
    for form in ["tiny-clip", "tiny-clip-tokens"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("bundle");
        let created = create_bundle(spec_from(form, &out)).await.unwrap();
        assert_eq!(created.outcome, Outcome::Created);

        // The same manifest the fixture generator wrote, found from the graphs alone.
        let original = Bundle::load(&fixture(form)).unwrap().manifest;
        let written = Bundle::load(&out).unwrap().manifest;
        assert_eq!(
            written,
            Manifest {
                name: form.to_owned(),
                ..original
            },
            "{form}"
        );

        let want = vectors(&fixture(form)).await;
        assert_same_vectors(&vectors(&out).await, &want);

        // Running init again with the same files changes nothing.
        let again = create_bundle(spec_from(form, &out)).await.unwrap();
        assert_eq!(again.outcome, Outcome::Unchanged);
        assert_eq!(again.fingerprint, created.fingerprint);
    }
}

#[tokio::test]
async fn a_different_bundle_is_replaced_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    create_bundle(spec_from("tiny-clip-tokens", &out))
        .await
        .unwrap();

    let err = format!(
        "{:#}",
        create_bundle(spec_from("tiny-clip", &out))
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("already holds a different bundle") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        Bundle::load(&out).unwrap().manifest.name,
        "tiny-clip-tokens"
    );

    let replaced = create_bundle(BundleSpec {
        force: true,
        ..spec_from("tiny-clip", &out)
    })
    .await
    .unwrap();
    assert_eq!(replaced.outcome, Outcome::Replaced);
    // Form (a) needs no Dense weights: the old bundle's file is gone, no staging is left.
    assert!(!out.join("dense.safetensors").exists());
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["bundle"]);
    assert_same_vectors(&vectors(&out).await, &vectors(&fixture("tiny-clip")).await);

    // A directory holding something else is never written into.
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let err = format!(
        "{:#}",
        create_bundle(BundleSpec {
            force: true,
            ..spec_from("tiny-clip", &occupied)
        })
        .await
        .unwrap_err()
    );
    assert!(err.contains("is not empty"), "{err}");
}

#[tokio::test]
async fn form_and_file_mismatches_say_what_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");

    let no_dense = BundleSpec {
        dense: None,
        ..spec_from("tiny-clip-tokens", &out)
    };
    let err = init_error(no_dense).await;
    assert!(
        err.contains("token states `last_hidden_state") && err.contains("--dense"),
        "{err}"
    );

    let extra_dense = BundleSpec {
        dense: Some(fixture("tiny-clip-tokens/dense.safetensors")),
        ..spec_from("tiny-clip", &out)
    };
    let err = init_error(extra_dense).await;
    assert!(err.contains("drop --dense"), "{err}");

    let wrong_output = BundleSpec {
        overrides: TensorOverrides {
            image_output: Some("embeds".into()),
            ..TensorOverrides::default()
        },
        ..spec_from("tiny-clip", &out)
    };
    let err = init_error(wrong_output).await;
    assert!(
        err.contains("no output `embeds`") && err.contains("`image_embeds f32 ["),
        "{err}"
    );

    let missing = BundleSpec {
        tokenizer: tmp.path().join("nope.json"),
        ..spec_from("tiny-clip", &out)
    };
    let err = init_error(missing).await;
    assert!(
        err.contains("--tokenizer") && err.contains("no such file"),
        "{err}"
    );
}

#[tokio::test]
async fn mismatched_dense_weights_and_broken_tokenizers_fail_at_init() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");

    let narrow = write_dense(files.path(), "narrow.safetensors", 256, 32);
    let err = init_error(BundleSpec {
        dense: Some(narrow),
        ..spec_from("tiny-clip-tokens", &out)
    })
    .await;
    assert!(
        err.contains("256 dimensions but image vectors 512"),
        "{err}"
    );

    let other_hidden = write_dense(files.path(), "hidden.safetensors", 512, 16);
    let err = init_error(BundleSpec {
        dense: Some(other_hidden),
        ..spec_from("tiny-clip-tokens", &out)
    })
    .await;
    assert!(
        err.contains("32 features") && err.contains("expects 16"),
        "{err}"
    );

    let tokenizer = files.path().join("tokenizer.json");
    std::fs::write(&tokenizer, "{\"not\": \"a tokenizer\"}").unwrap();
    let err = init_error(BundleSpec {
        tokenizer,
        ..spec_from("tiny-clip", &out)
    })
    .await;
    assert!(err.contains("cannot load the tokenizer"), "{err}");
}

/// One of the one-op graphs `tools/make_fixtures.py` writes for these tests.
fn odd_graph(name: &str) -> PathBuf {
    fixture(&format!("odd-graphs/{name}.onnx"))
}

#[tokio::test]
async fn unsupported_graphs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");

    // int32 token inputs (immich's M-CLIP text tower is exported like this).
    let err = init_error(BundleSpec {
        text_onnx: odd_graph("int32"),
        ..spec_from("tiny-clip", &out)
    })
    .await;
    assert!(
        err.contains("`input_ids i32 [batch, seq]` is unsupported") && err.contains("int64"),
        "{err}"
    );

    // Only token_type_ids: nothing Sightline feeds.
    let err = init_error(BundleSpec {
        text_onnx: odd_graph("token_types"),
        ..spec_from("tiny-clip", &out)
    })
    .await;
    assert!(
        err.contains("no `input_ids` input") && err.contains("`token_type_ids i64 [batch, seq]`"),
        "{err}"
    );

    // A raw-pixel NHWC image graph.
    let err = init_error(BundleSpec {
        image_onnx: odd_graph("nhwc"),
        ..spec_from("tiny-clip", &out)
    })
    .await;
    assert!(err.contains("raw uint8 pixels"), "{err}");

    // Two 2-D outputs and no `image_embeds`: the user must say which.
    let err = init_error(BundleSpec {
        image_onnx: odd_graph("ambiguous"),
        ..spec_from("tiny-clip", &out)
    })
    .await;
    assert!(
        err.contains("2 candidates: `a`, `b`") && err.contains("--image-output"),
        "{err}"
    );
}

/// A graph that inspects fine but cannot serve (it declares [N, 512] and returns [N, L]) is
/// caught by the smoke embed: the error comes at init, and nothing is written.
#[tokio::test]
async fn a_bundle_that_cannot_embed_fails_its_smoke_test() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = BundleSpec {
        text_onnx: odd_graph("liar"),
        ..spec_from("tiny-clip", &tmp.path().join("bundle"))
    };
    let err = init_error(spec).await;
    assert!(err.contains("smoke test") && err.contains("text"), "{err}");
}

#[test]
fn the_cli_writes_reports_and_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cli-bundle");
    let dir = fixture("tiny-clip-tokens");
    let init = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sightline"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["model", "init", "--image-onnx"]);
        cmd.arg(dir.join("image_encoder.onnx"))
            .arg("--text-onnx")
            .arg(dir.join("text_encoder.onnx"));
        cmd.arg("--tokenizer")
            .arg(dir.join("tokenizer.json"))
            .arg("--out")
            .arg(&out);
        let output = cmd.args(extra).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };
    let dense = dir.join("dense.safetensors");
    let dense = dense.to_str().unwrap();

    let (code, stdout, stderr) = init(&["--dense", dense, "--name", "my-clip"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("wrote bundle") && stdout.contains("`my-clip`, 512 dimensions"),
        "{stdout}"
    );
    assert!(
        stdout.contains("`last_hidden_state` (mean pooling + dense.safetensors)"),
        "{stdout}"
    );

    // Without --dense the same text graph is form (b) with nothing to project it.
    let (code, _, stderr) = init(&["--name", "my-clip"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("error:") && stderr.contains("--dense FILE"),
        "{stderr}"
    );

    let (code, _, stderr) = init(&["--dense", dense, "--name", "renamed"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("already holds a different bundle (`my-clip`)"),
        "{stderr}"
    );
    let (code, stdout, stderr) = init(&["--dense", dense, "--name", "renamed", "--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("replaced bundle"), "{stdout}");
    assert_eq!(Bundle::load(&out).unwrap().manifest.name, "renamed");
}

/// `linear.weight` [rows, cols] of zeros.
fn write_dense(dir: &Path, name: &str, rows: usize, cols: usize) -> PathBuf {
    let data = vec![0u8; rows * cols * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, cols], &data)
            .unwrap();
    let path = dir.join(name);
    safetensors::serialize_to_file([("linear.weight", view)], None, &path).unwrap();
    path
}
