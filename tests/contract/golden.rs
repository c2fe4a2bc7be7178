//! Golden tests: Rust must reproduce the Python reference (`tools/reference.py`, PIL + numpy +
//! onnxruntime) on the committed fixtures: preprocessed pixels within 2/255 on smooth images,
//! vectors at cosine ≥ 0.9999, identical token ids, and both text forms agreeing.

use std::path::PathBuf;

use axum::http::StatusCode;
use serde::Deserialize;
use sightline::engine::bundle::Preprocess;
use sightline::engine::preprocess::{decode_rgb, resize_crop, DecodeOptions};
use sightline::engine::text::{TextTokenizer, TokenizerSettings};
use sightline::engine::{Engine, EngineOptions, Item};

use crate::child::ChildServer;
use crate::common::{cosine, es_old_openai_parse, fixture, test_options};

/// The reference decodes every JPEG pixel; the prescaled fast path has its own test.
const EXACT: DecodeOptions = DecodeOptions {
    max_pixels: 100_000_000,
    max_alloc: 1 << 30,
    jpeg_prescale: false,
};

fn exact() -> EngineOptions {
    EngineOptions {
        decode: EXACT,
        ..test_options()
    }
}

fn fixtures() -> PathBuf {
    fixture("")
}

#[derive(Deserialize)]
struct ImageGolden {
    cases: Vec<ImageCase>,
    broken: Vec<String>,
}

#[derive(Deserialize)]
struct ImageCase {
    file: String,
    smooth: bool,
    width: u32,
    height: u32,
    pre: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct TextGolden {
    max_seq_len: usize,
    cases: Vec<TextCase>,
    batch_check: BatchCheck,
    rejected_texts: Vec<String>,
}

#[derive(Deserialize)]
struct TextCase {
    text: String,
    ids: Vec<i64>,
    truncated: bool,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct BatchCheck {
    texts: Vec<String>,
    index: usize,
}

#[derive(Deserialize)]
struct FormsGolden {
    cases: Vec<FormCase>,
}

#[derive(Deserialize)]
struct FormCase {
    text: String,
    embedding: Vec<f32>,
}

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixtures().join("golden").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn engine(bundle: &str, opts: EngineOptions) -> Engine {
    Engine::start(&fixtures().join(bundle), opts).unwrap()
}

#[test]
fn preprocessed_pixels_match_the_reference() {
    let golden: ImageGolden = load("images.json");
    assert!(golden.cases.len() >= 19);
    for case in &golden.cases {
        let bytes = std::fs::read(fixtures().join("images").join(&case.file)).unwrap();
        let rgb = decode_rgb(&bytes, &EXACT, 224).unwrap();
        assert_eq!(
            rgb.dimensions(),
            (case.width, case.height),
            "{}: size after EXIF",
            case.file
        );
        let ours = resize_crop(&rgb, &Preprocess::default()).unwrap();
        let theirs = image::open(fixtures().join("golden").join(&case.pre))
            .unwrap()
            .into_rgb8();
        let max_diff = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        if case.smooth {
            assert!(
                max_diff <= 2,
                "{}: max pixel difference {max_diff} > 2",
                case.file
            );
        }
    }
}

#[tokio::test]
async fn image_vectors_match_the_reference() {
    let golden: ImageGolden = load("images.json");
    let engine = engine("tiny-clip", exact());
    let items = golden
        .cases
        .iter()
        .map(|c| Item::Image(std::fs::read(fixtures().join("images").join(&c.file)).unwrap()))
        .collect();
    let results = engine.embed(items).await.unwrap();
    assert_eq!(results.len(), golden.cases.len());
    for (case, result) in golden.cases.iter().zip(results) {
        let e = result.unwrap_or_else(|err| panic!("{}: {err}", case.file));
        assert_eq!(e.vector.len(), 512);
        let cos = cosine(&e.vector, &case.embedding);
        assert!(cos >= 0.9999, "{}: cosine {cos}", case.file);
    }
}

#[tokio::test]
async fn broken_images_fail_alone_and_neighbours_succeed() {
    let golden: ImageGolden = load("images.json");
    let engine = engine("tiny-clip", test_options());
    let good = std::fs::read(fixtures().join("images/landscape.jpg")).unwrap();
    let mut items = vec![Item::Image(good.clone())];
    for file in &golden.broken {
        items.push(Item::Image(
            std::fs::read(fixtures().join("images").join(file)).unwrap(),
        ));
    }
    items.push(Item::Image(good));
    let results = engine.embed(items).await.unwrap();
    assert_eq!(results.len(), golden.broken.len() + 2);
    assert!(results[0].is_ok() && results.last().unwrap().is_ok());
    for (file, result) in golden.broken.iter().zip(&results[1..]) {
        let err = result
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{file} must fail"));
        assert!(!err.message.is_empty(), "{file}");
    }
}

#[tokio::test]
async fn token_ids_and_text_vectors_match_the_reference() {
    let golden: TextGolden = load("texts.json");
    let tokenizer = TextTokenizer::load(
        &fixtures().join("tiny-clip/tokenizer.json"),
        TokenizerSettings::word_piece(golden.max_seq_len),
    )
    .unwrap();
    for case in &golden.cases {
        let tokens = tokenizer.tokenize(&case.text).unwrap();
        assert_eq!(tokens.ids, case.ids, "{:?}", case.text);
        assert_eq!(tokens.truncated, case.truncated, "{:?}", case.text);
    }
    assert!(
        golden.cases.iter().any(|c| c.truncated) && golden.cases.iter().any(|c| c.ids.len() == 128)
    );
    for text in &golden.rejected_texts {
        assert!(
            tokenizer.tokenize(text).is_err(),
            "{text:?} must be rejected"
        );
    }
    let engine = engine("tiny-clip", test_options());
    let items = golden
        .cases
        .iter()
        .map(|c| Item::Text(c.text.clone()))
        .collect();
    for (case, result) in golden.cases.iter().zip(engine.embed(items).await.unwrap()) {
        let e = result.unwrap();
        assert_eq!(e.truncated, case.truncated);
        let cos = cosine(&e.vector, &case.embedding);
        assert!(cos >= 0.9999, "{:?}: cosine {cos}", case.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_is_the_same_alone_and_padded_in_a_batch() {
    let golden: TextGolden = load("texts.json");
    let check = &golden.batch_check;
    // A batch of exactly the number of texts that waits an hour for company runs only once all
    // of them are in it: one padded batch, which the server's own `/metrics` confirms.
    let server = ChildServer::start(&[
        "--max-batch-text",
        &check.texts.len().to_string(),
        "--text-batch-wait",
        "1h",
    ]);
    let texts: Vec<&str> = check.texts.iter().map(String::as_str).collect();
    let reply = server.embed(&texts).await;
    reply.assert_status(StatusCode::OK);
    let together = es_old_openai_parse(&reply.body).expect("the old ES parser reads it");
    assert_eq!(
        server.batches("text").await,
        (1.0, check.texts.len() as f64),
        "one text batch holding every text (count, sum)"
    );
    let alone = engine("tiny-clip", test_options())
        .embed(vec![Item::Text(check.texts[check.index].clone())])
        .await
        .unwrap();
    let (a, b) = (&together[check.index], &alone[0].as_ref().unwrap().vector);
    let max_diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-6, "max difference {max_diff}");
}

#[tokio::test]
async fn token_state_form_matches_pooled_form() {
    let golden: FormsGolden = load("forms.json");
    let form_a = engine("tiny-clip", test_options());
    let form_b = engine("tiny-clip-tokens", test_options());
    let items: Vec<Item> = golden
        .cases
        .iter()
        .map(|c| Item::Text(c.text.clone()))
        .collect();
    let (a, b) = (
        form_a.embed(items.clone()).await.unwrap(),
        form_b.embed(items).await.unwrap(),
    );
    for ((case, a), b) in golden.cases.iter().zip(a).zip(b) {
        let (a, b) = (a.unwrap().vector, b.unwrap().vector);
        assert!(cosine(&a, &b) >= 0.99999, "{:?}", case.text);
        assert!(cosine(&b, &case.embedding) >= 0.9999, "{:?}", case.text);
    }
}

#[tokio::test]
async fn jpeg_prescaling_stays_within_the_accuracy_budget() {
    // issue 5: decoding at a reduced DCT scale must keep cosine ≥ 0.999 to the exact path.
    let bytes = std::fs::read(fixtures().join("images/large-2400x1600.jpg")).unwrap();
    let exact = engine("tiny-clip", exact())
        .embed(vec![Item::Image(bytes.clone())])
        .await
        .unwrap();
    let fast = engine("tiny-clip", test_options())
        .embed(vec![Item::Image(bytes)])
        .await
        .unwrap();
    let (exact, fast) = (
        &exact[0].as_ref().unwrap().vector,
        &fast[0].as_ref().unwrap().vector,
    );
    assert_ne!(
        exact, fast,
        "the 2400×1600 image must take the prescaled path"
    );
    let cos = cosine(exact, fast);
    assert!(cos >= 0.999, "cosine {cos}");
}
