//! Golden tests for the open_clip model families (`tests/fixtures/tiny-xlmr-openclip`,
//! `tiny-nllb-siglip`, written by `tools/make_families.py`): Rust, driven by each fixture's
//! `sightline.json`, must reproduce `tools/open_clip_reference.py`, which reads the family's own
//! open_clip config files instead. Crops within 2/255 on smooth images, identical padded token
//! ids and truncation flags, vectors at cosine ≥ 0.9999 — through graphs with a fixed batch of
//! 1, int32 token ids and no attention-mask input, as Immich exports them. `model init
//! --from-open-clip` on the same directories must write the manifest the fixtures hold.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sightline::engine::bundle::Bundle;
use sightline::engine::preprocess::{decode_rgb, resize_crop, DecodeOptions};
use sightline::engine::text::{pad_batch, PadSettings, TextTokenizer, TokenizerSettings};
use sightline::engine::{Engine, EngineOptions, Item};
use sightline::model::{create_bundle, read_export, BundleSpec};

use crate::common::{cosine, fixture, test_options};

const FAMILIES: [&str; 2] = ["tiny-xlmr-openclip", "tiny-nllb-siglip"];

/// The reference decodes every JPEG pixel.
const EXACT: DecodeOptions = DecodeOptions {
    max_pixels: 100_000_000,
    max_alloc: 1 << 30,
    jpeg_prescale: false,
};

#[derive(Deserialize)]
struct FamilyGolden {
    context_length: usize,
    pad_id: i64,
    images: Vec<ImageCase>,
    texts: Vec<TextCase>,
    /// Crops of the first family with `interpolation: bilinear` (no preset uses it).
    bilinear: Vec<CropCase>,
}

#[derive(Deserialize)]
struct CropCase {
    file: String,
    smooth: bool,
    pre: String,
}

#[derive(Deserialize)]
struct ImageCase {
    file: String,
    smooth: bool,
    pre: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct TextCase {
    text: String,
    ids: Vec<i64>,
    truncated: bool,
    embedding: Vec<f32>,
}

fn golden(family: &str) -> FamilyGolden {
    let path = fixture(&format!("golden/families/{family}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn image_path(file: &str) -> PathBuf {
    fixture("images").join(file)
}

fn max_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

#[test]
fn crops_match_each_familys_own_transform() {
    for family in FAMILIES {
        let bundle = Bundle::load(&fixture(family)).unwrap();
        let cfg = &bundle.manifest.preprocess;
        let golden = golden(family);
        assert!(golden.images.iter().filter(|c| c.smooth).count() >= 7);
        for case in &golden.images {
            let bytes = std::fs::read(image_path(&case.file)).unwrap();
            let rgb = decode_rgb(&bytes, &EXACT, cfg.size).unwrap();
            let ours = resize_crop(&rgb, cfg).unwrap();
            let theirs = image::open(fixture("golden").join(&case.pre))
                .unwrap()
                .into_rgb8();
            let diff = max_diff(&ours, &theirs);
            if case.smooth {
                assert!(
                    diff <= 2,
                    "{family} {}: max pixel difference {diff}",
                    case.file
                );
            }
        }
    }
}

#[test]
fn the_default_crop_rule_would_miss_open_clips_window() {
    // landscape.jpg resizes to 335×224: open_clip's window starts at round(55.5) = 56, the
    // default rule's at 55. The golden crops tell the two apart, so the test above checks the
    // rounding, not just the resize.
    let bundle = Bundle::load(&fixture("tiny-xlmr-openclip")).unwrap();
    let floor = sightline::engine::bundle::Preprocess {
        crop: sightline::engine::bundle::CropRule::Center,
        ..bundle.manifest.preprocess.clone()
    };
    let bytes = std::fs::read(image_path("landscape.jpg")).unwrap();
    let rgb = decode_rgb(&bytes, &EXACT, 224).unwrap();
    let theirs = image::open(fixture(
        "golden/families/tiny-xlmr-openclip/landscape.jpg.png",
    ))
    .unwrap()
    .into_rgb8();
    assert!(max_diff(&resize_crop(&rgb, &floor).unwrap(), &theirs) > 2);
    assert!(
        max_diff(
            &resize_crop(&rgb, &bundle.manifest.preprocess).unwrap(),
            &theirs
        ) <= 2
    );
}

fn mean_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn bilinear_crops_match_pils_bilinear() {
    let bundle = Bundle::load(&fixture("tiny-xlmr-openclip")).unwrap();
    let bicubic = bundle.manifest.preprocess.clone();
    let bilinear = sightline::engine::bundle::Preprocess {
        interpolation: sightline::engine::bundle::Interpolation::Bilinear,
        ..bicubic.clone()
    };
    let cases = golden("tiny-xlmr-openclip").bilinear;
    assert_eq!(cases.len(), 3);
    let mut told_apart = 0;
    for case in &cases {
        let bytes = std::fs::read(image_path(&case.file)).unwrap();
        let rgb = decode_rgb(&bytes, &EXACT, 224).unwrap();
        let theirs = image::open(fixture("golden").join(&case.pre))
            .unwrap()
            .into_rgb8();
        let ours = resize_crop(&rgb, &bilinear).unwrap();
        let other = resize_crop(&rgb, &bicubic).unwrap();
        if case.smooth {
            assert!(max_diff(&ours, &theirs) <= 2, "{}", case.file);
        }
        // The filter is the one asked for: closer to PIL's bilinear than bicubic is, by far
        // where the two filters visibly differ (upscaling, hard edges).
        let distinct = max_diff(&other, &theirs) > 2;
        told_apart += usize::from(distinct);
        let margin = if distinct { 4.0 } else { 1.0 };
        assert!(
            mean_diff(&ours, &theirs) < mean_diff(&other, &theirs) / margin,
            "{}: {} vs {}",
            case.file,
            mean_diff(&ours, &theirs),
            mean_diff(&other, &theirs)
        );
    }
    assert!(
        told_apart >= 2,
        "the cases must include ones where the filters differ"
    );
}

#[test]
fn padded_token_ids_match_the_reference() {
    for family in FAMILIES {
        let bundle = Bundle::load(&fixture(family)).unwrap();
        let m = &bundle.manifest;
        let golden = golden(family);
        assert_eq!(
            (m.max_seq_len, i64::from(m.text.pad_id)),
            (golden.context_length, golden.pad_id)
        );
        let tokenizer =
            TextTokenizer::load(&bundle.path(&m.tokenizer), TokenizerSettings::of(m)).unwrap();
        for case in &golden.texts {
            let tokens = tokenizer.tokenize(&case.text).unwrap();
            let (ids, _) = pad_batch([tokens.ids.as_slice()].into_iter(), PadSettings::of(m));
            assert_eq!(ids.row(0).to_vec(), case.ids, "{family} {:?}", case.text);
            assert_eq!(tokens.truncated, case.truncated, "{family} {:?}", case.text);
        }
        assert!(golden.texts.iter().any(|c| c.truncated));
    }
}

fn engine(dir: &Path) -> Engine {
    Engine::start(
        dir,
        EngineOptions {
            decode: EXACT,
            ..test_options()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn vectors_match_the_reference_through_batch_one_graphs() {
    for family in FAMILIES {
        let golden = golden(family);
        let engine = engine(&fixture(family));
        assert!(engine.info().normalized);
        // One request with every image and text: the batcher forms batches larger than the
        // graphs' fixed batch of 1, which the workers run row by row.
        let mut items: Vec<Item> = golden
            .images
            .iter()
            .map(|c| Item::Image(std::fs::read(image_path(&c.file)).unwrap()))
            .collect();
        items.extend(golden.texts.iter().map(|c| Item::Text(c.text.clone())));
        let results = engine.embed(items).await.unwrap();
        let expected = golden
            .images
            .iter()
            .map(|c| (&c.file, &c.embedding))
            .chain(golden.texts.iter().map(|c| (&c.text, &c.embedding)));
        for ((what, want), got) in expected.zip(results) {
            let got = got.unwrap_or_else(|e| panic!("{family} {what:?}: {e}"));
            let cos = cosine(&got.vector, want);
            assert!(cos >= 0.9999, "{family} {what:?}: cosine {cos}");
        }
    }
}

#[tokio::test]
async fn init_from_open_clip_writes_the_manifest_the_fixture_describes() {
    for family in FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(family);
        let export = read_export(&fixture(family)).unwrap();
        let spec = BundleSpec::from_open_clip(&export, family.to_owned(), out.clone(), false);
        let created = create_bundle(spec).await.unwrap();
        // The fixture's hand-written manifest names the export's own paths; a written bundle
        // uses Sightline's file names. Everything else must be what the export's files say.
        let mut expected = Bundle::load(&fixture(family)).unwrap().manifest;
        expected.image.onnx = "image_encoder.onnx".into();
        expected.text.onnx = "text_encoder.onnx".into();
        expected.tokenizer = "tokenizer.json".into();
        assert_eq!(created.manifest, expected, "{family}");
        assert_eq!(Bundle::load(&out).unwrap().manifest, expected);
        // And it embeds like the reference.
        let golden = golden(family);
        let engine = engine(&out);
        let text = &golden.texts[0];
        let got = engine
            .embed(vec![Item::Text(text.text.clone())])
            .await
            .unwrap();
        let cos = cosine(&got[0].as_ref().unwrap().vector, &text.embedding);
        assert!(cos >= 0.9999, "{family}: cosine {cos}");
    }
}

#[test]
fn the_cli_lists_presets_and_inits_from_an_open_clip_export() {
    let run = |args: &[&std::ffi::OsStr]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sightline"))
            .args(args)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };
    let (code, stdout, stderr) = run(&["model".as_ref(), "list".as_ref()]);
    assert_eq!(code, Some(0), "{stderr}");
    for name in [
        "clip-ViT-B-32-multilingual-v1 (default)",
        "xlm-roberta-base-vit-b-32",
        "nllb-clip-base-siglip",
        "immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k",
        "XM3600 mean recall 69.7 EN / 72.9 ZH (Immich's table)",
    ] {
        assert!(stdout.contains(name), "{name}: {stdout}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nllb");
    let dir = fixture("tiny-nllb-siglip");
    let init = |extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "model".as_ref(),
            "init".as_ref(),
            "--from-open-clip".as_ref(),
            dir.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra);
        run(&args)
    };
    let (code, stdout, stderr) = init(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("`nllb`, 768 dimensions, max_seq_len 77")
            && stdout.contains("[N, 3, 384, 384]")
            && stdout.contains("`text` (mask derived by the graph)"),
        "{stdout}"
    );
    let (code, _, stderr) = init(&["--tokenizer".as_ref(), "x.json".as_ref()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--from-open-clip") && stderr.contains("--tokenizer"),
        "{stderr}"
    );
}

/// `family`'s files in a temporary directory, with `edit` applied to its `sightline.json`.
fn edited_copy(family: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(family);
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        let to = tmp.path().join(entry.path().strip_prefix(&src).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    let path = tmp.path().join("sightline.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    tmp
}

#[test]
fn manifests_that_contradict_their_graphs_are_refused_at_start() {
    let start_error = |dir: &Path| match Engine::start(dir, test_options()) {
        Ok(_) => panic!("{} must not start", dir.display()),
        Err(e) => format!("{e:#}"),
    };
    // The text graph takes exactly 77 tokens: padding to the longest text cannot feed it.
    let dir = edited_copy("tiny-xlmr-openclip", |m| {
        m["text"]["padding"] = "longest".into()
    });
    let err = start_error(dir.path());
    assert!(
        err.contains("`text.padding`") && err.contains("77"),
        "{err}"
    );
    // tiny-clip's graphs do not normalise: the probe catches a manifest that says they do.
    let dir = edited_copy("tiny-clip", |m| m["outputs_normalized"] = true.into());
    let err = start_error(dir.path());
    assert!(err.contains("`outputs_normalized`"), "{err}");
    // The family's tokenizer is Unigram, not the default WordPiece.
    let dir = edited_copy("tiny-xlmr-openclip", |m| {
        m["text"].as_object_mut().unwrap().remove("tokenizer_kind");
    });
    let err = start_error(dir.path());
    assert!(
        err.contains("`text.tokenizer_kind`") && err.contains("Unigram"),
        "{err}"
    );
}
