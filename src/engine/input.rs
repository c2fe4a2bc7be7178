//! Turns one input string into an [`Item`]: a `data:image/...;base64,` URI or a raw base64 string
//! whose bytes are an image become an image, a bare `http(s)://` URL becomes a URL input, anything
//! else is text (es-contract §11 item 9: the endpoint-creation probe `"how big"` must come back as
//! a text vector).
//!
//! A URL input is recognised whether or not fetching is on, so that with fetching off it is
//! refused with a message (the engine's [`UrlFetcher`] decides), never silently embedded as the text of the link.
//! `?modality=text` keeps a link a text.
//!
//! Base64 rules (documented in the README): the standard alphabet, padding optional, ASCII white
//! space (MIME line breaks) ignored. The URL-safe alphabet is refused with a message saying so,
//! because a string mixing both alphabets cannot be read unambiguously.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use futures::future::BoxFuture;

use super::error::EmbedError;
use super::format::{self, sniff_format, Sniffed};

/// One thing to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Encoded image bytes (JPEG, PNG, ...), decoded later on the preprocessing pool.
    Image(Vec<u8>),
    Text(String),
    /// An `http(s)://` URL naming an image; fetched by `fetch.rs` if the engine allows it.
    Url(String),
}

/// The two spaces-sharing modalities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    pub fn label(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
        }
    }
}

/// How to read input strings; from the `modality` query parameter (ES keeps the URL verbatim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModalityHint {
    #[default]
    Auto,
    Image,
    Text,
}

impl std::str::FromStr for ModalityHint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ModalityHint::Auto),
            "image" => Ok(ModalityHint::Image),
            "text" => Ok(ModalityHint::Text),
            other => Err(format!(
                "unknown modality `{other}`: use `image`, `text` or `auto`"
            )),
        }
    }
}

/// Where URL inputs are fetched: `crate::url::Fetcher`, handed to the engine through
/// `EngineOptions::url_fetcher`. The engine only calls it, so it knows no network policy.
pub trait UrlFetcher: Send + Sync + std::fmt::Debug {
    /// Refuses, without any network, a URL that would never be fetched.
    fn check(&self, url: &str) -> Result<(), EmbedError>;
    /// The image the URL names: bytes with a supported signature, or why not.
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, EmbedError>>;
}

/// The error every URL input gets while fetching is off; it names the flag that turns it on.
pub(crate) fn urls_disabled() -> EmbedError {
    EmbedError::bad_input(
        "URL inputs are disabled: start `sightline serve` with `--allow-url-hosts` to fetch images \
         from listed hosts, or send the image inline as a `data:image/...;base64,` URI",
    )
}

/// Base64 with optional padding: ES and most clients pad, some tools strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Raw base64 shorter than this is never sniffed as an image: no image file is that small,
/// and short words like `dogs` are valid base64.
const MIN_RAW_BASE64: usize = 24;

/// Classifies one input string ([`Engine::parse_input`](super::Engine::parse_input) is the
/// public door: it adds the URL checks).
pub(crate) fn classify(input: &str, hint: ModalityHint) -> Result<Item, EmbedError> {
    if hint == ModalityHint::Text {
        return Ok(Item::Text(input.to_owned()));
    }
    if let Some(uri) = DataUri::parse(input) {
        return uri.into_item();
    }
    if let Some(url) = bare_url(input) {
        return Ok(Item::Url(url.to_owned()));
    }
    match hint {
        ModalityHint::Image => {
            let bytes = decode_base64(input)?;
            image_item(bytes)
        }
        _ => match sniff_raw_base64(input) {
            Some(bytes) => image_item(bytes?),
            None => Ok(Item::Text(input.to_owned())),
        },
    }
}

/// A string that is one `http://` or `https://` URL and nothing else: white space anywhere
/// inside makes it a text (a sentence that starts with a link).
fn bare_url(input: &str) -> Option<&str> {
    let trimmed = input.trim();
    let scheme = ["http://", "https://"].into_iter().find(|scheme| {
        trimmed
            .get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    })?;
    (trimmed.len() > scheme.len() && !trimmed.contains(char::is_whitespace)).then_some(trimmed)
}

/// Checks that decoded bytes are an image Sightline can decode.
fn image_item(bytes: Vec<u8>) -> Result<Item, EmbedError> {
    format::image_bytes(bytes, "the decoded bytes are").map(Item::Image)
}

/// A raw base64 string is an image when its first bytes carry an image signature.
/// Only a prefix is decoded to decide, so long texts cost nothing here. `None` means text;
/// once the signature says image, a decoding error is the client's and is returned as such.
fn sniff_raw_base64(input: &str) -> Option<Result<Vec<u8>, EmbedError>> {
    let trimmed = input.trim();
    if trimmed.len() < MIN_RAW_BASE64 || !trimmed.bytes().all(is_base64_byte) {
        return None;
    }
    // 32 base64 chars → 24 bytes: enough for every signature we sniff (WebP/HEIF need 12).
    // White space (MIME line breaks) is skipped, and the URL-safe alphabet is sniffed too, so
    // that such an image gets its precise error instead of becoming a text.
    let head: String = trimmed
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .take(32)
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let head = BASE64.decode(&head[..head.len() / 4 * 4]).ok()?;
    strong_signature(&head).then(|| decode_base64(trimmed))
}

/// Signatures long enough that a text is practically never mistaken for them. Two-byte ones
/// (PNM's `P1`..`P7`, ICO, TGA) would turn ordinary words into "images"; BMP's `BM` counts
/// only with its reserved header bytes at zero.
fn strong_signature(head: &[u8]) -> bool {
    match sniff_format(head) {
        Sniffed::Supported(image::ImageFormat::Bmp) => head.get(6..10) == Some(&[0, 0, 0, 0]),
        Sniffed::Supported(_) => true,
        Sniffed::Unsupported(name) => matches!(name, "HEIC" | "AVIF" | "SVG"),
        Sniffed::Unknown => false,
    }
}

fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
        || b.is_ascii_whitespace()
}

/// Strict standard base64 (optional padding, white space ignored), with messages that say
/// what is wrong and where.
pub(super) fn decode_base64(input: &str) -> Result<Vec<u8>, EmbedError> {
    let compact: Cow<str> = if input.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(input.chars().filter(|c| !c.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(input)
    };
    if compact.is_empty() {
        return Err(format::empty());
    }
    if compact.contains(['-', '_']) {
        return Err(EmbedError::bad_input(
            "invalid base64: URL-safe characters `-`/`_` found; use the standard alphabet (`+`, `/`)",
        ));
    }
    BASE64
        .decode(compact.as_bytes())
        .map_err(|e| EmbedError::bad_input(format!("invalid base64: {e}")))
}

/// `data:<media type>[;params][;base64],<payload>`.
struct DataUri<'a> {
    media_type: &'a str,
    base64: bool,
    payload: &'a str,
}

impl<'a> DataUri<'a> {
    /// Recognises a data URI by its shape (`data:type/subtype...,`), so a text that merely
    /// starts with "data:" stays a text.
    fn parse(input: &'a str) -> Option<DataUri<'a>> {
        let rest = input.strip_prefix("data:")?;
        let (header, payload) = rest.split_once(',')?;
        let mut params = header.split(';');
        let media_type = params.next()?;
        let (kind, sub) = media_type.split_once('/')?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        };
        if !token(kind) || !token(sub) {
            return None;
        }
        let base64 = params.any(|p| p.eq_ignore_ascii_case("base64"));
        Some(DataUri {
            media_type,
            base64,
            payload,
        })
    }

    fn into_item(self) -> Result<Item, EmbedError> {
        let lower = self.media_type.to_ascii_lowercase();
        if !lower.starts_with("image/") {
            return Err(EmbedError::bad_input(format!(
                "data URI media type `{}` is not an image",
                self.media_type
            )));
        }
        if !self.base64 {
            return Err(EmbedError::bad_input(
                "data URI is not base64-encoded: use `data:image/...;base64,`",
            ));
        }
        if matches!(
            lower.as_str(),
            "image/svg+xml" | "image/heic" | "image/heif" | "image/avif"
        ) {
            return Err(format::unsupported(
                &lower["image/".len()..].to_ascii_uppercase(),
            ));
        }
        image_item(decode_base64(self.payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ErrorKind;

    #[test]
    fn disabled_urls_name_the_flag() {
        assert!(urls_disabled().message.contains("`--allow-url-hosts`"));
    }

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

    fn kind(r: Result<Item, EmbedError>) -> ErrorKind {
        r.unwrap_err().kind
    }

    #[test]
    fn probe_and_plain_words_are_text() {
        for s in [
            "how big",
            "dogs",
            "data: not a uri",
            "",
            "Straße im Schnee",
            "QUJD",
        ] {
            assert_eq!(
                classify(s, ModalityHint::Auto).unwrap(),
                Item::Text(s.into()),
                "{s}"
            );
        }
    }

    #[test]
    fn weak_signatures_do_not_make_texts_images() {
        // "P6 ..." (PNM) and "BM" + garbage (not a BMP header) are texts when sent raw.
        for bytes in [
            &b"P6 640 480 255 and more text"[..],
            b"BMxx\x01\x02zzzzzzzzzzzzzzzzzzzz",
        ] {
            let text = BASE64.encode(bytes);
            assert_eq!(
                classify(&text, ModalityHint::Auto).unwrap(),
                Item::Text(text.clone())
            );
        }
    }

    #[test]
    fn raw_base64_images_are_never_mistaken_for_texts() {
        // Wrapped every 16 columns: the signature is found across the line breaks.
        let wrapped: Vec<&str> = PNG_1X1
            .as_bytes()
            .chunks(16)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert!(matches!(
            classify(&wrapped.join("\n"), ModalityHint::Auto),
            Ok(Item::Image(_))
        ));
        // URL-safe alphabet and a cut mid-quantum: image errors that say why, not texts.
        let url_safe = PNG_1X1.replace('/', "_").replace('+', "-");
        let e = classify(&url_safe, ModalityHint::Auto).unwrap_err();
        assert!(e.message.contains("URL-safe"), "{}", e.message);
        let cut = &PNG_1X1[..PNG_1X1.len() - 3];
        let e = classify(cut, ModalityHint::Auto).unwrap_err();
        assert!(e.message.starts_with("invalid base64"), "{}", e.message);
    }

    #[test]
    fn raw_base64_and_data_uri_images_are_images() {
        let Item::Image(raw) = classify(PNG_1X1, ModalityHint::Auto).unwrap() else {
            panic!("raw base64 PNG must be an image")
        };
        assert_eq!(&raw[..4], b"\x89PNG");
        let uri = format!("data:image/png;base64,{PNG_1X1}");
        assert_eq!(
            classify(&uri, ModalityHint::Auto).unwrap(),
            Item::Image(raw.clone())
        );
        // MIME line breaks and missing padding are accepted.
        let wrapped = format!(
            "{}\r\n{}",
            &PNG_1X1[..40],
            PNG_1X1[40..].trim_end_matches('=')
        );
        assert_eq!(
            classify(&wrapped, ModalityHint::Auto).unwrap(),
            Item::Image(raw)
        );
    }

    #[test]
    fn hints_override_detection() {
        assert_eq!(
            classify(PNG_1X1, ModalityHint::Text).unwrap(),
            Item::Text(PNG_1X1.into())
        );
        assert_eq!(
            kind(classify("how big", ModalityHint::Image)),
            ErrorKind::BadInput
        );
        assert_eq!("image".parse::<ModalityHint>(), Ok(ModalityHint::Image));
        assert!("video"
            .parse::<ModalityHint>()
            .unwrap_err()
            .contains("video"));
    }

    #[test]
    fn bad_images_are_errors_not_texts() {
        // A signature is enough to be an image here; decoding reports truncation later.
        let truncated = format!("data:image/png;base64,{}", &PNG_1X1[..20]);
        assert!(matches!(
            classify(&truncated, ModalityHint::Auto),
            Ok(Item::Image(_))
        ));
        let e = classify("data:image/png;base64,@@@@", ModalityHint::Auto).unwrap_err();
        assert!(e.message.starts_with("invalid base64"), "{}", e.message);
        let e = classify("data:text/plain;base64,aGVsbG8=", ModalityHint::Auto).unwrap_err();
        assert!(
            e.message.contains("`text/plain` is not an image"),
            "{}",
            e.message
        );
        let e = classify("data:image/png;base64,", ModalityHint::Auto).unwrap_err();
        assert_eq!(e.message, "the image is empty");
        let url_safe = format!("data:image/png;base64,{}", PNG_1X1.replace('/', "_"));
        let e = classify(&url_safe, ModalityHint::Auto).unwrap_err();
        assert!(e.message.contains("URL-safe"), "{}", e.message);
        let e = classify("data:image/png;base64,aGVsbG8gd29ybGQ=", ModalityHint::Auto).unwrap_err();
        assert!(e.message.contains("not an image"), "{}", e.message);
    }

    #[test]
    fn bare_urls_are_url_inputs_unless_the_hint_says_text() {
        for s in [
            "https://images.example.com/cat.jpg",
            "http://127.0.0.1:8080/a.png?x=1",
            "HTTPS://Example.com/a.png",
            "  https://example.com/a.png\n",
        ] {
            assert_eq!(
                classify(s, ModalityHint::Auto).unwrap(),
                Item::Url(s.trim().into()),
                "{s}"
            );
            assert_eq!(
                classify(s, ModalityHint::Image).unwrap(),
                Item::Url(s.trim().into())
            );
            assert_eq!(
                classify(s, ModalityHint::Text).unwrap(),
                Item::Text(s.into())
            );
        }
        // A sentence holding a link, a bare scheme and other schemes stay texts.
        for s in [
            "see https://example.com/cat.jpg",
            "https://example.com/cat.jpg is a cat",
            "https://",
            "ftp://example.com/a.png",
            "httpx://example.com",
        ] {
            assert_eq!(
                classify(s, ModalityHint::Auto).unwrap(),
                Item::Text(s.into()),
                "{s}"
            );
        }
    }

    #[test]
    fn unsupported_formats_say_so() {
        let svg = format!("data:image/svg+xml;base64,{}", BASE64.encode("<svg></svg>"));
        assert_eq!(
            kind(classify(&svg, ModalityHint::Auto)),
            ErrorKind::Unsupported
        );
        let mut heic = vec![0, 0, 0, 24];
        heic.extend_from_slice(b"ftypheic\0\0\0\0mif1heic");
        let raw = BASE64.encode(&heic);
        assert_eq!(
            kind(classify(&raw, ModalityHint::Auto)),
            ErrorKind::Unsupported
        );
    }
}
