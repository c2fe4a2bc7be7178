#!/usr/bin/env python3
"""Independent Python reference for open_clip model families, read from an export directory in Immich's layout
(`config.json`, `visual/preprocess_cfg.json`, `textual/tokenizer.json`, `textual/tokenizer_config.json`, the two
`model.onnx`). It never reads `sightline.json`: the settings come from the family's own files, so a golden test
built on it checks that Sightline's manifest describes the family.

Image path (open_clip `transform.py`, `image_transform(..., is_train=False)`; torchvision on PIL images):
  * resize_mode "shortest": `Resize(size, interpolation)` — torchvision `_compute_resized_output_size`: the shorter
    side becomes `size`, the longer `int(size * long / short)`; PIL `resize` with the named filter (antialiased) —
    then `CenterCrop(size)`: torchvision `center_crop`, `top = int(round((h - size) / 2.0))`,
    `left = int(round((w - size) / 2.0))` (Python's round: halves go to the even integer);
  * resize_mode "squash": `Resize((size, size), interpolation)`, no crop;
  * interpolation "bicubic" -> PIL BICUBIC, "bilinear" -> PIL BILINEAR (open_clip maps anything else to bicubic);
  * `ToTensor()` (x / 255, float32, CHW) and `Normalize(mean, std)`.
  Decoding to RGB uses `reference.decode_image` (Sightline's decisions, model.md §2.3). open_clip converts to RGB
  after the resize; for RGB images, the only ones the family goldens use, the order makes no difference.

Text path (open_clip `tokenizer.py` `HFTokenizer.__call__`, Immich `textual.py` `OpenClipTextualEncoder`):
  * clean: `whitespace_clean(basic_clean(text))` — every run of white space one space, stripped. NOT reproduced:
    `basic_clean`'s `ftfy.fix_text` and double `html.unescape` (Sightline does neither, see README); the golden
    texts hold no mojibake or HTML entities, where they would differ. White space here is Unicode's White_Space
    property, the definition of the `regex` module's `\\s` that open_clip uses;
  * tokenizer(text, max_length=context_length, padding="max_length", truncation=True): the `tokenizers` library
    with truncation to the context length and fixed-length padding with the id of `tokenizer_config.json`'s
    `pad_token` (exactly Immich's `enable_padding(length=..., pad_id=...)` / `enable_truncation(max_length=...)`);
  * context length: `config.json` `text_cfg.context_length`, default 77 (open_clip `CLIPTextCfg`);
  * the graph takes the padded ids alone, as int32 [1, C] (Immich's exporter), and derives the attention mask.

Both graphs have a batch of 1 and return L2-normalised vectors (`encode_*(normalize=True)`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

import reference

# Unicode White_Space (PropList.txt), the characters `regex`'s \s matches in Unicode mode.
WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                  "\u200a\u2028\u2029\u202f\u205f\u3000")
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass
class Export:
    dir: Path
    preprocess: dict
    context_length: int
    pad_id: int
    tokenizer: Tokenizer
    visual: ort.InferenceSession
    textual: ort.InferenceSession


def load_export(path: str | Path) -> Export:
    path = Path(path)
    read = lambda name: json.loads((path / name).read_text(encoding="utf-8"))  # noqa: E731
    config = read("config.json")
    preprocess = read("visual/preprocess_cfg.json")
    pad_token = read("textual/tokenizer_config.json")["pad_token"]
    context = int(config["text_cfg"].get("context_length", 77))
    tokenizer = Tokenizer.from_file(str(path / "textual/tokenizer.json"))
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length=context)
    tokenizer.enable_padding(length=context, pad_id=pad_id, pad_token=pad_token)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = lambda name: ort.InferenceSession(str(path / name), options, providers=["CPUExecutionProvider"])  # noqa: E731
    return Export(path, preprocess, context, pad_id, tokenizer, session("visual/model.onnx"),
                  session("textual/model.onnx"))


def resize_crop(export: Export, rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3] -> uint8 [S,S,3]: open_clip's eval resize (and crop) on a PIL image."""
    cfg = export.preprocess
    size = cfg["size"][0] if isinstance(cfg["size"], list) else int(cfg["size"])
    resample = FILTERS.get(cfg.get("interpolation", "bicubic"), Image.BICUBIC)
    im = Image.fromarray(rgb, "RGB")
    mode = cfg.get("resize_mode", "shortest")
    if mode == "squash":
        return np.asarray(im.resize((size, size), resample))
    if mode != "shortest":
        raise ValueError(f"resize_mode {mode!r} is not one the families use")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = np.asarray(im.resize((nw, nh), resample))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def embed_crop(export: Export, crop: np.ndarray) -> np.ndarray:
    x = crop.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(export.preprocess["mean"], np.float32)) / np.asarray(export.preprocess["std"], np.float32)
    return export.visual.run(["embedding"], {"image": x.transpose(2, 0, 1)[None].copy()})[0][0]


def clean(text: str) -> str:
    words, word = [], []
    for ch in text:
        if ch in WHITE_SPACE:
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    return " ".join(words)


@dataclass
class Tokens:
    ids: list[int]  # padded to the context length, as the graph gets them
    truncated: bool


def tokenize(export: Export, text: str) -> Tokens:
    cleaned = clean(text)
    if not cleaned:
        raise ValueError("empty text after cleaning")
    encoding = export.tokenizer.encode(cleaned)
    return Tokens(list(encoding.ids), bool(encoding.overflowing))


def embed_tokens(export: Export, tokens: Tokens) -> np.ndarray:
    ids = np.asarray([tokens.ids], np.int32)
    return export.textual.run(["embedding"], {"text": ids})[0][0]
