//! The input parser (`sightline::engine::Engine::parse_input`): any string, under each modality
//! hint, gives an item or an input error with a message, never a panic; `modality=text` keeps
//! every string as it is; what it calls an image carries a signature Sightline decodes. Parsing
//! runs no model, so one engine on the tiny bundle serves every run.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sightline::engine::format::{sniff_format, Sniffed};
use sightline::engine::{Engine, EngineOptions, Item, ModalityHint};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-clip");
        let opts = EngineOptions {
            threads: 1,
            image_lanes: 1,
            decode_workers: 1,
            ..EngineOptions::default()
        };
        Engine::start(std::path::Path::new(bundle), opts)
            .expect("the tiny bundle loads (set ORT_DYLIB_PATH if ONNX Runtime is not found)")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return; // JSON strings are UTF-8: nothing else reaches the parser
    };
    for hint in [ModalityHint::Auto, ModalityHint::Image, ModalityHint::Text] {
        match engine().parse_input(input, hint) {
            Ok(Item::Image(bytes)) => {
                assert_ne!(hint, ModalityHint::Text);
                assert!(
                    matches!(sniff_format(&bytes), Sniffed::Supported(_)),
                    "an image item must carry a supported signature"
                );
            }
            Ok(Item::Text(text)) => {
                assert_ne!(hint, ModalityHint::Image, "modality=image gave a text");
                assert_eq!(text, input, "a text must reach the tokenizer unchanged");
            }
            Ok(Item::Url(_)) => panic!("URL inputs are off: {input:?} must be refused"),
            Err(e) => {
                assert_ne!(hint, ModalityHint::Text, "modality=text refused {input:?}");
                assert!(!e.message.is_empty());
            }
        }
    }
});
