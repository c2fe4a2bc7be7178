//! The gallery in a real browser: headless Chromium driven through WebDriver (`webdriver.rs`)
//! against the gallery on a loopback port, the fake cluster holding the fixture images, and the
//! tiny-model sidecar. Type a query → thumbnails; drop a picture → that picture first; "more like
//! this" → that picture first; a filter → fewer tiles; the sidecar stopped → the "not ready"
//! state. With `SIGHTLINE_SCREENSHOT=FILE` the same run saves the README screenshot there.
//!
//! Ignored in `cargo test`: `make test-ui` installs Chromium when missing and runs it.

use std::future::IntoFuture;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use sightline::gallery::app;

use crate::fake_es::fixture_images;
use crate::gallery::{config, indexed_cluster, Sidecar};
use crate::webdriver::{browser_paths, Browser};

const TILES: &str = "return document.querySelectorAll('#grid .tile').length";
const FIRST_ID: &str =
    "const t = document.querySelector('#grid .tile'); return t ? t.dataset.id : null";
const DONE: &str = "return Number(document.getElementById('grid').dataset.done || 0)";
const IMAGES_SHOWN: &str = "const imgs = Array.from(document.querySelectorAll('#grid img')); \
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)";

/// Drops the file `arguments[1]` (base64 `arguments[0]`) on the page, as a user dragging it in.
const DROP_FILE: &str = "const [b64, name] = arguments; \
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0)); \
    const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: 'image/jpeg'})); \
    for (const type of ['dragenter', 'dragover', 'drop']) { \
      document.body.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true})); } \
    return true";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drives a real browser: run it with `make test-ui`"]
async fn gallery_ui_in_headless_chromium() {
    let (driver, chromium) = browser_paths().expect(
        "chromium and chromedriver are missing: run scripts/setup-ui.sh (make test-ui does)",
    );
    let mut sidecar = Sidecar::start().await;
    let (fake, indexed) = indexed_cluster("9.1.0").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let gallery = app(config(&fake, &sidecar)).unwrap();
    let server = tokio::spawn(axum::serve(listener, gallery).into_future());
    let browser = Browser::start(&driver, &chromium, 1280, 1000).await;
    browser.goto(&url).await;
    browser
        .wait_for(
            "the status line",
            "return document.getElementById('status').textContent",
            |v| v.as_str().is_some_and(|s| s.contains("model")),
        )
        .await;

    // 1. Search as you type: every picture comes back as a thumbnail.
    browser.type_into("#q", "a sunny landscape").await;
    browser
        .wait_for("a tile per picture", TILES, |v| v == &json!(indexed.len()))
        .await;
    browser
        .wait_for("the thumbnails to load", IMAGES_SHOWN, |v| {
            v == &json!(true)
        })
        .await;
    if let Some(path) = std::env::var_os("SIGHTLINE_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await).unwrap();
        eprintln!("screenshot written to {}", path.to_string_lossy());
    }

    // 2. Drop a picture: it comes back first.
    let dropped = &indexed["landscape.jpg"];
    let bytes = std::fs::read(fixture_images().join("landscape.jpg")).unwrap();
    let before = browser.run(DONE, json!([])).await;
    browser
        .run(DROP_FILE, json!([BASE64.encode(bytes), "landscape.jpg"]))
        .await;
    browser
        .wait_for("the dropped picture's search", DONE, |v| {
            v.as_u64() > before.as_u64()
        })
        .await;
    assert_eq!(browser.run(FIRST_ID, json!([])).await, json!(dropped.id));
    let preview = browser
        .run("return !document.getElementById('query').hidden", json!([]))
        .await;
    assert_eq!(preview, json!(true), "the query picture is shown");

    // 3. "More like this" on the third tile: that picture comes back first.
    let third = browser
        .run(
            "return document.querySelectorAll('#grid .tile')[2].dataset.id",
            json!([]),
        )
        .await;
    assert_ne!(third, json!(dropped.id));
    let before = browser.run(DONE, json!([])).await;
    browser.click("#grid .tile:nth-child(3) .like").await;
    browser
        .wait_for("the more-like-this search", DONE, |v| {
            v.as_u64() > before.as_u64()
        })
        .await;
    assert_eq!(browser.run(FIRST_ID, json!([])).await, third);

    // 4. A format filter: fewer tiles, exactly the PNGs.
    let pngs = indexed.values().filter(|i| i.format == "png").count();
    assert!(pngs < indexed.len());
    browser.click("#filters summary").await;
    let before = browser.run(DONE, json!([])).await;
    browser.click("input[name=format][value=png]").await;
    browser
        .wait_for("the filtered search", DONE, |v| {
            v.as_u64() > before.as_u64()
        })
        .await;
    assert_eq!(browser.run(TILES, json!([])).await, json!(pngs));

    // 5. The sidecar goes away: the next text query shows the "not ready" state.
    sidecar.stop().await;
    browser.clear("#q").await;
    browser.type_into("#q", "a red bicycle").await;
    let code = browser
        .wait_for(
            "the not-ready banner",
            "const b = document.getElementById('banner'); return b.hidden ? null : b.dataset.code",
            |v| !v.is_null(),
        )
        .await;
    assert_eq!(code, Value::from("sidecar_not_ready"));
    let title = browser
        .run(
            "return document.getElementById('banner-title').textContent",
            json!([]),
        )
        .await;
    assert_eq!(title, json!("The sidecar is not ready."));

    browser.close().await;
    server.abort();
}
