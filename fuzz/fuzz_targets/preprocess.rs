//! Image decode + preprocess (`sightline::engine::preprocess::preprocess`): any bytes give the
//! model's `3 × 224 × 224` tensor of finite values or an input error, never a panic (libFuzzer's
//! panic hook aborts even inside the `catch_unwind` that protects the server, so a decoder panic
//! shows up here), within the pixel and allocation limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline::engine::bundle::Preprocess;
use sightline::engine::preprocess::preprocess;
use sightline::engine::DecodeOptions;

fuzz_target!(|data: &[u8]| {
    let cfg = Preprocess::default();
    let opts = DecodeOptions {
        // Lower than the server's defaults, so one input cannot cost seconds; the limits are
        // what is under test, not their values.
        max_pixels: 16_000_000,
        max_alloc: 512 << 20,
        // Both JPEG paths: DCT prescale on, and exact full decode.
        jpeg_prescale: data.last().is_some_and(|b| b & 1 == 0),
    };
    if let Ok(tensor) = preprocess(data, &cfg, &opts) {
        let size = cfg.size as usize;
        assert_eq!(tensor.len(), 3 * size * size);
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
});
