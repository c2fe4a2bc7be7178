//! The input classifier (`sightline::engine::classify`): any string, under each modality hint,
//! gives an item or an input error with a message, never a panic; `modality=text` keeps every
//! string as it is; what it calls an image carries a signature Sightline decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline::engine::preprocess::{sniff_format, Sniffed};
use sightline::engine::{classify, Item, ModalityHint};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return; // JSON strings are UTF-8: nothing else reaches the classifier
    };
    for hint in [ModalityHint::Auto, ModalityHint::Image, ModalityHint::Text] {
        match classify(input, hint) {
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
            #[allow(unreachable_patterns)]
            Ok(_) => {} // URL inputs (issue 6, Scope 4) are fetched elsewhere
            Err(e) => {
                assert_ne!(hint, ModalityHint::Text, "modality=text refused {input:?}");
                assert!(!e.message.is_empty());
            }
        }
    }
});
