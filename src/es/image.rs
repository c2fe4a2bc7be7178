//! From an image file's bytes to what Elasticsearch receives: the format and size for the
//! metadata fields, the payload that travels as base64 to the sidecar, and a small JPEG
//! thumbnail that stays in `_source` so results can be shown.
//!
//! The payload is the original file whenever the sidecar can take it as is (JPEG, PNG or WebP,
//! longer side within `max_side`). Larger images, and other formats, are decoded, turned upright,
//! shrunk and re-encoded as JPEG: CLIP sees 224 pixels anyway, and a 12-megapixel photo
//! would otherwise cross Elasticsearch and the sidecar as 16 MB of base64 per document.
//! `search --image` prepares its query image with the same function, so a file searched for
//! reaches the model exactly as it did at ingest.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

use crate::engine::format::{format_name, supported_format};
use crate::engine::preprocess::decode_rgb;
use crate::engine::DecodeOptions;

/// File extensions (lower case) that `ingest` picks up without sniffing.
pub(crate) const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff",
];

/// Size limits for the payload and the thumbnail.
#[derive(Debug, Clone, Copy)]
pub struct ImageOptions {
    /// Longer side of the payload sent for embedding; larger images are shrunk.
    pub max_side: u32,
    /// Longer side of the stored thumbnail.
    pub thumbnail_side: u32,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            max_side: 1024,
            thumbnail_side: 160,
        }
    }
}

/// A decoded, checked image ready to be put in a document.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `jpeg`, `png`, … as sniffed from the content, not the file name.
    pub format: &'static str,
    /// Size after EXIF rotation, as a viewer shows it.
    pub width: u32,
    pub height: u32,
    /// Bytes to embed: the original file or an upright, shrunk JPEG.
    pub payload: Bytes,
    pub payload_mime: &'static str,
    /// JPEG bytes of the thumbnail.
    pub thumbnail: Vec<u8>,
}

impl PreparedImage {
    /// `data:image/…;base64,…`: the form contract §11.9 recommends, so the sidecar can never
    /// mistake an image for text.
    pub fn data_uri(&self) -> String {
        data_uri(self.payload_mime, &self.payload)
    }

    pub fn thumbnail_base64(&self) -> String {
        BASE64.encode(&self.thumbnail)
    }
}

/// Media types a payload is sent as ([`prepare`] passes JPEG, PNG and WebP through and
/// re-encodes everything else to JPEG); `ingest --redrive` reads them back from parked
/// documents.
pub(crate) const IMAGE_MIMES: [&str; 3] = ["image/jpeg", "image/png", "image/webp"];

/// `data:<mime>;base64,<bytes>`.
pub(crate) fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", BASE64.encode(bytes))
}

/// True when the extension says "image"; the content decides later.
pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .map(|ext| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Decodes `bytes` and prepares payload and thumbnail. Decoding is the engine's own
/// (`engine::preprocess::decode_rgb`: same limits, EXIF rotation, truncated-JPEG check, alpha on
/// white), so a file ingest accepts is one the sidecar accepts too. Errors say why the file is not
/// a usable image; callers report them per file.
pub fn prepare(bytes: &[u8], options: ImageOptions) -> Result<PreparedImage> {
    let format = supported_format(bytes, "the file is").map_err(|err| anyhow!("{err}"))?;
    // Full-resolution decode (no JPEG prescale): the metadata reports the real size, and the
    // payload and thumbnail are resized from all the pixels.
    let decode_options = DecodeOptions {
        jpeg_prescale: false,
        ..DecodeOptions::default()
    };
    let upright =
        decode_rgb(bytes, &decode_options, options.max_side).map_err(|err| anyhow!("{err}"))?;
    let decoded = DynamicImage::ImageRgb8(upright);
    let (width, height) = (decoded.width(), decoded.height());

    // The sidecar decodes the original the same way (rotation included), so it can go as is.
    let passthrough_format = matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    );
    let small_enough = width.max(height) <= options.max_side;
    let (payload, payload_mime) = if passthrough_format && small_enough {
        (Bytes::copy_from_slice(bytes), format.to_mime_type())
    } else {
        let resized = if small_enough {
            decoded.clone()
        } else {
            decoded.resize(options.max_side, options.max_side, FilterType::Triangle)
        };
        (Bytes::from(encode_jpeg(&resized, 90)?), "image/jpeg")
    };
    let thumbnail = encode_jpeg(
        &decoded.thumbnail(options.thumbnail_side, options.thumbnail_side),
        80,
    )?;
    Ok(PreparedImage {
        format: format_name(format),
        width,
        height,
        payload,
        payload_mime,
        thumbnail,
    })
}

fn encode_jpeg(image: &DynamicImage, quality: u8) -> Result<Vec<u8>> {
    // JPEG has no alpha: flatten to RGB first.
    let rgb = image.to_rgb8();
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    rgb.write_with_encoder(encoder)
        .context("cannot encode JPEG")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn small_png_passes_through_untouched() {
        let bytes = png(40, 20);
        let prepared = prepare(&bytes, ImageOptions::default()).unwrap();
        assert_eq!(prepared.format, "png");
        assert_eq!((prepared.width, prepared.height), (40, 20));
        assert_eq!(&prepared.payload[..], &bytes[..]);
        assert!(prepared
            .data_uri()
            .starts_with("data:image/png;base64,iVBOR"));
        // the thumbnail is a JPEG no larger than asked
        let thumb = image::load_from_memory(&prepared.thumbnail).unwrap();
        assert!(thumb.width() <= 160 && thumb.height() <= 160);
        assert_eq!(
            image::guess_format(&prepared.thumbnail).unwrap(),
            ImageFormat::Jpeg
        );
    }

    #[test]
    fn large_image_is_shrunk_to_a_jpeg_payload() {
        let options = ImageOptions {
            max_side: 64,
            thumbnail_side: 16,
        };
        let original = png(200, 100);
        let prepared = prepare(&original, options).unwrap();
        assert_ne!(
            &prepared.payload[..],
            &original[..],
            "re-encoded, not passed through"
        );
        assert_eq!(prepared.payload_mime, "image/jpeg");
        assert_eq!(
            (prepared.width, prepared.height),
            (200, 100),
            "metadata keeps the original size"
        );
        let payload = image::load_from_memory(&prepared.payload).unwrap();
        assert_eq!((payload.width(), payload.height()), (64, 32));
    }

    #[test]
    fn broken_and_foreign_files_are_errors() {
        let mut truncated = png(50, 50);
        truncated.truncate(60);
        assert!(prepare(&truncated, ImageOptions::default()).is_err());
        let err = prepare(b"just some text", ImageOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not an image"), "{err}");
    }

    /// The shared fixture images: every file at the top decodes, every file in `broken/` is an
    /// error (truncated, corrupt, wrong magic, empty, decompression bomb).
    #[test]
    fn fixture_images_prepare_and_broken_ones_fail() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
        let Ok(entries) = std::fs::read_dir(&root) else {
            eprintln!("SKIPPED: no fixture images at {}", root.display());
            return;
        };
        let mut good = 0;
        for entry in entries.flatten().filter(|e| e.path().is_file()) {
            let bytes = std::fs::read(entry.path()).unwrap();
            let prepared = prepare(&bytes, ImageOptions::default());
            assert!(
                prepared.is_ok(),
                "{}: {:?}",
                entry.path().display(),
                prepared.err()
            );
            good += 1;
        }
        assert!(good > 0);
        for entry in std::fs::read_dir(root.join("broken")).unwrap().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                prepare(&bytes, ImageOptions::default()).is_err(),
                "{} decoded",
                entry.path().display()
            );
        }
    }

    #[test]
    fn extensions_pick_candidate_files() {
        assert!(has_image_extension(Path::new("a/B.JPG")));
        assert!(!has_image_extension(Path::new("notes.txt")));
        assert!(!has_image_extension(Path::new("noext")));
    }
}
