#!/usr/bin/env python3
"""Independent Python reference for Sightline's embeddings (PIL + numpy + onnxruntime + tokenizers).

Reads a bundle's `sightline.json` and embeds images and texts the way model.md §2.1 / §1.1 specify, with these
decisions for the edge cases of model.md §2.3 (the Rust service must make the same ones):

  * decode the first frame only (animated GIF/PNG/WebP);
  * alpha (RGBA, LA, PA, P/L/RGB with a `transparency` entry) is composited onto WHITE in 8-bit integers:
        out = (c*a + 255*(255-a) + 127) // 255        (exact round-half-up of c*a/255 + 255*(1-a/255))
  * grayscale / palette / other 8-bit modes -> RGB with PIL's `convert("RGB")` (grey is replicated);
  * CMYK JPEG -> RGB with PIL's `convert("RGB")`: the naive formula c' = (255-C)*(255-K)/255 per channel, no ICC
    (PIL reads Adobe-inverted CMYK JPEGs back to plain CMYK first);
  * 16-bit samples are scaled to 8 bits with rounding, (v + 128) // 257 == round(v / 257) — NOT PIL's behaviour
    (PIL clamps 16-bit grey to 255 and keeps only the high byte of 16-bit RGB). 16-bit PNGs are therefore read with
    the pure-Python `png` package (true 16-bit samples); other 16-bit grey images (PIL modes I;16*) with numpy.
    With alpha, the 16-bit samples are scaled first, then composited in 8 bits as above;
  * the EXIF orientation (tag 0x0112) is applied after the conversion to RGB;
  * resize: shorter side -> size, longer side = int(size * long / short) in float64, PIL BICUBIC on the uint8 RGB
    image; center crop top = (h - size) // 2, left = (w - size) // 2; then x/255, (x - mean)/std, NCHW float32;
  * text: str.strip(), tokenize with [CLS]/[SEP], truncate to max_seq_len tokens (flagged `truncated`), pad each
    batch to its longest row with id 0, feed only input_ids + attention_mask (int64);
    pooling "mean": sum(h*m)/max(sum(m), 1e-9), then x @ W.T with `linear.weight` from the dense safetensors file;
  * every vector is L2-normalised (in float64, returned as float32).

CLI (one JSON line per input, the format `sightline embed` prints):
    .venv/bin/python tools/reference.py --model-dir tests/fixtures/tiny-clip --image a.jpg b.png
    .venv/bin/python tools/reference.py --model-dir tests/fixtures/tiny-clip --text "a dog" "eine Katze"
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import png  # pypng: true 16-bit PNG samples
from PIL import Image
from safetensors.numpy import load_file
from tokenizers import Tokenizer

EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# ----------------------------------------------------------------------------------------------------------------
# Bundle
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Bundle:
    dir: Path
    manifest: dict
    image_session: ort.InferenceSession
    text_session: ort.InferenceSession
    tokenizer: Tokenizer
    dense: np.ndarray | None  # [dimensions, hidden] (nn.Linear layout), form b only

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["max_seq_len"])


def load_bundle(model_dir: str | Path) -> Bundle:
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "sightline.json").read_text(encoding="utf-8"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic reductions: golden files must not depend on the core count

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(model_dir / name), options, providers=["CPUExecutionProvider"])

    text = manifest["text"]
    dense = None
    if text["pooling"] == "mean":
        dense = load_file(str(model_dir / text["dense"]))["linear.weight"]
    elif text["pooling"] != "none":
        raise ValueError(f"unknown text pooling {text['pooling']!r}")
    return Bundle(model_dir, manifest, session(manifest["image"]["onnx"]), session(text["onnx"]),
                  Tokenizer.from_file(str(model_dir / manifest["tokenizer"])), dense)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------
def _to_u8(samples: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit with rounding: (v + 128) // 257 == round(v / 257) (no exact halves exist)."""
    return ((samples.astype(np.uint32) + 128) // 257).astype(np.uint8)


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] + uint8 [H,W] -> uint8 [H,W,3]: c*a/255 + 255*(1 - a/255), rounded half up, integers only."""
    c = rgb.astype(np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _planes_to_rgb(planes: np.ndarray) -> np.ndarray:
    """uint8 [H,W,1|2|3|4] (G, GA, RGB, RGBA) -> uint8 [H,W,3]."""
    n = planes.shape[2]
    colour = planes[..., :1].repeat(3, axis=2) if n <= 2 else planes[..., :3]
    return composite_on_white(colour, planes[..., -1]) if n in (2, 4) else np.ascontiguousarray(colour)


def _png_bit_depth(path: Path) -> int | None:
    head = path.read_bytes()[:26]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _read_png16(path: Path) -> np.ndarray:
    """16-bit PNG -> uint8 RGB, from the true 16-bit samples (tRNS becomes an alpha plane)."""
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    samples = np.array([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
    return _planes_to_rgb(_to_u8(samples))


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in SIXTEEN_BIT_GREY_MODES:
        return _planes_to_rgb(_to_u8(np.asarray(im))[..., None])
    if im.mode in ("I", "F", "I;32", "I;32B"):
        raise ValueError(f"unsupported image mode {im.mode}")
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        return _planes_to_rgb(np.asarray(im.convert("RGBA")))
    # L, 1, P, CMYK, YCbCr, ...: PIL's own conversion (CMYK: naive, no ICC)
    return np.asarray(im.convert("RGB"))


# EXIF orientation -> numpy operation on [H,W,C] (same result as PIL.ImageOps.exif_transpose)
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirror horizontally
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # mirror vertically
    5: lambda a: a.transpose(1, 0, 2),  # transpose (mirror over the main diagonal)
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse (mirror over the anti-diagonal)
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}


def decode_image(path: str | Path) -> np.ndarray:
    """File -> upright uint8 RGB [H,W,3] (first frame, alpha on white, 16-bit rounded, EXIF orientation applied)."""
    path = Path(path)
    with Image.open(path) as im:  # Image.open positions on frame 0
        im.load()
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        if im.format == "PNG" and _png_bit_depth(path) == 16:
            rgb = _read_png16(path)
        else:
            rgb = _pil_to_rgb(im)
    return np.ascontiguousarray(_ORIENT.get(orientation, _ORIENT[1])(rgb))


def resize_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [size,size,3]: shortest edge to `size` (PIL BICUBIC), then floor-centred crop."""
    h, w = rgb.shape[:2]
    # the long side is truncated with int() in float64, like transformers' get_resize_output_image_size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = np.asarray(Image.fromarray(rgb, "RGB").resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def normalise_pixels(crop: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [size,size,3] -> float32 [3,size,size]: x/255, then (x - mean)/std (float32, as transformers)."""
    x = crop.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1).copy()


def preprocess(bundle: Bundle, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (upright decoded RGB uint8 [H,W,3], crop uint8 [size,size,3] before /255 and mean/std)."""
    pre = bundle.manifest["preprocess"]
    rgb = decode_image(path)
    return rgb, resize_crop(rgb, int(pre["size"]))


def embed_crops(bundle: Bundle, crops: list[np.ndarray]) -> np.ndarray:
    pre = bundle.manifest["preprocess"]
    image = bundle.manifest["image"]
    batch = np.stack([normalise_pixels(c, pre["mean"], pre["std"]) for c in crops])
    out = bundle.image_session.run([image["output"]], {image["input"]: batch})[0]
    return l2_normalise(out)


def embed_images(bundle: Bundle, paths: list[str | Path]) -> np.ndarray:
    return embed_crops(bundle, [preprocess(bundle, p)[1] for p in paths])


# ----------------------------------------------------------------------------------------------------------------
# Texts
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Tokens:
    ids: list[int]  # after truncation, including [CLS] and [SEP]
    tokens: list[str]
    truncated: bool


def tokenize(bundle: Bundle, text: str) -> Tokens:
    stripped = text.strip()  # sentence-transformers strips every text before tokenising
    if not stripped:
        raise ValueError("empty text after trimming whitespace")
    full = bundle.tokenizer.encode(stripped)
    limit = bundle.max_seq_len
    if len(full.ids) <= limit:
        return Tokens(full.ids, full.tokens, False)
    # Let the tokenizers library truncate (it keeps [CLS] ... [SEP], like sentence-transformers' tokenizer call).
    tok = Tokenizer.from_str(bundle.tokenizer.to_str())  # a copy: the bundle's tokenizer stays unconfigured
    tok.enable_truncation(max_length=limit)
    cut = tok.encode(stripped)
    assert cut.ids == full.ids[:limit - 1] + full.ids[-1:], "unexpected truncation result"
    return Tokens(cut.ids, cut.tokens, True)


def embed_token_batch(bundle: Bundle, batch: list[Tokens]) -> np.ndarray:
    """One padded batch through the text encoder -> L2-normalised float32 [N, dimensions]."""
    text = bundle.manifest["text"]
    length = max(len(t.ids) for t in batch)
    ids = np.zeros((len(batch), length), np.int64)  # [PAD] = 0
    mask = np.zeros((len(batch), length), np.int64)
    for row, t in enumerate(batch):
        ids[row, :len(t.ids)] = t.ids
        mask[row, :len(t.ids)] = 1
    out = bundle.text_session.run([text["output"]], {text["input_ids"]: ids, text["attention_mask"]: mask})[0]
    if bundle.dense is not None:
        m = mask[..., None].astype(np.float32)
        pooled = (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
        out = pooled @ bundle.dense.T
    return l2_normalise(out)


def embed_texts(bundle: Bundle, texts: list[str]) -> tuple[np.ndarray, list[Tokens]]:
    tokens = [tokenize(bundle, t) for t in texts]
    return embed_token_batch(bundle, tokens), tokens


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------
def floats(vector) -> list[float]:
    """float32 values as the shortest decimals that round-trip through float32 (the digits Rust prints for f32)."""
    return [float(str(np.float32(v))) for v in vector]


def result_line(input_: str, modality: str, embedding, truncated: bool = False) -> str:
    obj = {"input": input_, "modality": modality, "embedding": floats(embedding)}
    if truncated:
        obj["truncated"] = True
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))  # compact, like serde_json::to_string


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="bundle directory holding sightline.json")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", nargs="+", metavar="FILE", help="image files to embed (one batch)")
    what.add_argument("--text", nargs="+", metavar="TEXT", help="texts to embed (one batch)")
    args = ap.parse_args(argv)

    bundle = load_bundle(args.model_dir)
    try:
        if args.image:
            lines = [result_line(p, "image", v) for p, v in zip(args.image, embed_images(bundle, args.image))]
        else:
            vectors, tokens = embed_texts(bundle, args.text)
            lines = [result_line(t, "text", v, tk.truncated) for t, v, tk in zip(args.text, vectors, tokens)]
    except Exception as e:  # noqa: BLE001 - CLI: one readable line, non-zero exit
        print(f"reference.py: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
