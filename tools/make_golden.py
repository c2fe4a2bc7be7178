#!/usr/bin/env python3
"""Write the golden files in tests/fixtures/golden/ with tools/reference.py (run make_fixtures.py and make_images.py
first; `tools/regenerate.sh` runs all three).

    images.json      every good test image: smooth flag, upright size, L2-normalised embedding (tiny-clip);
                     plus the broken files, which the reference must refuse
    pre/<file>.png   the 224x224 uint8 RGB crop right after resize + crop (before /255 and mean/std)
    texts.json       multilingual texts: ids after truncation (with [CLS]/[SEP]), truncated flag, embedding;
                     `batch_check` (padding must not change a vector) and `rejected_texts` (empty after trim)
    forms.json       the same texts through tiny-clip-tokens (form b: pooling + Dense outside the graph), which
                     must match tiny-clip (form a) with cosine >= 0.99999
    families/<dir>.json, families/<dir>/<file>.png
                     each open_clip family fixture (make_families.py) through open_clip_reference.py, which reads
                     the family's own config files: crops, image vectors, padded token ids, text vectors

The generator asserts the invariants it records, so a broken reference fails here rather than in Rust.
Usage:  .venv/bin/python tools/make_golden.py [--fixtures tests/fixtures]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import make_families
import make_fixtures
import make_images
import open_clip_reference
import reference

MAX_SEQ_TEXTS = {
    "exactly-128-tokens": " ".join(["dog"] * 126),  # 126 + [CLS] + [SEP] = 128: not truncated
    "129-tokens": " ".join(["dog"] * 127),  # one too many: truncated to 128
    "long": "A dog in the snow, and a cat on the beach at night. " * 12,  # ~170 tokens
}
TEXTS = [
    "A dog in the snow",
    "a small red car near the beach at night",
    "DOG Dog dog",
    "2 dogs, 3 cats!",
    "Eine Katze schläft im Schnee",
    "Die Straße über der Brücke",
    "Un perro en la playa con palmeras",
    "¿Dónde está el niño?",
    "Le chat noir dort sur la neige près de l'arbre",
    "Cafe\u0301 cre\u0300me",  # NFD accents: no Unicode normalisation in this tokenizer, so they differ from NFC
    "Un élève au café",
    "Кошка спит на снегу",
    "一只猫在雪地里睡觉",
    "雪の中で眠る猫",
    "カメラとネコ",
    "🐶 dog and 🐱 cat",  # 🐶 is in the vocabulary, 🐱 becomes [UNK]
    "\t  A red car on the street \n",  # leading/trailing whitespace is trimmed
    "\u3000雪\u3000",  # ideographic spaces: Unicode White_Space, trimmed by Python str.strip and Rust str::trim
    "dog\u200bcat",  # zero-width space
    "x" * 120,  # a word over max_input_chars_per_word (100): one [UNK]
    *MAX_SEQ_TEXTS.values(),
]
REJECTED_TEXTS = ["", " \t\n "]
BATCH_SHORT = "A dog in the snow"
MIN_FORM_COSINE = 0.99999


def dump_json(obj, path: Path) -> None:
    """Indented JSON, but each list of numbers on one line (keeps 512-float vectors readable and diffs short)."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------
def check_decoder_decisions(images: Path) -> None:
    """Cross-check the reference's explicit decoding against PIL where both must agree, and record where not."""
    # EXIF: numpy orientation == PIL's exif_transpose
    with Image.open(images / "exif-rot90.jpg") as im:
        pil = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    ours = reference.decode_image(images / "exif-rot90.jpg")
    assert ours.shape == (320, 200, 3) and np.array_equal(ours, pil), "EXIF orientation differs from PIL"
    # alpha on white: integer formula within 1 level of PIL's alpha_composite
    with Image.open(images / "rgba.png") as im:
        rgba = im.convert("RGBA")
        pil = np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB"))
    diff = np.abs(reference.decode_image(images / "rgba.png").astype(int) - pil).max()
    assert diff <= 1, f"alpha compositing differs from PIL by {diff}"
    # 16-bit: rounded scaling, deliberately unlike PIL (which clamps 16-bit grey to 255)
    with Image.open(images / "gray16.png") as im:
        assert np.asarray(im.convert("RGB")).mean() > 250
    assert reference.decode_image(images / "gray16.png").mean() < 200


def probes(rgb: np.ndarray) -> list[list[int]]:
    """[x, y, r, g, b] of decoded (upright, 8-bit, alpha on white) pixels: checks decoding without the resize.
    Exact for lossless files; JPEG decoders may differ by a few levels."""
    h, w = rgb.shape[:2]
    spots = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1),
             (w // 2, h // 2), (w // 3, h // 4), (2 * w // 3, 3 * h // 4)]
    return [[x, y, *rgb[y, x].tolist()] for x, y in dict.fromkeys(spots)]


def golden_images(bundle: reference.Bundle, images: Path, golden: Path) -> dict:
    pre_dir = golden / "pre"
    pre_dir.mkdir(parents=True, exist_ok=True)
    cases, crops = [], []
    for case in make_images.IMAGES:
        rgb, crop = reference.preprocess(bundle, images / case.file)
        Image.fromarray(crop, "RGB").save(pre_dir / f"{case.file}.png", optimize=True)
        crops.append(crop)
        cases.append({"file": case.file, "smooth": case.smooth, "lossless": case.lossless,
                      "width": rgb.shape[1], "height": rgb.shape[0], "probes": probes(rgb),
                      "pre": f"pre/{case.file}.png"})
    vectors = reference.embed_crops(bundle, crops)
    single = reference.embed_crops(bundle, crops[:1])
    assert np.abs(single[0] - vectors[0]).max() < 1e-6, "image batching changed a vector"
    for case, vector in zip(cases, vectors):
        case["embedding"] = reference.floats(vector)

    broken = []
    for path in sorted((images / make_images.BROKEN_DIR).iterdir()):
        try:
            reference.decode_image(path)
        except Exception:  # noqa: BLE001 - any decoder error is the expected outcome
            broken.append(f"{make_images.BROKEN_DIR}/{path.name}")
            continue
        raise AssertionError(f"{path} decoded, but it is a broken-file fixture")
    return {"model": bundle.manifest["name"],
            "note": "width/height: after EXIF orientation; probes: [x, y, r, g, b] decoded pixels before the "
                    "resize, exact when lossless; pre: the 224x224 crop before /255 (smooth images: compare "
                    "within 2 levels); embeddings are L2-normalised (compare by cosine)",
            "cases": cases, "broken": broken}


# ----------------------------------------------------------------------------------------------------------------
# Texts
# ----------------------------------------------------------------------------------------------------------------
def golden_texts(bundle: reference.Bundle) -> tuple[dict, np.ndarray]:
    vectors, tokens = reference.embed_texts(bundle, TEXTS)
    # every vector of the padded batch equals the vector computed alone
    for text, vector in zip(TEXTS, vectors):
        alone, _ = reference.embed_texts(bundle, [text])
        assert np.abs(alone[0] - vector).max() < 1e-6, f"padding changed the vector of {text!r}"
    # the batch check the Rust tests repeat: a short text next to a truncated one
    long_text = MAX_SEQ_TEXTS["long"]
    alone, _ = reference.embed_texts(bundle, [BATCH_SHORT])
    paired, paired_tokens = reference.embed_texts(bundle, [BATCH_SHORT, long_text])
    batch_diff = float(np.abs(alone[0] - paired[0]).max())
    assert batch_diff < 1e-6 and paired_tokens[1].truncated
    for text in REJECTED_TEXTS:
        try:
            reference.tokenize(bundle, text)
        except ValueError:
            continue
        raise AssertionError(f"{text!r} should be rejected")

    limit = {name: reference.tokenize(bundle, t) for name, t in MAX_SEQ_TEXTS.items()}
    assert len(limit["exactly-128-tokens"].ids) == 128 and not limit["exactly-128-tokens"].truncated
    assert len(limit["129-tokens"].ids) == 128 and limit["129-tokens"].truncated

    cases = [{"text": text, "ids": t.ids, "tokens": t.tokens, "truncated": t.truncated,
              "embedding": reference.floats(v)} for text, t, v in zip(TEXTS, tokens, vectors)]
    doc = {"model": bundle.manifest["name"], "max_seq_len": bundle.max_seq_len,
           "note": "text is the raw input (trim it like Python str.strip); ids include [CLS]/[SEP] after "
                   "truncation; embeddings are L2-normalised",
           "cases": cases,
           "batch_check": {"texts": [BATCH_SHORT, long_text], "index": 0, "max_abs_diff": batch_diff,
                           "note": "the first text's vector in this batch must equal its vector alone"},
           "rejected_texts": REJECTED_TEXTS}
    return doc, vectors


def golden_forms(form_a: reference.Bundle, form_b: reference.Bundle, vectors_a: np.ndarray) -> dict:
    vectors_b, _ = reference.embed_texts(form_b, TEXTS)
    cosines = [cosine(a, b) for a, b in zip(vectors_a, vectors_b)]
    assert min(cosines) >= MIN_FORM_COSINE, f"form a and form b disagree: min cosine {min(cosines)}"
    image_a = (form_a.dir / form_a.manifest["image"]["onnx"]).read_bytes()
    image_b = (form_b.dir / form_b.manifest["image"]["onnx"]).read_bytes()
    assert image_a == image_b, "the two bundles must share one image encoder"
    return {"model_a": form_a.manifest["name"], "model_b": form_b.manifest["name"],
            "note": "texts of texts.json through form b (token states + mean pooling + dense.safetensors); "
                    "the image encoder is the same file in both bundles, so images.json holds for both",
            "min_cosine": min(cosines),
            "cases": [{"text": t, "cosine_to_form_a": c, "embedding": reference.floats(v)}
                      for t, c, v in zip(TEXTS, cosines, vectors_b)]}


# RGB files only (open_clip converts to RGB after resizing; see open_clip_reference.py): odd and even crop offsets,
# both orientations, extreme ratios, upscaling, a prescale-sized JPEG, and hard edges (vectors only).
FAMILY_IMAGES = ["landscape.jpg", "portrait.png", "wide-1000x120.png", "tall-90x700.png", "small-100x50.png",
                 "large-2400x1600.jpg", "image.tiff", "edges-481x321.png"]
FAMILY_TEXTS = [
    "A dog in the snow",
    "a small red car near the beach at night",
    "Eine Katze schläft im Schnee",
    "Un perro en la playa",
    "Le chat dort sur la neige",
    "Кошка спит на снегу",
    "一只猫在雪地里睡觉",
    "雪の中で眠る猫",
    "  a   dog \t\n in  the\u3000snow  ",  # runs of white space: open_clip collapses them
    "Zebra 🦓!",  # no piece for the emoji: <unk>
    "a dog in the snow " * 20,  # over the 77-token context: truncated, </s> kept
]


# Neither family resizes bilinearly, but open_clip's CLIPA configs do: these crops of the first family with
# `interpolation: bilinear` check that path (an upscaled smooth image, where the filters differ by > 2 levels,
# and hard edges).
BILINEAR_IMAGES = ["small-100x50.png", "landscape.jpg", "edges-481x321.png"]


def golden_families(fixtures: Path, golden: Path) -> list[str]:
    images = fixtures / "images"
    smooth = {case.file: case.smooth for case in make_images.IMAGES}
    summaries = []
    for family in make_families.FAMILIES:
        export = open_clip_reference.load_export(fixtures / family.dir)
        pre_dir = golden / "families" / family.dir
        pre_dir.mkdir(parents=True, exist_ok=True)
        image_cases = []
        for file in FAMILY_IMAGES:
            rgb = reference.decode_image(images / file)
            crop = open_clip_reference.resize_crop(export, rgb)
            Image.fromarray(crop, "RGB").save(pre_dir / f"{file}.png", optimize=True)
            vector = open_clip_reference.embed_crop(export, crop)
            assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5, "the visual graph must normalise"
            image_cases.append({"file": file, "smooth": smooth[file], "pre": f"families/{family.dir}/{file}.png",
                                "embedding": reference.floats(vector)})
        text_cases = []
        for text in FAMILY_TEXTS:
            tokens = open_clip_reference.tokenize(export, text)
            assert len(tokens.ids) == export.context_length
            text_cases.append({"text": text, "ids": tokens.ids, "truncated": tokens.truncated,
                               "embedding": reference.floats(open_clip_reference.embed_tokens(export, tokens))})
        assert any(c["truncated"] for c in text_cases) and not all(c["truncated"] for c in text_cases)
        bilinear_cases = []
        if family is make_families.FAMILIES[0]:
            bilinear = dataclasses.replace(export, preprocess={**export.preprocess, "interpolation": "bilinear"})
            (pre_dir / "bilinear").mkdir(exist_ok=True)
            for file in BILINEAR_IMAGES:
                crop = open_clip_reference.resize_crop(bilinear, reference.decode_image(images / file))
                Image.fromarray(crop, "RGB").save(pre_dir / "bilinear" / f"{file}.png", optimize=True)
                bilinear_cases.append({"file": file, "smooth": smooth[file],
                                       "pre": f"families/{family.dir}/bilinear/{file}.png"})
        collapsed = open_clip_reference.tokenize(export, "a dog in the snow")
        assert text_cases[8]["ids"] == collapsed.ids, "white space runs must tokenize like single spaces"
        dump_json({"model": family.dir, "open_clip": f"{family.model} {family.pretrained}",
                   "context_length": export.context_length, "pad_id": export.pad_id,
                   "note": "from the family's own config files (open_clip_reference.py); ids are padded to the "
                           "context length as the graph gets them; pre: the crop before /255 (smooth: compare "
                           "within 2 levels); embeddings are L2-normalised by the graph",
                   "images": image_cases, "texts": text_cases, "bilinear": bilinear_cases},
                  golden / "families" / f"{family.dir}.json")
        summaries.append(f"{family.dir}: {len(image_cases)} images, {len(text_cases)} texts")
    return summaries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=make_fixtures.DEFAULT_OUT,
                    help="fixtures folder holding the bundles and images/ (default: tests/fixtures)")
    args = ap.parse_args()
    images, golden = args.fixtures / "images", args.fixtures / "golden"
    golden.mkdir(parents=True, exist_ok=True)
    form_a = reference.load_bundle(args.fixtures / make_fixtures.FORM_A)
    form_b = reference.load_bundle(args.fixtures / make_fixtures.FORM_B)

    check_decoder_decisions(images)
    dump_json(golden_images(form_a, images, golden), golden / "images.json")
    texts, vectors_a = golden_texts(form_a)
    dump_json(texts, golden / "texts.json")
    forms = golden_forms(form_a, form_b, vectors_a)
    dump_json(forms, golden / "forms.json")
    print(f"{golden}: {len(make_images.IMAGES)} images, {len(TEXTS)} texts, "
          f"form a/b min cosine {forms['min_cosine']:.9f}")
    for line in golden_families(args.fixtures, golden):
        print(f"{golden}/families: {line}")


if __name__ == "__main__":
    main()
