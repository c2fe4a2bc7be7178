#!/usr/bin/env python3
"""Write the test images in tests/fixtures/images/ (and broken files in images/broken/).

Every image is synthetic and deterministic (formulas, or a seeded RNG), so re-running gives byte-identical files.
Each good image is named by the case it covers; `IMAGES` says which are "smooth": built from low-frequency
gradients/blobs with no hard edges or noise, so a Rust resize (image crate CatmullRom) lands within ~1-2 levels
of PIL's BICUBIC and a pixel-level comparison of the 224x224 crop is meaningful. The smooth content still changes
by several levels per output pixel, so a 1-px crop or resize shift is detectable. Hard-edged images are compared
by embedding cosine only.

Usage:  .venv/bin/python tools/make_images.py [--out tests/fixtures/images]
"""
from __future__ import annotations

import argparse
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import png  # pypng: writes true 16-bit PNGs
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "images"
SEED = 7


# ----------------------------------------------------------------------------------------------------------------
# Content
# ----------------------------------------------------------------------------------------------------------------
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of the shorter side, so features keep their size after the resize."""
    s = min(w, h)
    return (np.arange(w, dtype=np.float64)[None, :] + 0.5) / s, (np.arange(h, dtype=np.float64)[:, None] + 0.5) / s


def smooth_planes(w: int, h: int, planes: int = 3, phase: float = 0.0) -> np.ndarray:
    """float64 [h,w,planes] in ~[18, 238]: sinusoids with a period of ~1/3.5 of the shorter side (~64 px after the
    resize, up to ~7 levels per output pixel) plus an off-centre Gaussian blob (makes flips and rotations visible)."""
    u, v = _grid(w, h)
    s = min(w, h)
    blob = np.exp(-(((u - 0.3 * w / s) ** 2 + (v - 0.35 * h / s) ** 2) / (2 * 0.12 ** 2)))
    t = 2 * np.pi
    fields = [
        128 + 70 * np.sin(t * (3.5 * u + 0.3 * v) + phase) + 40 * blob,
        128 + 70 * np.cos(t * (3.0 * v - 0.2 * u) + 2 * phase) - 30 * blob,
        128 + 60 * np.sin(t * 2.5 * (u + v) + 0.5 + phase) + 20 * blob,
        128 + 50 * np.cos(t * 2.0 * (u - v) + phase),
    ]
    return np.stack([np.broadcast_to(f, (h, w)) for f in fields[:planes]], axis=-1)


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def smooth_rgb(w: int, h: int, phase: float = 0.0) -> Image.Image:
    return Image.fromarray(to_u8(smooth_planes(w, h, 3, phase)), "RGB")


def hard_edges(w: int, h: int) -> np.ndarray:
    """uint8 [h,w,3]: checkerboard, diagonal stripes, a disc and a bar: hard edges everywhere."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = np.where((((x // 17) + (y // 13)) % 2 == 0)[..., None], [230, 230, 40], [20, 40, 160])
    img[((x + 2 * y) // 9) % 4 == 0] = (250, 250, 250)
    img[(x - 0.3 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.2 * min(w, h)) ** 2] = (220, 30, 30)
    img[int(0.7 * h):int(0.8 * h), int(0.1 * w):int(0.9 * w)] = (0, 0, 0)
    return img


# ----------------------------------------------------------------------------------------------------------------
# Writers, one per case
# ----------------------------------------------------------------------------------------------------------------
def _save(im: Image.Image, path: Path, **kw) -> None:
    if path.suffix == ".png":
        kw.setdefault("optimize", True)
    im.save(path, **kw)


def w_smooth(w: int, h: int, **kw) -> Callable[[Path], None]:
    return lambda path: _save(smooth_rgb(w, h), path, **kw)


def w_tiny(path: Path) -> None:
    _save(Image.new("RGB", (1, 1), (200, 80, 30)), path)


def w_rgba(path: Path) -> None:
    """Smooth colour with a smooth alpha ramp; fully transparent on the left third, where the stored RGB is noise.
    Dropping alpha instead of compositing on white shows the noise (and is far from the golden vector)."""
    w, h = 256, 192
    u, _ = _grid(w, h)
    rgb = to_u8(smooth_planes(w, h))
    ramp = np.clip((u * h / w - 0.33) / 0.4, 0, 1)  # 0 on the left third, then a linear ramp to opaque
    alpha = to_u8(np.broadcast_to(255 * ramp * ramp * (3 - 2 * ramp), (h, w)))  # smoothstep
    noise = np.random.default_rng(SEED).integers(0, 256, size=rgb.shape, dtype=np.uint8)
    rgb[alpha == 0] = noise[alpha == 0]
    _save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), path)


def w_palette(path: Path) -> None:
    """P mode, 256-entry smooth colour map indexed by a smooth field: neighbouring indices differ by ~1 level."""
    w, h = 200, 150
    i = np.arange(256, dtype=np.float64)
    cmap = to_u8(np.stack([i, 255 - i, 128 + 100 * np.sin(i / 40)], axis=1))
    index = to_u8(smooth_planes(w, h, 1)[..., 0] * 255 / 256)
    im = Image.fromarray(index, "P")
    im.putpalette(cmap.tobytes())
    _save(im, path)


def w_palette_transparent(path: Path) -> None:
    """P mode with tRNS: transparent background (index 0), one half-transparent entry, hard-edged shapes."""
    w, h = 180, 120
    y, x = np.mgrid[0:h, 0:w]
    index = np.zeros((h, w), np.uint8)
    index[(x - 60) ** 2 + (y - 50) ** 2 < 35 ** 2] = 1
    index[20:100, 100:160] = 2
    index[70:110, 30:150] = 3
    im = Image.fromarray(index, "P")
    im.putpalette(bytes([0, 0, 0, 230, 30, 30, 30, 160, 60, 20, 40, 200]))
    _save(im, path, transparency=bytes([0, 255, 128, 255]))


def w_gray(path: Path) -> None:
    _save(Image.fromarray(to_u8(smooth_planes(240, 180, 1)[..., 0]), "L"), path)


def w_png16(planes: int, w: int, h: int) -> Callable[[Path], None]:
    """16-bit PNG (pypng). Grey spans the whole 0..65535 range: PIL's convert("RGB") clamps it to ~all white."""
    def write(path: Path) -> None:
        if planes == 1:
            u, v = _grid(w, h)
            f = np.broadcast_to(0.5 + 0.45 * np.sin(2 * np.pi * (3 * u + v)) + 0.05 * np.cos(7 * v), (h, w))[..., None]
        else:
            f = smooth_planes(w, h, planes, phase=1.0) / 255
        samples = np.clip(np.round(f * 65535), 0, 65535).astype(np.uint16)
        writer = png.Writer(w, h, greyscale=planes == 1, bitdepth=16, compression=9)
        with open(path, "wb") as out:
            writer.write(out, samples.reshape(h, w * planes))
    return write


def w_cmyk(path: Path) -> None:
    c, m, y, k = np.moveaxis(smooth_planes(240, 160, 4, phase=2.0), -1, 0)
    cmyk = np.dstack([c - 18, m - 18, y - 18, (k - 78) * 0.8])  # use the full ink range, keep K moderate
    _save(Image.fromarray(to_u8(cmyk), "CMYK"), path, quality=95)


def w_exif_rot90(path: Path) -> None:
    """Stored 320x200 (landscape), EXIF Orientation 6 (rotate 90 CW to display): upright it is 200x320."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(smooth_rgb(320, 200, phase=0.7), path, quality=92, exif=exif.tobytes())


def w_animated(path: Path) -> None:
    """Two frames with different hard-edged content; only frame 0 is embedded."""
    w, h = 160, 120
    y, x = np.mgrid[0:h, 0:w]
    f0 = np.zeros((h, w), np.uint8)
    f0[(x - 50) ** 2 + (y - 60) ** 2 < 30 ** 2] = 1
    f0[10:40, 90:150] = 2
    f1 = np.full((h, w), 3, np.uint8)
    f1[60:110, 20:140] = 2
    palette = bytes([250, 250, 250, 200, 20, 20, 20, 120, 40, 30, 30, 200])
    frames = []
    for f in (f0, f1):
        im = Image.fromarray(f, "P")
        im.putpalette(palette)
        frames.append(im)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0, optimize=False)


def w_bmp(path: Path) -> None:
    _save(Image.fromarray(hard_edges(200, 150), "RGB"), path)


def w_edges(w: int, h: int) -> Callable[[Path], None]:
    return lambda path: _save(Image.fromarray(hard_edges(w, h), "RGB"), path)


# ----------------------------------------------------------------------------------------------------------------
# Files PIL decodes that a stricter decoder refuses or reads differently (issue 16, section 4)
# ----------------------------------------------------------------------------------------------------------------
def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment up to the first SOS of a well-formed JPEG."""
    out, pos = [], 2
    while pos + 4 <= len(data):
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        out.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def w_jpeg_stray_before_eoi(path: Path) -> None:
    """A stray byte between the entropy-coded data and EOI: libjpeg warns "Corrupt JPEG data: 1 extraneous bytes
    before marker 0xd9" and decodes; so does PIL."""
    data = _jpeg_bytes(smooth_rgb(320, 240, phase=0.3), quality=90)
    path.write_bytes(data[:-2] + b"\x00" + data[-2:])


def w_jpeg_junk_before_sos(path: Path) -> None:
    """Three junk bytes between the last Huffman table and the scan header: libjpeg skips them with a warning."""
    data = _jpeg_bytes(smooth_rgb(300, 260, phase=1.3), quality=90)
    sos = _jpeg_segments(data)[-1][1]
    path.write_bytes(data[:sos] + b"\x00\x12\x34" + data[sos:])


def w_cmyk_no_adobe(path: Path) -> None:
    """A CMYK JPEG without its Adobe APP14 segment: PIL still reads the samples as Adobe-inverted ("CMYK;I")."""
    w_cmyk(path)
    data = path.read_bytes()
    start, end = next((s, e) for m, s, e in _jpeg_segments(data) if m == 0xEE)
    path.write_bytes(data[:start] + data[end:])


def _gif_small_first_frame(path: Path, transparency: int | None) -> None:
    """A 160x120 logical screen whose first (only) frame is 100x70 at (30, 20). PIL composes it onto a canvas of
    palette index 0, or of the transparent index when the frame has one (then white, after compositing)."""
    w, h = 100, 70
    y, x = np.mgrid[0:h, 0:w]
    index = np.full((h, w), 2, np.uint8)
    index[(x - 40) ** 2 + (y - 30) ** 2 < 22 ** 2] = 1
    index[45:65, 55:95] = 3
    im = Image.fromarray(index, "P")
    im.putpalette(bytes([40, 180, 90, 220, 30, 30, 30, 60, 200, 240, 200, 40]))
    buf = io.BytesIO()
    kw = {} if transparency is None else {"transparency": transparency}
    im.save(buf, "GIF", optimize=False, **kw)
    data = bytearray(buf.getvalue())
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extensions, up to the image descriptor
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    struct.pack_into("<HH", data, 6, 160, 120)  # logical screen
    struct.pack_into("<HH", data, pos + 1, 30, 20)  # frame position
    path.write_bytes(bytes(data))


def _exif_orientation(value: int) -> bytes:
    """A little-endian TIFF block with one entry, Orientation = value (the data of a PNG eXIf chunk)."""
    return b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 3, 1, value) + struct.pack("<I", 0)


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def w_png_exif_after_idat(path: Path) -> None:
    """eXIf (orientation 6) after the image data: PIL reads it when it loads the pixels, so the image rotates."""
    data = _png_bytes(smooth_rgb(240, 160, phase=0.9))
    iend = data.rindex(b"IEND") - 4
    path.write_bytes(data[:iend] + png_chunk(b"eXIf", _exif_orientation(6)) + data[iend:])


def w_png_exif_twice(path: Path) -> None:
    """eXIf orientation 3 before the image data and 8 after it: the last one wins in PIL (`im_info` overwritten)."""
    data = _png_bytes(smooth_rgb(200, 150, phase=1.7))
    iend = data.rindex(b"IEND") - 4
    path.write_bytes(data[:33] + png_chunk(b"eXIf", _exif_orientation(3)) + data[33:iend]
                     + png_chunk(b"eXIf", _exif_orientation(8)) + data[iend:])


def _tiff(width: int, height: int, entries: list[tuple[int, int, list[int]]], strips: list[bytes]) -> bytes:
    """A little-endian baseline TIFF: `entries` are (tag, type, values) with StripOffsets (273) filled in here."""
    sizes = {3: 2, 4: 4}
    blobs = b""
    data_start = 8
    strip_offsets, pos = [], data_start
    for strip in strips:
        strip_offsets.append(pos)
        pos += len(strip)
    entries = sorted(entries + [(273, 4, strip_offsets)])
    ifd_start = pos + (pos & 1)
    ifd_len = 2 + 12 * len(entries) + 4
    extra_start = ifd_start + ifd_len
    ifd = struct.pack("<H", len(entries))
    for tag, typ, values in entries:
        packed = b"".join(struct.pack("<H" if typ == 3 else "<I", v) for v in values)
        if len(packed) <= 4:
            ifd += struct.pack("<HHI", tag, typ, len(values)) + packed.ljust(4, b"\x00")
        else:
            ifd += struct.pack("<HHII", tag, typ, len(values), extra_start + len(blobs))
            blobs += packed
    ifd += struct.pack("<I", 0)
    body = b"".join(strips)
    return (b"II*\x00" + struct.pack("<I", ifd_start) + body + b"\x00" * (ifd_start - pos) + ifd + blobs)


def w_tiff_planar(path: Path) -> None:
    """PlanarConfiguration 2: the R, G and B planes stored one after another, one strip each."""
    w, h = 140, 100
    rgb = to_u8(smooth_planes(w, h, 3, phase=0.4))
    planes = [np.ascontiguousarray(rgb[..., c]).tobytes() for c in range(3)]
    entries = [(256, 3, [w]), (257, 3, [h]), (258, 3, [8, 8, 8]), (259, 3, [1]), (262, 3, [2]), (277, 3, [3]),
               (278, 3, [h]), (279, 4, [w * h] * 3), (284, 3, [2])]
    path.write_bytes(_tiff(w, h, entries, planes))


def w_tiff_self_ifd(path: Path) -> None:
    """An RGB TIFF whose next-IFD offset points back at IFD0 (a loop): PIL reads the first image and stops."""
    w, h = 120, 90
    rgb = to_u8(smooth_planes(w, h, 3, phase=2.4))
    entries = [(256, 3, [w]), (257, 3, [h]), (258, 3, [8, 8, 8]), (259, 3, [1]), (262, 3, [2]), (277, 3, [3]),
               (278, 3, [h]), (279, 4, [w * h * 3])]
    data = bytearray(_tiff(w, h, entries, [rgb.tobytes()]))
    ifd0 = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd0:ifd0 + 2])[0]
    struct.pack_into("<I", data, ifd0 + 2 + 12 * count, ifd0)
    path.write_bytes(bytes(data))


def w_tiff_ycbcr(path: Path) -> None:
    """Photometric YCbCr (6), no subsampling, uncompressed, as PIL writes a YCbCr image: PIL converts with its
    JFIF YCbCr -> RGB formula."""
    smooth_rgb(160, 120, phase=0.2).convert("YCbCr").save(path, "TIFF")


@dataclass(frozen=True)
class Case:
    file: str
    smooth: bool  # no hard edges or noise: pixel-level comparison after the resize is meaningful
    write: Callable[[Path], None]

    @property
    def lossless(self) -> bool:
        """Decoded pixels are exact in every decoder (JPEG IDCT/upsampling differ between libraries)."""
        return not self.file.endswith(".jpg")


IMAGES = [
    Case("landscape.jpg", True, w_smooth(640, 427, quality=90)),  # 4:2:0 JPEG; long side 335 -> odd crop offset
    Case("portrait.png", True, w_smooth(300, 500)),
    Case("wide-1000x120.png", True, w_smooth(1000, 120)),
    Case("tall-90x700.png", True, w_smooth(90, 700)),
    Case("tiny-1x1.png", True, w_tiny),
    Case("large-2400x1600.jpg", True, w_smooth(2400, 1600, quality=80)),
    Case("small-100x50.png", True, w_smooth(100, 50)),
    Case("rgba.png", True, w_rgba),
    Case("palette.png", True, w_palette),
    Case("palette-transparent.png", False, w_palette_transparent),
    Case("gray.png", True, w_gray),
    Case("gray16.png", True, w_png16(1, 256, 160)),
    Case("rgb16.png", True, w_png16(3, 160, 112)),
    Case("cmyk.jpg", True, w_cmyk),
    Case("exif-rot90.jpg", True, w_exif_rot90),
    Case("animated.gif", False, w_animated),
    Case("image.webp", True, w_smooth(220, 300, lossless=True)),
    Case("image.bmp", False, w_bmp),
    Case("image.tiff", True, w_smooth(120, 160)),  # uncompressed RGB TIFF
    Case("edges-481x321.png", False, w_edges(481, 321)),  # hard edges + odd crop offset (long side 335)
    # issue 16, section 4: PIL decodes these; each must embed to the reference's vector
    Case("jpeg-stray-before-eoi.jpg", True, w_jpeg_stray_before_eoi),
    Case("jpeg-junk-before-sos.jpg", True, w_jpeg_junk_before_sos),
    Case("cmyk-no-adobe.jpg", True, w_cmyk_no_adobe),
    Case("gif-small-first-frame.gif", False, lambda p: _gif_small_first_frame(p, None)),
    Case("gif-small-first-frame-transparent.gif", False, lambda p: _gif_small_first_frame(p, 2)),
    Case("png-exif-after-idat.png", True, w_png_exif_after_idat),
    Case("png-exif-twice.png", True, w_png_exif_twice),
    Case("tiff-planar.tiff", True, w_tiff_planar),
    Case("tiff-self-ifd.tiff", True, w_tiff_self_ifd),
    Case("tiff-ycbcr.tiff", True, w_tiff_ycbcr),
]


# ----------------------------------------------------------------------------------------------------------------
# Broken files: every one must be rejected with a client error, none may crash or exhaust memory
# ----------------------------------------------------------------------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_ihdr(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))


def write_broken(out: Path, valid_jpeg: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    data = valid_jpeg.read_bytes()
    files = {
        "truncated.jpg": data[:len(data) // 2],
        "zero-bytes.png": b"",
        "wrong-magic.png": b"this is not a PNG file, just some text\n",
        # valid signature and IHDR (64x64 RGB), then an IDAT whose (correctly CRC'd) body is not a zlib stream
        "corrupt.png": PNG_SIGNATURE + png_ihdr(64, 64)
        + png_chunk(b"IDAT", np.random.default_rng(SEED).integers(0, 256, 512, dtype=np.uint8).tobytes())
        + png_chunk(b"IEND", b""),
        # decompression bomb: declares 50000x50000 RGB (7.5 GB decoded); the IDAT holds only 16 rows of zeros, so the
        # file stays tiny. A decoder must refuse it from the header, before allocating.
        "bomb.png": PNG_SIGNATURE + png_ihdr(50000, 50000)
        + png_chunk(b"IDAT", zlib.compress(bytes(16 * (1 + 3 * 50000)), 9))
        + png_chunk(b"IEND", b""),
    }
    for name, content in files.items():
        (out / name).write_bytes(content)
    return sorted(files)


BROKEN_DIR = "broken"


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for case in IMAGES:
        case.write(out / case.file)
    write_broken(out / BROKEN_DIR, out / "landscape.jpg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="images folder (default: tests/fixtures/images)")
    args = ap.parse_args()
    write_all(args.out)
    files = sorted(p for p in args.out.rglob("*") if p.is_file())
    for p in files:
        print(f"{p.relative_to(args.out)}: {p.stat().st_size:,} bytes")
    print(f"total: {sum(p.stat().st_size for p in files):,} bytes")


if __name__ == "__main__":
    main()
