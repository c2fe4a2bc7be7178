#!/usr/bin/env python3
"""Write the hostile test inputs in tests/fixtures/hostile/ (issue 6, Scope 1).

Every file is small (the largest is a few KB) and deterministic: re-running gives byte-identical files. Each is
named by the case it covers; `tests/contract/hostile.rs` says what answer each must get. Decompression bombs
declare 50 000 x 50 000 pixels in a header and carry almost no data, so a decoder must refuse them from the header,
before it allocates. The "odd but valid" images (1 x 10 000, absurd EXIF) must be embedded, not refused.

Usage:  .venv/bin/python tools/make_hostile.py [--out tests/fixtures/hostile]
"""
from __future__ import annotations

import argparse
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "hostile"
SEED = 11
BOMB = 50_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def base_image(w: int = 64, h: int = 48) -> Image.Image:
    """Smooth gradients: compresses well, and any decoding error shows."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.dstack([40 + 3 * x, 200 - 3 * y, 120 + 60 * np.sin((x + y) / 9)])
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), "RGB")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def flip_bytes(data: bytes, start: int, end: int, seed: int = SEED) -> bytes:
    """XORs every byte in [start, end) with a nonzero random byte: the structure before stays valid."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in range(start, min(end, len(out))):
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


# ----------------------------------------------------------------------------------------------------------------
# JPEG helpers
# ----------------------------------------------------------------------------------------------------------------
def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment up to the first SOS; `end` is exclusive."""
    out = []
    pos = 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        out.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every scan: the SOS segment and its entropy-coded data, up to the next real marker."""
    scans = []
    pos = 2
    while pos < len(data):
        assert data[pos] == 0xFF, pos
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        end = pos + 2 + length
        if marker == 0xDA:
            # Entropy data: FF 00 is a stuffed byte, FF D0..D7 a restart marker; anything else ends the scan.
            i = end
            while not (data[i] == 0xFF and data[i + 1] not in (0x00, *range(0xD0, 0xD8))):
                i += 1
            scans.append((pos, i))
            end = i
        pos = end
    return scans


def jpeg_with_dimensions(data: bytes, w: int, h: int) -> bytes:
    """Patches the frame header (SOF0/SOF2) to declare w x h."""
    out = bytearray(data)
    for marker, start, _ in jpeg_segments(data):
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", out, start + 5, h, w)
            return bytes(out)
    raise ValueError("no SOF segment")


def app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def absurd_exif() -> bytes:
    """A TIFF block that lies everywhere: IFD0 claims 65 535 entries (the segment holds 4), the Orientation entry says
    999 with a count of 2^32-1, the next-IFD offset points at IFD0 itself (a loop), and an ExifIFD pointer points far
    past the end. Readers must ignore it (or reject only the EXIF), never loop, allocate, or lose the image."""
    entries = [
        (0x0112, 3, 0xFFFF_FFFF, 999),           # Orientation: SHORT, absurd count and value
        (0x8769, 4, 1, 0x7FFF_FFF0),             # ExifIFD pointer far out of bounds
        (0x010F, 2, 0x0100_0000, 0x7FFF_0000),   # Make: 16 MiB ASCII string at an out-of-bounds offset
        (0x0112, 3, 1, 1),                       # a second, sane Orientation
    ]
    ifd = struct.pack("<H", 0xFFFF)
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHII", tag, typ, count, value)
    ifd += struct.pack("<I", 8)  # next IFD = IFD0: a cycle
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    return b"Exif\x00\x00" + tiff


# ----------------------------------------------------------------------------------------------------------------
# GIF / WebP helpers
# ----------------------------------------------------------------------------------------------------------------
def gif_bomb(w: int, h: int) -> bytes:
    """GIF89a whose logical screen and single frame both declare w x h (u16 each), with a 2-colour palette and an
    LZW stream of just CLEAR, one pixel, END: 40 bytes that expand to 2.5 G pixels."""
    header = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
    # min code size 2: CLEAR=4, END=5; codes are 3 bits: 4, 0, 5 packed LSB-first.
    bits = 4 | (0 << 3) | (5 << 6)
    lzw = b"\x02" + bytes([2]) + struct.pack("<H", bits) + b"\x00"
    return header + frame + lzw + b"\x3b"


def riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_chunk(kind: bytes, data: bytes) -> bytes:
    pad = b"\x00" if len(data) % 2 else b""
    return kind + struct.pack("<I", len(data)) + data + pad


def webp_vp8x_bomb(w: int, h: int, inner: bytes) -> bytes:
    """Extended WebP (VP8X) whose canvas declares w x h (24-bit fields, up to 16 M each), wrapping a tiny image."""
    vp8x = struct.pack("<I", 0) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = inner[12:]  # the inner file's chunks, without its RIFF header
    return riff(webp_chunk(b"VP8X", vp8x) + body)


def webp_vp8l_bomb(w: int, h: int) -> bytes:
    """Simple lossless WebP (VP8L) declaring w x h (14-bit fields, at most 16 384), with no image data after it."""
    bits = (w - 1) | ((h - 1) << 14) | (0 << 28) | (0 << 29)
    data = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8
    return riff(webp_chunk(b"VP8L", data))


# ----------------------------------------------------------------------------------------------------------------
def build() -> dict[str, bytes]:
    im = base_image()
    jpeg = encode(im, "JPEG", quality=90)
    png = encode(im, "PNG", optimize=True)
    webp = encode(im, "WEBP", lossless=True)
    webp_lossy = encode(im, "WEBP", quality=80)
    gif = encode(im.quantize(64, dither=Image.Dither.NONE), "GIF")

    files: dict[str, bytes] = {}
    # Valid baselines, so every broken file's parent is known to decode.
    files["base.jpg"] = jpeg
    files["base.png"] = png
    files["base.webp"] = webp
    files["base.gif"] = gif

    # Decompression bombs: a header declaring 50 000 x 50 000, almost no data.
    files["bomb.gif"] = gif_bomb(BOMB, BOMB)
    files["bomb.webp"] = webp_vp8x_bomb(BOMB, BOMB, webp)
    # 16 383 x 16 383: the VP8L maximum that image-webp 0.2.4 reads right (it computes 16 384 as 0).
    files["bomb-vp8l.webp"] = webp_vp8l_bomb(16_383, 16_383)
    files["bomb.jpg"] = jpeg_with_dimensions(jpeg, BOMB, BOMB)

    # Truncated: the first half of each valid file.
    for ext, data in [("jpg", jpeg), ("png", png), ("webp", webp), ("gif", gif)]:
        files[f"truncated.{ext}"] = data[: len(data) // 2]
    files["truncated-lossy.webp"] = webp_lossy[: len(webp_lossy) // 2]

    # Corrupt: structure intact up to the pixel data, which is scrambled.
    seg = jpeg_segments(jpeg)
    dht = next((s, e) for m, s, e in seg if m == 0xC4)
    files["corrupt-header.jpg"] = flip_bytes(jpeg, dht[0] + 5, dht[1])  # Huffman table garbage
    sos_end = seg[-1][2]
    files["corrupt-data.jpg"] = flip_bytes(jpeg, sos_end, len(jpeg) - 2)  # entropy data garbage, EOI kept
    idat = png.index(b"IDAT")
    files["corrupt.png"] = flip_bytes(png, idat + 4, idat + 60)  # deflate garbage (CRC no longer matches)
    files["corrupt.webp"] = flip_bytes(webp, 21, len(webp))  # VP8L bitstream garbage after its header
    files["corrupt.gif"] = flip_bytes(gif, len(gif) - 200, len(gif) - 1)  # LZW garbage, trailer kept

    # Zero bytes, wrong magic.
    files["zeros.bin"] = bytes(1024)
    files["wrong-magic.png"] = b"\x89PNG\r\n\x1a\x0b" + png[8:]  # last signature byte wrong
    files["jpeg-bytes.png"] = jpeg  # a JPEG sent as image/png: sniffed by content, must succeed

    # Odd but valid sizes: must be embedded.
    ramp = (np.arange(10_000) % 251).astype(np.uint8)
    files["1x10000.png"] = encode(Image.fromarray(ramp.reshape(10_000, 1), "L"), "PNG", optimize=True)
    files["10000x1.png"] = encode(Image.fromarray(ramp.reshape(1, 10_000), "L"), "PNG", optimize=True)
    files["1x10000.jpg"] = encode(base_image(8, 8).resize((1, 10_000)), "JPEG", quality=90)

    # Unsupported formats: recognised and named.
    files["image.svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    files["image.heic"] = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + bytes(64)
    files["image.avif"] = struct.pack(">I", 28) + b"ftypavif" + b"\x00\x00\x00\x00" + b"avifmif1miaf" + bytes(64)

    # Progressive JPEG with far more scans than the decoder's limit: the last scan repeated 600 times.
    prog = encode(base_image(16, 16), "JPEG", quality=90, progressive=True)
    scans = jpeg_scans(prog)
    last = prog[scans[-1][0]:scans[-1][1]]
    files["progressive-600-scans.jpg"] = prog[:scans[-1][1]] + last * 600 + b"\xff\xd9"
    files["progressive.jpg"] = prog  # the same file with its normal scans: must succeed

    # Segments whose length field (which counts its own 2 bytes) says 0 or 1: the segment walk once
    # sliced backwards on these and panicked (issue 10). Must be refused with a 400 naming JPEG.
    for marker, segment in [(0xE1, "app1"), (0xEE, "app14")]:
        for length in (0, 1):
            short = b"\xff" + bytes([marker]) + struct.pack(">H", length)
            files[f"short-{segment}-len{length}.jpg"] = jpeg[:2] + short + jpeg[2:]

    # Absurd EXIF: good pixels, lying metadata. Must be embedded as if there were no EXIF.
    files["exif-absurd.jpg"] = jpeg[:2] + app1(absurd_exif()) + jpeg[2:]
    iend = png.rindex(b"IEND") - 4
    files["exif-absurd.png"] = png[:iend] + png_chunk(b"eXIf", absurd_exif()[6:]) + png[iend:]
    # A 16 MiB colour profile (zeros) deflated into a 16 KiB iCCP chunk: Sightline ignores profiles,
    # so the pixels must embed exactly like base.png (the decoder inflates it: see F5 in the report).
    iccp = png_chunk(b"iCCP", b"bomb\x00\x00" + zlib.compress(bytes(16 << 20), 9))
    files["iccp-16mib.png"] = png[:33] + iccp + png[33:]
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder (default: tests/fixtures/hostile)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = build()
    for name, data in sorted(files.items()):
        (args.out / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes")
    print(f"total: {sum(map(len, files.values())):,} bytes in {len(files)} files")


if __name__ == "__main__":
    main()
