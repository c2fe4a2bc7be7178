//! Image formats by signature: which formats Sightline decodes, how a file's first bytes are
//! recognised, and the messages that refuse the rest. The one place that knows the supported
//! list, so every refusal (HTTP input, URL body, ingest file) names the same formats.

use image::ImageFormat;

use super::error::{EmbedError, ErrorKind};

/// The formats Sightline decodes, as messages name them.
const SUPPORTED: &str = "JPEG, PNG, WebP, GIF, BMP or TIFF";

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Supported(ImageFormat),
    /// A recognised image format that Sightline does not decode (name for the message).
    Unsupported(&'static str),
    Unknown,
}

/// Identifies an image by its signature only (no decoding).
pub fn sniff_format(bytes: &[u8]) -> Sniffed {
    if let Ok(format) = image::guess_format(bytes) {
        return match format {
            ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Tiff => Sniffed::Supported(format),
            ImageFormat::Avif => Sniffed::Unsupported("AVIF"),
            other => Sniffed::Unsupported(other.extensions_str().first().copied().unwrap_or("?")),
        };
    }
    if let Some(b"ftyp") = bytes.get(4..8) {
        if let Some(b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1") =
            bytes.get(8..12)
        {
            return Sniffed::Unsupported("HEIC");
        }
    }
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"<svg") || text.starts_with(b"<?xml") {
        return Sniffed::Unsupported("SVG");
    }
    Sniffed::Unknown
}

/// The decodable format of `bytes`, or why they are not an image Sightline takes; `what` names
/// the bytes in the message ("the decoded bytes are", "the URL's body is").
pub(crate) fn supported_format(bytes: &[u8], what: &str) -> Result<ImageFormat, EmbedError> {
    match sniff_format(bytes) {
        Sniffed::Supported(format) => Ok(format),
        Sniffed::Unsupported(name) => Err(unsupported(name)),
        Sniffed::Unknown if bytes.is_empty() => Err(empty()),
        Sniffed::Unknown => Err(EmbedError::bad_input(format!(
            "{what} not an image (no {SUPPORTED} signature)"
        ))),
    }
}

/// Passes `bytes` on when they carry a supported signature (see [`supported_format`]).
pub(crate) fn image_bytes(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, EmbedError> {
    supported_format(&bytes, what)?;
    Ok(bytes)
}

/// A recognised format Sightline does not decode.
pub(crate) fn unsupported(name: &str) -> EmbedError {
    EmbedError::new(
        ErrorKind::Unsupported,
        format!("unsupported image format {name}: send {SUPPORTED}"),
    )
}

/// An image input with no bytes at all.
pub(crate) fn empty() -> EmbedError {
    EmbedError::bad_input("the image is empty")
}

/// The lower-case name ingest records in a document's `format` field.
pub fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        _ => "other",
    }
}

/// A small generated JPEG (a 32 × 32 colour gradient): the image `setup` sends through the
/// endpoint and `model init` through a new bundle, so neither check needs a file on disk.
pub(crate) fn sample_jpeg() -> Result<Vec<u8>, image::ImageError> {
    let image = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    });
    let mut out = Vec::new();
    image.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
        &mut out, 90,
    ))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_decide_the_format() {
        assert_eq!(
            sniff_format(b"\x89PNG\r\n\x1a\n...."),
            Sniffed::Supported(ImageFormat::Png)
        );
        assert_eq!(sniff_format(b"  <svg xmlns"), Sniffed::Unsupported("SVG"));
        assert_eq!(
            sniff_format(b"  <svg xmlns='http://www.w3.org/2000/svg'/>"),
            Sniffed::Unsupported("SVG")
        );
        assert_eq!(
            sniff_format(b"\0\0\0\x18ftypheic...."),
            Sniffed::Unsupported("HEIC")
        );
        // Shorter than the HEIC box: no out-of-bounds read, just unknown.
        assert_eq!(sniff_format(b"\0\0\0\x18ftyp"), Sniffed::Unknown);
        assert_eq!(sniff_format(b"hello"), Sniffed::Unknown);
        assert_eq!(
            sniff_format(b"GIF89a....."),
            Sniffed::Supported(ImageFormat::Gif)
        );
        assert_eq!(
            sniff_format(&sample_jpeg().unwrap()),
            Sniffed::Supported(ImageFormat::Jpeg)
        );
    }

    #[test]
    fn refusals_name_the_supported_formats() {
        let e = supported_format(b"hello", "the body is").unwrap_err();
        assert_eq!(
            e.message,
            "the body is not an image (no JPEG, PNG, WebP, GIF, BMP or TIFF signature)"
        );
        assert_eq!(
            supported_format(b"", "x").unwrap_err().message,
            "the image is empty"
        );
        let e = supported_format(b"<svg/>", "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert_eq!(
            e.message,
            "unsupported image format SVG: send JPEG, PNG, WebP, GIF, BMP or TIFF"
        );
    }
}
