//! Image bytes → the model's input tensor, exactly as model.md §2.1 specifies (the HF/PIL
//! `CLIPImageProcessor`): decode, convert to RGB, resize the shorter side to `size` with PIL's
//! antialiased bicubic, centre-crop, scale to [0, 1], normalise per channel, NCHW f32.
//!
//! Decisions for model.md §2.3: alpha is composited onto white, grayscale and palette become RGB,
//! CMYK is converted by the decoder, 16-bit samples are scaled ÷257, animations give their first
//! frame, EXIF orientation is applied. Pure functions: no ONNX Runtime here.

use std::borrow::Cow;
use std::io::Cursor;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use super::bundle::{CropRule, Interpolation, Preprocess, ResizeRule};
use super::error::EmbedError;
use super::format;
use super::jpeg;

/// How images are decoded: bounds on what one image may cost, and the JPEG fast path.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Largest accepted width × height, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc: u64,
    /// Decode large JPEGs at a reduced DCT scale whose shorter side stays ≥ 3× the model's
    /// input size (`jpeg.rs`); off means decoding every pixel, exactly like the reference.
    pub jpeg_prescale: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: 100_000_000,
            max_alloc: 1 << 30,
            jpeg_prescale: true,
        }
    }
}

/// Bytes → normalised NCHW tensor of `3 × size × size` values.
pub fn preprocess(
    bytes: &[u8],
    cfg: &Preprocess,
    opts: &DecodeOptions,
) -> Result<Vec<f32>, EmbedError> {
    let rgb = decode_rgb(bytes, opts, cfg.size)?;
    let crop = resize_crop(&rgb, cfg)?;
    Ok(normalize(&crop, cfg))
}

/// What decoding one image holds at its peak, known from its header before any pixel is
/// decoded: what it reserves from the decode budget (`decode_budget.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePlan {
    /// Size of the decoded frame (a prescaled JPEG's reduced size).
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub bytes_per_sample: u8,
    /// Held beside the frame: the RGB frame where it is larger than the decoded one (grey),
    /// a second frame for a 90° rotation, a decoder's own buffers (a GIF's first frame, WebP's
    /// planes, a progressive JPEG's coefficients, the image crate's TIFF copy).
    pub extra_bytes: u64,
}

impl DecodePlan {
    fn new(width: u32, height: u32, channels: u8, bytes_per_sample: u8) -> Self {
        let plan = DecodePlan {
            width,
            height,
            channels,
            bytes_per_sample,
            extra_bytes: 0,
        };
        // The frame is converted to RGB in place, growing to 3 bytes a pixel where it is smaller.
        let grow = 3u64.saturating_sub(u64::from(channels) * u64::from(bytes_per_sample));
        plan.plus_per_pixel(grow)
    }

    /// The same plan holding `bytes` more a pixel of the frame beside it.
    pub(crate) fn plus_per_pixel(mut self, bytes: u64) -> Self {
        self.extra_bytes += self.pixels() * bytes;
        self
    }

    fn plus(mut self, bytes: u64) -> Self {
        self.extra_bytes += bytes;
        self
    }

    /// The same plan where `orientation` needs a second, rotated RGB frame.
    fn oriented(self, orientation: Orientation) -> Self {
        let transposes = matches!(
            orientation,
            Orientation::Rotate90
                | Orientation::Rotate270
                | Orientation::Rotate90FlipH
                | Orientation::Rotate270FlipH
        );
        self.plus_per_pixel(if transposes { 3 } else { 0 })
    }

    fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// width × height × channels × bytes per sample.
    pub fn frame_bytes(&self) -> u64 {
        self.pixels() * u64::from(self.channels) * u64::from(self.bytes_per_sample)
    }

    /// The frame and everything held beside it.
    pub fn peak_bytes(&self) -> u64 {
        self.frame_bytes() + self.extra_bytes
    }

    #[cfg(test)]
    pub(crate) fn for_test(width: u32, height: u32, bytes_per_pixel: u8) -> Self {
        DecodePlan {
            width,
            height,
            channels: bytes_per_pixel,
            bytes_per_sample: 1,
            extra_bytes: 0,
        }
    }
}

impl std::fmt::Display for DecodePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, h) = (self.width, self.height);
        let bytes = u32::from(self.channels) * u32::from(self.bytes_per_sample);
        write!(f, "image is {w}×{h} × {bytes} bytes a pixel")
    }
}

/// The header's [`DecodePlan`] for `bytes`, read the way [`decode_rgb`] will decode them (same
/// limits, same JPEG scale): the pixel limit is checked here too.
pub fn plan(bytes: &[u8], opts: &DecodeOptions, target: u32) -> Result<DecodePlan, EmbedError> {
    guarded(bytes, |format| {
        if format == ImageFormat::Jpeg {
            let min_short_side = opts.jpeg_prescale.then_some(3 * target);
            return jpeg::plan(bytes, min_short_side, |w, h| check_pixels(w, h, opts));
        }
        let prepared = prepared(bytes, format);
        let opened = open(&prepared, format, opts)?;
        Ok(opened.plan)
    })
}

/// Decodes the first frame, applies EXIF orientation and converts to 8-bit RGB on white.
/// `target` is the model's input size (for the JPEG prescale).
pub fn decode_rgb(bytes: &[u8], opts: &DecodeOptions, target: u32) -> Result<RgbImage, EmbedError> {
    guarded(bytes, |format| {
        if format == ImageFormat::Jpeg {
            let header = jpeg::header(bytes)?;
            check_pixels(header.width, header.height, opts)?;
            let min_short_side = opts.jpeg_prescale.then_some(3 * target);
            return jpeg::decode(bytes, min_short_side);
        }
        let prepared = prepared(bytes, format);
        let opened = open(&prepared, format, opts)?;
        opened.decode(&prepared, format)
    })
}

/// Runs `f` on a supported image's format. A panic inside a decoder becomes an error for this
/// input only: this is the one `catch_unwind` of the decoding path.
fn guarded<T>(
    bytes: &[u8],
    f: impl FnOnce(ImageFormat) -> Result<T, EmbedError> + std::panic::UnwindSafe,
) -> Result<T, EmbedError> {
    let format = format::supported_format(bytes, "the bytes are")?;
    std::panic::catch_unwind(|| f(format)).map_err(|_| {
        EmbedError::bad_input(format!("the {format:?} decoder failed on this image"))
    })?
}

fn check_pixels(w: u32, h: u32, opts: &DecodeOptions) -> Result<(), EmbedError> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > opts.max_pixels {
        return Err(EmbedError::bad_input(format!(
            "image is {w}×{h} = {pixels} pixels, over the limit of {} (`--max-pixels`)",
            opts.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(EmbedError::bad_input(format!(
            "image is {w}×{h}: no pixels"
        )));
    }
    Ok(())
}

/// The bytes the decoders are given: without what would cost memory or refuse a good file.
fn prepared(bytes: &[u8], format: ImageFormat) -> Cow<'_, [u8]> {
    match format {
        ImageFormat::Png => without_iccp(bytes),
        ImageFormat::Tiff => tiff_first_image_only(bytes),
        _ => Cow::Borrowed(bytes),
    }
}

type TiffDecoder<'a> = tiff::decoder::Decoder<Cursor<&'a [u8]>>;

/// An image whose header has been read, with the decoder that will read its pixels.
struct Opened<'a> {
    source: Source<'a>,
    plan: DecodePlan,
    orientation: Orientation,
}

enum Source<'a> {
    /// 8-bit YCbCr, which the image crate refuses and PIL reads.
    TiffYcbcr(TiffDecoder<'a>),
    /// Chunky grey/RGB, ± alpha, of 8 or 16-bit unsigned samples: read straight into the frame.
    /// The image crate's TIFF reader decodes into a buffer of its own and copies it out, two
    /// frames at once (1.6 GB for a 16-bit RGBA 10 000 × 10 000).
    Tiff(TiffDecoder<'a>),
    /// A layout of samples the frame conversion reads (8/16-bit grey/RGB ± alpha).
    Frame(Box<dyn ImageDecoder + 'a>),
    /// Anything else (float TIFF samples): the image crate's own conversion.
    Dynamic(Box<dyn ImageDecoder + 'a>),
}

/// Reads the header of a non-JPEG image and picks how it will be decoded.
fn open<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    opts: &DecodeOptions,
) -> Result<Opened<'a>, EmbedError> {
    let name = format!("{format:?}").to_uppercase();
    if format == ImageFormat::Tiff {
        if let Some(opened) = open_tiff(bytes, opts)? {
            return Ok(opened);
        }
    }
    let bad = |e: image::ImageError| EmbedError::bad_input(format!("cannot decode {name}: {e}"));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(opts.max_alloc);
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, opts)?;
    // A broken EXIF block must not lose an otherwise good image: fall back to no rotation.
    let orientation = if format == ImageFormat::Png {
        png_orientation(bytes)
    } else {
        decoder.orientation().ok()
    }
    .unwrap_or(Orientation::NoTransforms);
    let color = decoder.color_type();
    let channels = color.channel_count();
    let sample = color.bytes_per_pixel() / channels;
    let mut plan = DecodePlan::new(w, h, channels, sample).oriented(orientation);
    plan = match format {
        // The image crate's TIFF reader (CMYK, planar, bilevel) decodes into a frame of its own.
        ImageFormat::Tiff => plan.plus(plan.frame_bytes()),
        ImageFormat::Gif => plan.plus(gif_canvas(bytes).map_or(0, |c| c.frame_buffer)),
        // Lossy WebP decodes to YUV planes of whole macroblocks, an animation's first frame into
        // a buffer of its own (at most the canvas, 4 bytes a pixel): the larger of the two.
        ImageFormat::WebP => {
            let padded = u64::from(w.div_ceil(16) * 16) * u64::from(h.div_ceil(16) * 16);
            plan.plus((padded * 3 / 2).max(plan.pixels() * 4))
        }
        _ => plan,
    };
    let decoder: Box<dyn ImageDecoder + 'a> = Box::new(decoder);
    let source =
        if sample <= 2 && !matches!(color, image::ColorType::Rgb32F | image::ColorType::Rgba32F) {
            Source::Frame(decoder)
        } else {
            // The float frame, its RGBA8 copy and the RGB8 result.
            plan = plan.plus_per_pixel(7);
            Source::Dynamic(decoder)
        };
    Ok(Opened {
        source,
        plan,
        orientation,
    })
}

/// The TIFF decoded with the tiff crate directly, where the layout allows (see [`Source`]);
/// `None` leaves it to the image crate.
fn open_tiff<'a>(bytes: &'a [u8], opts: &DecodeOptions) -> Result<Option<Opened<'a>>, EmbedError> {
    use tiff::decoder::{Decoder, Limits};
    use tiff::tags::Tag;
    use tiff::ColorType as T;
    let bad = |e: tiff::TiffError| EmbedError::bad_input(format!("cannot decode TIFF: {e}"));
    let mut limits = Limits::default();
    limits.decoding_buffer_size = usize::try_from(opts.max_alloc).unwrap_or(usize::MAX);
    // Anything the tiff crate cannot even open is left to the image crate's message.
    let Ok(decoder) = Decoder::new(Cursor::new(bytes)) else {
        return Ok(None);
    };
    let mut decoder = decoder.with_limits(limits);
    let (w, h) = decoder.dimensions().map_err(bad)?;
    let orientation = decoder
        .find_tag(Tag::Orientation)
        .ok()
        .flatten()
        .and_then(|v| Orientation::from_exif(v.into_u16().ok()?.min(255) as u8))
        .unwrap_or(Orientation::NoTransforms);
    if decoder.get_tag_u32(Tag::PhotometricInterpretation).ok() == Some(6) {
        check_pixels(w, h, opts)?;
        let plan = DecodePlan::new(w, h, 3, 1).oriented(orientation);
        let source = Source::TiffYcbcr(decoder);
        return Ok(Some(Opened {
            source,
            plan,
            orientation,
        }));
    }
    let chunky = matches!(
        decoder.find_tag_unsigned::<u16>(Tag::PlanarConfiguration),
        Ok(None | Some(1))
    );
    let unsigned = match decoder.find_tag_unsigned_vec::<u16>(Tag::SampleFormat) {
        Ok(None) => true,
        Ok(Some(formats)) => formats.iter().all(|&f| f == 1),
        Err(_) => false,
    };
    let (channels, bits) = match decoder.colortype() {
        Ok(T::Gray(b)) => (1, b),
        Ok(T::GrayA(b)) => (2, b),
        Ok(T::RGB(b)) => (3, b),
        Ok(T::RGBA(b)) => (4, b),
        _ => return Ok(None),
    };
    if !(chunky && unsigned && matches!(bits, 8 | 16)) {
        return Ok(None);
    }
    check_pixels(w, h, opts)?;
    let plan = DecodePlan::new(w, h, channels, bits / 8).oriented(orientation);
    Ok(Some(Opened {
        source: Source::Tiff(decoder),
        plan,
        orientation,
    }))
}

impl Opened<'_> {
    /// Decodes the pixels into one frame, converts it to RGB in place and orients it.
    fn decode(self, bytes: &[u8], format: ImageFormat) -> Result<RgbImage, EmbedError> {
        let name = format!("{format:?}").to_uppercase();
        let bad =
            |e: &dyn std::fmt::Display| EmbedError::bad_input(format!("cannot decode {name}: {e}"));
        let plan = self.plan;
        let frame_len = usize::try_from(plan.frame_bytes()).map_err(|e| bad(&e))?;
        let rgb = match self.source {
            Source::TiffYcbcr(decoder) => decode_tiff_ycbcr(decoder, plan)?,
            Source::Tiff(mut decoder) => {
                let mut frame = vec![0u8; frame_len];
                decoder.read_image_bytes(&mut frame).map_err(|e| bad(&e))?;
                to_rgb_in_place(frame, &plan)?
            }
            Source::Frame(decoder) => {
                let mut frame = vec![0u8; frame_len];
                decoder.read_image_boxed(&mut frame).map_err(|e| bad(&e))?;
                if format == ImageFormat::Gif {
                    fill_outside_first_frame(&mut frame, bytes);
                }
                to_rgb_in_place(frame, &plan)?
            }
            Source::Dynamic(decoder) => {
                to_rgb_on_white(DynamicImage::from_decoder(decoder).map_err(|e| bad(&e))?)?
            }
        };
        let mut img = DynamicImage::ImageRgb8(rgb);
        img.apply_orientation(self.orientation);
        Ok(img.into_rgb8())
    }
}

/// A decoded frame (8 or 16-bit native-endian samples, grey/RGB ± alpha, as `plan` says) →
/// RGB8 on white, in the frame's own memory: only one frame is ever held. 16-bit samples are
/// scaled like the image crate's `into_rgb8` (`(v + 128) / 257`), then alpha is composited
/// onto white as [`to_rgb_on_white`] does, so both paths give the same pixels.
fn to_rgb_in_place(frame: Vec<u8>, plan: &DecodePlan) -> Result<RgbImage, EmbedError> {
    // One loop per layout, so the per-pixel work has no branches on the layout.
    match (plan.channels, plan.bytes_per_sample) {
        (1, 1) => convert_frame::<1, false>(frame, plan),
        (2, 1) => convert_frame::<2, false>(frame, plan),
        (3, 1) => convert_frame::<3, false>(frame, plan),
        (4, 1) => convert_frame::<4, false>(frame, plan),
        (1, 2) => convert_frame::<1, true>(frame, plan),
        (2, 2) => convert_frame::<2, true>(frame, plan),
        (3, 2) => convert_frame::<3, true>(frame, plan),
        (4, 2) => convert_frame::<4, true>(frame, plan),
        _ => Err(buffer_error(plan.width, plan.height)),
    }
}

/// [`to_rgb_in_place`] for `CHANNELS` samples a pixel, 16-bit where `WIDE`.
fn convert_frame<const CHANNELS: usize, const WIDE: bool>(
    mut frame: Vec<u8>,
    plan: &DecodePlan,
) -> Result<RgbImage, EmbedError> {
    let (w, h) = (plan.width, plan.height);
    let pixels = w as usize * h as usize;
    let stride = CHANNELS * if WIDE { 2 } else { 1 };
    if frame.len() != pixels * stride {
        return Err(buffer_error(w, h));
    }
    let sample = |px: &[u8], c: usize| -> u32 {
        if WIDE {
            (u32::from(u16::from_ne_bytes([px[2 * c], px[2 * c + 1]])) + 128) / 257
        } else {
            u32::from(px[c])
        }
    };
    let convert = |px: &[u8]| -> [u8; 3] {
        let rgb = if CHANNELS <= 2 {
            [sample(px, 0); 3]
        } else {
            [sample(px, 0), sample(px, 1), sample(px, 2)]
        };
        if CHANNELS % 2 == 1 {
            return rgb.map(|c| c as u8);
        }
        // round((c·a + 255·(255 − a)) / 255), PIL's alpha_composite onto opaque white.
        let a = sample(px, CHANNELS - 1);
        rgb.map(|c| ((c * a + 255 * (255 - a) + 127) / 255) as u8)
    };
    if stride >= 3 {
        // Pixel i is written at 3i, never past where pixel i + 1 starts (stride · (i + 1)).
        for i in 0..pixels {
            let px = convert(&frame[i * stride..(i + 1) * stride]);
            frame[3 * i..3 * i + 3].copy_from_slice(&px);
        }
        frame.truncate(3 * pixels);
        frame.shrink_to_fit();
    } else {
        // Growing (grey): from the last pixel back, so 3i never overwrites an unread pixel.
        frame.resize(3 * pixels, 0);
        for i in (0..pixels).rev() {
            let px = convert(&frame[i * stride..(i + 1) * stride]);
            frame[3 * i..3 * i + 3].copy_from_slice(&px);
        }
    }
    RgbImage::from_raw(w, h, frame).ok_or_else(|| buffer_error(w, h))
}

/// The TIFF with its first IFD's next-IFD offset set to 0. Only the first image is decoded, but
/// the tiff crate follows the chain when it opens the file and refuses a loop (an IFD pointing
/// back at itself), which PIL reads: it decodes the first image and stops at the loop.
fn tiff_first_image_only(bytes: &[u8]) -> Cow<'_, [u8]> {
    let read = |at: usize, n: usize| bytes.get(at..at.checked_add(n)?);
    let little = match read(0, 4) {
        Some(b"II*\0") => true,
        Some(b"MM\0*") => false,
        _ => return Cow::Borrowed(bytes), // BigTIFF or not TIFF: left to the decoder
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = read(at, 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        } as usize)
    };
    let u16_at = |at: usize| {
        let b: [u8; 2] = read(at, 2)?.try_into().ok()?;
        Some(usize::from(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }))
    };
    let next_at = u32_at(4).and_then(|ifd| Some(ifd + 2 + 12 * u16_at(ifd)?));
    match next_at {
        Some(at) if u32_at(at).is_some_and(|next| next != 0) => {
            let mut out = bytes.to_vec();
            out[at..at + 4].fill(0);
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(bytes),
    }
}

/// A YCbCr TIFF (8-bit, no chroma subsampling, any compression but JPEG) → RGB with the JFIF
/// equations PIL's `convert("RGB")` uses (model.md §2.3: PIL decodes it as mode `YCbCr`),
/// converted in the decoded frame's memory. PIL's fixed-point tables (6 fractional bits, then a
/// floor shift) differ from the floored equations by one level on 3.8 % of all 2²⁴ colours
/// (measured), inside the golden test's tolerance.
fn decode_tiff_ycbcr(
    mut decoder: TiffDecoder<'_>,
    plan: DecodePlan,
) -> Result<RgbImage, EmbedError> {
    use tiff::decoder::DecodingResult;
    let bad = |e: tiff::TiffError| EmbedError::bad_input(format!("cannot decode TIFF: {e}"));
    let (w, h) = (plan.width, plan.height);
    let compression = decoder
        .get_tag_u32(tiff::tags::Tag::Compression)
        .unwrap_or(1);
    if decoder.colortype().map_err(bad)? != tiff::ColorType::YCbCr(8) || compression == 7 {
        return Err(EmbedError::bad_input(
            "cannot decode TIFF: only 8-bit, not JPEG-compressed YCbCr is supported",
        ));
    }
    let DecodingResult::U8(mut samples) = decoder.read_image().map_err(bad)? else {
        return Err(EmbedError::bad_input(
            "cannot decode TIFF: YCbCr samples are not 8-bit",
        ));
    };
    let pixels = w as usize * h as usize;
    if samples.len() < pixels * 3 {
        return Err(EmbedError::bad_input(
            "cannot decode TIFF: the image data is incomplete",
        ));
    }
    samples.truncate(pixels * 3);
    for px in samples.chunks_exact_mut(3) {
        let rgb = ycbcr_to_rgb(px[0], px[1], px[2]);
        px.copy_from_slice(&rgb);
    }
    RgbImage::from_raw(w, h, samples).ok_or_else(|| buffer_error(w, h))
}

/// JFIF YCbCr → RGB: R = Y + 1.402 Cr', G = Y − 0.34414 Cb' − 0.71414 Cr', B = Y + 1.772 Cb'.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
    let clamp = |v: f64| v.floor().clamp(0.0, 255.0) as u8;
    [
        clamp(y + 1.402 * cr),
        clamp(y - 0.34414 * cb - 0.71414 * cr),
        clamp(y + 1.772 * cb),
    ]
}

/// The orientation in a PNG's last `eXIf` chunk, wherever it is. PIL reads the chunks after the
/// image data when it loads the pixels, and the last `eXIf` wins (`im_info["exif"]` is
/// overwritten), so an `eXIf` after IDAT rotates the image as one before it does; the png
/// crate only reads the chunks before IDAT.
fn png_orientation(bytes: &[u8]) -> Option<image::metadata::Orientation> {
    let exif = png_chunks(bytes)
        .filter(|(kind, _)| kind == b"eXIf")
        .last()?
        .1;
    Orientation::from_exif_chunk(exif)
}

/// `(type, data)` of each PNG chunk after the signature, up to the end of the file; a length
/// running past the end ends the walk (bounded: each step advances ≥ 12 bytes).
fn png_chunks(bytes: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos: usize = 8; // after the signature
    std::iter::from_fn(move || {
        let head = bytes.get(pos..pos.checked_add(8)?)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = [head[4], head[5], head[6], head[7]];
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        pos = pos + 12 + len;
        Some((kind, data))
    })
}

/// What a GIF's first frame leaves uncovered of its logical screen: PIL starts frame 0 on a
/// canvas of palette index 0 (`Image.core.new("P", size)`) unless the frame declares a
/// transparent index, while the image crate leaves the uncovered pixels transparent.
#[derive(Debug, PartialEq, Eq)]
struct GifCanvas {
    /// The first frame covers the whole logical screen.
    covered: bool,
    /// The first frame's graphic control extension declares a transparent index.
    transparent: bool,
    /// Colour of index 0 in the first frame's palette (local, else global; black without one).
    index0: [u8; 3],
    /// Bytes of the RGBA buffer the image crate decodes the first frame into before placing it
    /// on the screen: 0 where the frame spans the screen's width and fits below (it is decoded
    /// in place), else the frame's own size, which its descriptor may declare up to 65 535².
    frame_buffer: u64,
}

/// Reads the logical screen, palettes and the first frame's descriptor (bounded walk).
fn gif_canvas(bytes: &[u8]) -> Option<GifCanvas> {
    let u16_at = |p: usize| Some(u16::from_le_bytes([*bytes.get(p)?, *bytes.get(p + 1)?]));
    let table_len = |flags: u8| 3usize << ((flags & 7) + 1);
    let (screen_w, screen_h, flags) = (u16_at(6)?, u16_at(8)?, *bytes.get(10)?);
    let mut pos = 13;
    let mut index0 = [0u8; 3];
    if flags & 0x80 != 0 {
        index0.copy_from_slice(bytes.get(pos..pos + 3)?);
        pos += table_len(flags);
    }
    let mut transparent = false;
    loop {
        match *bytes.get(pos)? {
            0x21 => {
                let label = *bytes.get(pos + 1)?;
                if label == 0xF9 {
                    transparent = bytes.get(pos + 3)? & 1 != 0;
                }
                pos += 2;
                loop {
                    let len = usize::from(*bytes.get(pos)?);
                    pos += 1 + len;
                    if len == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let (x, y, w, h) = (
                    u16_at(pos + 1)?,
                    u16_at(pos + 3)?,
                    u16_at(pos + 5)?,
                    u16_at(pos + 7)?,
                );
                let local = *bytes.get(pos + 9)?;
                if local & 0x80 != 0 {
                    index0.copy_from_slice(bytes.get(pos + 10..pos + 13)?);
                }
                let in_place =
                    x == 0 && w == screen_w && u32::from(y) + u32::from(h) <= u32::from(screen_h);
                return Some(GifCanvas {
                    covered: (x, y, w, h) == (0, 0, screen_w, screen_h),
                    transparent,
                    index0,
                    frame_buffer: if in_place {
                        0
                    } else {
                        4 * u64::from(w) * u64::from(h)
                    },
                });
            }
            _ => return None,
        }
    }
}

/// Paints the pixels a GIF's first frame leaves uncovered the way PIL does (see [`GifCanvas`]),
/// in the decoded RGBA8 frame.
fn fill_outside_first_frame(rgba: &mut [u8], bytes: &[u8]) {
    let Some(canvas) = gif_canvas(bytes) else {
        return;
    };
    if canvas.covered || canvas.transparent {
        return;
    }
    // Without a transparent index every pixel of the frame is opaque: only the uncovered
    // ones have alpha 0.
    let [r, g, b] = canvas.index0;
    for px in rgba.chunks_exact_mut(4).filter(|px| px[3] == 0) {
        px.copy_from_slice(&[r, g, b, 255]);
    }
}

/// The PNG without its iCCP chunks. Sightline ignores colour profiles (so does PIL's `convert`),
/// but the png crate inflates a profile eagerly, up to the allocation limit: a 1 MB file made the
/// decoder allocate 1 GB for a profile nobody reads (issue 6, finding F5). Only chunks before
/// the first IDAT are looked at, which is where the PNG spec puts iCCP.
fn without_iccp(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut iccp = Vec::new();
    let mut pos = 8; // after the signature
    while pos + 12 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
        let end = pos
            .saturating_add(12)
            .saturating_add(len as usize)
            .min(bytes.len());
        match &bytes[pos + 4..pos + 8] {
            b"iCCP" => iccp.push(pos..end),
            b"IDAT" => break,
            _ => {}
        }
        pos = end;
    }
    if iccp.is_empty() {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for chunk in iccp {
        out.extend_from_slice(&bytes[from..chunk.start]);
        from = chunk.end;
    }
    out.extend_from_slice(&bytes[from..]);
    Cow::Owned(out)
}

/// A pixel buffer that does not hold `w × h` RGB pixels: a decoder or resizer broke its contract.
fn buffer_error(w: u32, h: u32) -> EmbedError {
    EmbedError::new(
        super::error::ErrorKind::Internal,
        format!("the {w}×{h} pixel buffer has the wrong size"),
    )
}

/// Any colour type → RGB8; transparent pixels are composited onto white (model.md §2.3).
fn to_rgb_on_white(img: DynamicImage) -> Result<RgbImage, EmbedError> {
    if !img.color().has_alpha() {
        return Ok(img.into_rgb8());
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.pixels() {
        let a = u32::from(px[3]);
        for c in &px.0[..3] {
            // round((c·a + 255·(255 − a)) / 255), PIL's alpha_composite onto opaque white.
            out.push(((u32::from(*c) * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(w, h, out).ok_or_else(|| buffer_error(w, h))
}

/// Output size of the shortest-edge resize: `int(size * long / short)` in f64, like Python.
pub fn resized_dims(w: u32, h: u32, size: u32) -> (u32, u32) {
    let long_side =
        |long: u32, short: u32| (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if w <= h {
        (size, long_side(h, w))
    } else {
        (long_side(w, h), size)
    }
}

/// Resize and crop to the model's `size × size` input as `cfg` says (see [`Preprocess`]): the
/// shorter side to `size` and a centred window, or the whole image squashed to the square. Only
/// the window is computed: resizing through a source crop box gives the same pixels as resizing
/// the whole image and cropping afterwards.
pub fn resize_crop(rgb: &RgbImage, cfg: &Preprocess) -> Result<RgbImage, EmbedError> {
    let size = cfg.size;
    let (w, h) = rgb.dimensions();
    let (nw, nh) = match cfg.resize {
        ResizeRule::ShortestEdge => resized_dims(w, h, size),
        ResizeRule::Squash => (size, size),
    };
    let offset = |extra: u32| match cfg.crop {
        CropRule::Center | CropRule::None => extra / 2,
        CropRule::CenterRound => half_to_even(extra),
    };
    let (left, top) = (offset(nw - size), offset(nh - size));
    let (sx, sy) = (f64::from(w) / f64::from(nw), f64::from(h) / f64::from(nh));
    let src = fr::images::ImageRef::new(w, h, rgb.as_raw(), fr::PixelType::U8x3)
        .map_err(|e| EmbedError::bad_input(format!("image buffer: {e}")))?;
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    // In exact arithmetic (left + size)·sx ≤ w; rounding can overshoot by an ulp, which the
    // resizer rejects, so the box is clamped to the image.
    let (x0, y0) = (f64::from(left) * sx, f64::from(top) * sy);
    let crop_w = (f64::from(size) * sx).min(f64::from(w) - x0);
    let crop_h = (f64::from(size) * sy).min(f64::from(h) - y0);
    let filter = match cfg.interpolation {
        Interpolation::Bicubic => fr::FilterType::CatmullRom,
        Interpolation::Bilinear => fr::FilterType::Bilinear,
    };
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(filter))
        .crop(x0, y0, crop_w, crop_h);
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| EmbedError::bad_input(format!("cannot resize the image: {e}")))?;
    RgbImage::from_raw(size, size, dst.into_vec()).ok_or_else(|| buffer_error(size, size))
}

/// `int(round(extra / 2.0))` in Python: an odd `extra` gives a half, rounded to the even side.
fn half_to_even(extra: u32) -> u32 {
    let half = extra / 2;
    if extra % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// `(p / 255 − mean) / std` per channel, NCHW.
pub fn normalize(crop: &RgbImage, cfg: &Preprocess) -> Vec<f32> {
    let plane = crop.width() as usize * crop.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    // Precomputed per channel: x·scale + bias == (x/255 − mean)/std.
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * cfg.std[c]));
    let bias: [f32; 3] = std::array::from_fn(|c| -cfg.mean[c] / cfg.std[c]);
    for (i, px) in crop.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(px[c]) * scale[c] + bias[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgba};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn long_side_is_truncated_in_f64() {
        assert_eq!(resized_dims(481, 321, 224), (335, 224)); // 335.65 → 335
        assert_eq!(resized_dims(321, 481, 224), (224, 335));
        assert_eq!(resized_dims(1, 1, 224), (224, 224));
        assert_eq!(resized_dims(10_000, 1, 224), (2_240_000, 224));
        // 224·1081/1921 style ratios where f32 would round differently.
        assert_eq!(resized_dims(1921, 1081, 224), (398, 224));
    }

    #[test]
    fn every_aspect_ratio_resizes_to_the_model_size() {
        // Sizes that overshoot the crop box by an ulp without clamping (found with real photos
        // at reduced DCT scale), plus a sweep of odd ratios.
        let mut sizes = vec![
            (720, 450),
            (1, 1),
            (1, 10_000),
            (10_000, 1),
            (667, 1000),
            (321, 481),
        ];
        sizes.extend((1..60).map(|i| (224 + 37 * i, 224 + 13 * i)));
        sizes.extend((1..60).map(|i| (97 * i % 2000 + 1, 61 * i % 1500 + 1)));
        for (w, h) in sizes {
            let rgb = RgbImage::new(w, h);
            for cfg in every_resize_rule() {
                let out = resize_crop(&rgb, &cfg).unwrap_or_else(|e| panic!("{w}×{h}: {e}"));
                assert_eq!(out.dimensions(), (cfg.size, cfg.size), "{w}×{h} {cfg:?}");
            }
        }
    }

    /// The default and each open_clip family's resize rule.
    fn every_resize_rule() -> Vec<Preprocess> {
        let base = Preprocess::default();
        vec![
            base.clone(),
            Preprocess {
                crop: CropRule::CenterRound,
                ..base.clone()
            },
            Preprocess {
                size: 384,
                resize: ResizeRule::Squash,
                crop: CropRule::None,
                interpolation: Interpolation::Bilinear,
                ..base
            },
        ]
    }

    #[test]
    fn centre_offsets_floor_or_round_half_to_even() {
        // Python: int(round(d / 2.0)) for d = 0..8 is 0, 0, 1, 2, 2, 2, 3, 4, 4.
        let rounded: Vec<u32> = (0..9).map(half_to_even).collect();
        assert_eq!(rounded, [0, 0, 1, 2, 2, 2, 3, 4, 4]);
        // 481×321 → 335×224: 111 spare columns, the window starts at 55 floored, 56 rounded.
        // Each crop must be that window of the whole resized image.
        let img = RgbImage::from_fn(481, 321, |x, y| {
            image::Rgb([
                (x * 37 % 251) as u8,
                (y * 11 % 253) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let src = fr::images::ImageRef::new(481, 321, img.as_raw(), fr::PixelType::U8x3).unwrap();
        let mut whole = fr::images::Image::new(335, 224, fr::PixelType::U8x3);
        let bicubic = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
        fr::Resizer::new()
            .resize(&src, &mut whole, &bicubic)
            .unwrap();
        let whole = RgbImage::from_raw(335, 224, whole.into_vec()).unwrap();
        let max_diff = |crop: &RgbImage, left: u32| {
            crop.enumerate_pixels()
                .flat_map(|(x, y, p)| {
                    let q = whole.get_pixel(x + left, y);
                    (0..3).map(move |c| p[c].abs_diff(q[c]))
                })
                .max()
                .unwrap()
        };
        let floor = resize_crop(&img, &Preprocess::default()).unwrap();
        let round = resize_crop(&img, &every_resize_rule()[1]).unwrap();
        assert!(max_diff(&floor, 55) <= 1 && max_diff(&round, 56) <= 1);
        assert!(max_diff(&floor, 56) > 50 && max_diff(&round, 55) > 50);
    }

    #[test]
    fn squash_keeps_the_whole_image() {
        // Left half black, right half white: squashed, the edge stays in the middle; a centre
        // crop of the shortest-edge resize would be all white or all black at the borders too.
        let img = RgbImage::from_fn(1000, 100, |x, _| {
            image::Rgb(if x < 500 { [0; 3] } else { [255; 3] })
        });
        let cfg = &every_resize_rule()[2];
        let out = resize_crop(&img, cfg).unwrap();
        assert_eq!(out.dimensions(), (384, 384));
        assert_eq!(out.get_pixel(0, 200).0, [0; 3]);
        assert_eq!(out.get_pixel(383, 200).0, [255; 3]);
        assert_eq!(out.get_pixel(150, 0).0, [0; 3]);
        assert_eq!(out.get_pixel(233, 383).0, [255; 3]);
    }

    #[test]
    fn output_has_model_shape_and_normalised_range() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(300, 200, |x, y| {
            image::Rgb([x as u8, y as u8, 128])
        }));
        let t = preprocess(
            &encode(&img, ImageFormat::Png),
            &Preprocess::default(),
            &DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(t.len(), 3 * 224 * 224);
        let cfg = Preprocess::default();
        let lo = (0.0 - cfg.mean[0]) / cfg.std[0];
        let hi = (1.0 - cfg.mean[0]) / cfg.std[0];
        assert!(t[..224 * 224]
            .iter()
            .all(|v| (lo - 1e-5..=hi + 1e-5).contains(v)));
        // Blue channel is constant 128 everywhere, so its plane is constant.
        let blue = (128.0 / 255.0 - cfg.mean[2]) / cfg.std[2];
        assert!(t[2 * 224 * 224..].iter().all(|v| (v - blue).abs() < 1e-5));
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = DynamicImage::ImageRgba8(ImageBuffer::from_fn(4, 4, |x, _| {
            if x < 2 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([10, 20, 30, 255])
            }
        }));
        let rgb = decode_rgb(
            &encode(&img, ImageFormat::Png),
            &DecodeOptions::default(),
            224,
        )
        .unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(3, 3).0, [10, 20, 30]);
    }

    /// A 10 × 7 image of `color` with every sample different and alpha across its range.
    fn patterned(color: image::ColorType) -> DynamicImage {
        let rgba = ImageBuffer::<Rgba<u16>, Vec<u16>>::from_fn(10, 7, |x, y| {
            let v = |k: u32| ((x * 7919 + y * 104_729 + k * 31_337) % 65_536) as u16;
            image::Rgba([v(0), v(1), v(2), v(3)])
        });
        let img = DynamicImage::ImageRgba16(rgba);
        match color {
            image::ColorType::L8 => img.to_luma8().into(),
            image::ColorType::La8 => img.to_luma_alpha8().into(),
            image::ColorType::Rgb8 => img.to_rgb8().into(),
            image::ColorType::Rgba8 => img.to_rgba8().into(),
            image::ColorType::L16 => img.to_luma16().into(),
            image::ColorType::La16 => img.to_luma_alpha16().into(),
            image::ColorType::Rgb16 => img.to_rgb16().into(),
            _ => img,
        }
    }

    #[test]
    fn plans_reserve_the_decoded_frame_per_format_and_depth() {
        use image::ColorType as C;
        let opts = DecodeOptions::default();
        let px = 10 * 7;
        // (colour, format, bytes): the frame's w × h × channels × bytes a sample, plus the RGB
        // frame it grows into where it is smaller (grey: 1 or 2 bytes a pixel → 3).
        let cases = [
            (C::Rgba16, ImageFormat::Png, px * 8),
            (C::Rgb16, ImageFormat::Png, px * 6),
            (C::La16, ImageFormat::Png, px * 4),
            (C::L16, ImageFormat::Png, px * 2 + px),
            (C::Rgba8, ImageFormat::Png, px * 4),
            (C::Rgb8, ImageFormat::Png, px * 3),
            (C::La8, ImageFormat::Png, px * 2 + px),
            (C::L8, ImageFormat::Png, px + 2 * px),
            (C::Rgba16, ImageFormat::Tiff, px * 8),
            (C::Rgb16, ImageFormat::Tiff, px * 6),
            (C::L16, ImageFormat::Tiff, px * 2 + px),
            (C::Rgba8, ImageFormat::Tiff, px * 4),
            (C::L8, ImageFormat::Tiff, px + 2 * px),
            (C::Rgb8, ImageFormat::Bmp, px * 3),
        ];
        for (color, format, bytes) in cases {
            let file = encode(&patterned(color), format);
            let plan = super::plan(&file, &opts, 224).unwrap();
            assert_eq!(plan.peak_bytes(), bytes, "{color:?} {format:?}: {plan:?}");
            assert_eq!(
                u64::from(plan.channels) * u64::from(plan.bytes_per_sample),
                u64::from(color.bytes_per_pixel()),
                "{color:?} {format:?}"
            );
        }
    }

    #[test]
    fn in_place_conversion_matches_the_image_crates_pixels() {
        use image::ColorType as C;
        let colors = [
            C::L8,
            C::La8,
            C::Rgb8,
            C::Rgba8,
            C::L16,
            C::La16,
            C::Rgb16,
            C::Rgba16,
        ];
        for color in colors {
            let img = patterned(color);
            let expected = to_rgb_on_white(img.clone()).unwrap();
            let formats: &[ImageFormat] = if matches!(color, C::La8 | C::La16) {
                &[ImageFormat::Png] // the TIFF encoder writes no grey + alpha
            } else {
                &[ImageFormat::Png, ImageFormat::Tiff]
            };
            for &format in formats {
                let rgb =
                    decode_rgb(&encode(&img, format), &DecodeOptions::default(), 224).unwrap();
                assert_eq!(rgb, expected, "{color:?} {format:?}");
            }
        }
    }

    #[test]
    fn a_gif_is_planned_by_its_canvas_and_a_jpeg_at_its_decoded_scale() {
        // A 1 × 1 frame on a declared 10 000 × 10 000 screen: 30-odd bytes that decode to an
        // RGBA canvas of 400 MB, plus the frame's own 4-byte buffer.
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&10_000u16.to_le_bytes());
        gif.extend_from_slice(&10_000u16.to_le_bytes());
        gif.extend_from_slice(&[0, 0, 0]); // no global palette
        gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0x80]); // 1×1, local palette of 2
        gif.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        gif.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3B]);
        let plan = super::plan(&gif, &DecodeOptions::default(), 224).unwrap();
        assert_eq!(
            (plan.width, plan.height, plan.channels),
            (10_000, 10_000, 4)
        );
        assert_eq!(plan.peak_bytes(), 400_000_000 + 4);

        let jpeg = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(2000, 1500)),
            ImageFormat::Jpeg,
        );
        // The prescale keeps the short side ≥ 3 × 224: half scale, 1000 × 750 RGB.
        let plan = super::plan(&jpeg, &DecodeOptions::default(), 224).unwrap();
        assert_eq!(plan.peak_bytes(), 1000 * 750 * 3);
        let exact = DecodeOptions {
            jpeg_prescale: false,
            ..DecodeOptions::default()
        };
        assert_eq!(
            super::plan(&jpeg, &exact, 224).unwrap().peak_bytes(),
            2000 * 1500 * 3
        );
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::new(100, 100));
        let opts = DecodeOptions {
            max_pixels: 9_999,
            ..DecodeOptions::default()
        };
        let e = decode_rgb(&encode(&img, ImageFormat::Png), &opts, 224).unwrap_err();
        assert!(e.message.contains("100×100 = 10000 pixels") && e.message.contains("--max-pixels"));
    }

    #[test]
    fn garbage_and_unsupported_bytes_are_errors() {
        let limits = DecodeOptions::default();
        assert!(decode_rgb(b"", &limits, 224)
            .unwrap_err()
            .message
            .contains("empty"));
        assert!(decode_rgb(b"hello", &limits, 224)
            .unwrap_err()
            .message
            .contains("not an image"));
        let mut truncated = encode(
            &DynamicImage::ImageRgb8(ImageBuffer::new(64, 64)),
            ImageFormat::Jpeg,
        );
        truncated.truncate(truncated.len() / 3);
        assert!(decode_rgb(&truncated, &limits, 224).is_err());
    }
}
