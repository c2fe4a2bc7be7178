//! The decode memory budget (`--decode-memory`, issue 16 §2): an image larger than the whole
//! budget is a final 400 naming the limit and the image's size, in every dialect and through
//! the real binary's flag; images that fit only one at a time wait for each other and all
//! succeed.

use std::io::Cursor;

use axum::http::StatusCode;
use base64::Engine as _;

use crate::child::ChildServer;
use crate::common::*;
use sightline::engine::EngineOptions;
use sightline::http::router;

/// A `w × h` RGBA PNG as a data URI (4 bytes a pixel decoded), its pixels varied so every copy
/// is really decoded.
fn rgba_png(w: u32, h: u32) -> String {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 7, 200]));
    let mut png = Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .expect("encode");
    let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
    format!("data:image/png;base64,{b64}")
}

const TOO_BIG: &str = "input[0]: image is 1000×1000 × 4 bytes a pixel = 4000000 bytes decoded, \
     more than the decode memory limit of 1048576 bytes (`--decode-memory`)";

#[tokio::test]
async fn an_image_that_could_never_fit_is_a_400_naming_the_limit_and_its_size() {
    let app = router(
        start_engine(EngineOptions {
            decode_memory: 1 << 20,
            ..test_options()
        }),
        http_config(),
    );
    let big = rgba_png(1000, 1000);
    let reply = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&[&big], None, None, false)),
    )
    .await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.openai_error(),
        (TOO_BIG.to_owned(), "invalid_request_error".to_owned())
    );
    let reply = send(&app, hf_request("/embed", hf_body(&[&big]))).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(reply.hf_error(), TOO_BIG);
    // An image that fits is served by the same engine.
    let small = rgba_png(100, 100);
    send(
        &app,
        openai_request("/v1/embeddings", openai_body(&[&small], None, None, false)),
    )
    .await
    .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn images_that_fit_one_at_a_time_wait_for_room_and_all_succeed() {
    // 400 × 400 RGBA is 640 000 bytes: the 1 MiB budget holds one, so with two decoding
    // threads the second image of each pair waits until the first's frame is freed.
    let app = router(
        start_engine(EngineOptions {
            decode_memory: 1 << 20,
            decode_workers: 2,
            ..test_options()
        }),
        http_config(),
    );
    let image = rgba_png(400, 400);
    let inputs = [image.as_str(); 6];
    let reply = send(
        &app,
        openai_request("/v1/embeddings", openai_body(&inputs, None, None, false)),
    )
    .await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.json()["data"].as_array().map(Vec::len), Some(6));
}

#[tokio::test]
async fn the_serve_flag_sets_the_budget() {
    let server = ChildServer::start(&["--decode-memory", "1MiB"]);
    let big = rgba_png(1000, 1000);
    let reply = server.embed(&[&big]).await;
    reply.assert_status(StatusCode::BAD_REQUEST);
    assert_eq!(reply.openai_error().0, TOO_BIG);
}
